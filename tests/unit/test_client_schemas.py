"""json_schema=<pydantic model>: every model's object is closed to extra keys unless the model
allows them, so constrained decoding cannot keep adding keys until max_tokens runs out."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, RootModel

from ragloom.client import build_generate_request, model_schema


class Address(BaseModel):
    street: str
    city: str


class Labels(BaseModel):
    model_config = ConfigDict(extra="allow")  # extra keys are data here: the schema must keep them open

    kind: str


class Person(BaseModel):
    name: str
    age: int
    address: Address
    labels: Labels | None = None
    friends: list[Person] = []
    scores: dict[str, int] = {}  # a mapping field, not a model: its additionalProperties is the value schema


class Ignoring(BaseModel):
    model_config = ConfigDict(extra="ignore")

    x: int


class Points(RootModel[list[Address]]):
    pass


def test_nested_models_are_closed_unless_they_allow_extras() -> None:
    schema = model_schema(Person)
    defs = schema["$defs"]
    assert schema["$ref"] == "#/$defs/Person"  # recursive: Person itself lives under $defs
    assert defs["Person"]["additionalProperties"] is False
    assert defs["Address"]["additionalProperties"] is False
    assert defs["Labels"]["additionalProperties"] is True
    assert defs["Person"]["properties"]["scores"]["additionalProperties"] == {"type": "integer"}
    # nothing else changes: it is pydantic's own schema with the objects closed
    plain = Person.model_json_schema()
    for name in ("Person", "Address"):
        plain["$defs"][name]["additionalProperties"] = False
    assert schema == plain


def test_top_level_and_explicit_configs() -> None:
    assert model_schema(Address) == {**Address.model_json_schema(), "additionalProperties": False}
    assert model_schema(Ignoring)["additionalProperties"] is False  # "ignore" would drop keys the model wrote
    assert model_schema(Labels)["additionalProperties"] is True
    points = model_schema(Points)  # a root model is an array, not an object: only its items' model closes
    assert points["type"] == "array" and "additionalProperties" not in points
    assert points["$defs"]["Address"]["additionalProperties"] is False


def test_the_request_carries_the_closed_schema() -> None:
    req = build_generate_request("p", messages=None, request_id=None, json_schema=Person)
    assert json.loads(req.json_schema) == model_schema(Person)
    assert json.loads(req.json_schema)["$defs"]["Address"]["additionalProperties"] is False
    # a dict or JSON text is the caller's schema and is sent as given
    req = build_generate_request("p", messages=None, request_id=None, json_schema={"type": "object"})
    assert json.loads(req.json_schema) == {"type": "object"}
