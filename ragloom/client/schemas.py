"""The `json_schema=` argument: what is sent for it, and how the output is parsed back."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from ragloom.errors import InvalidArgument

# what json_schema= accepts: a schema as a mapping, as JSON text, or a pydantic model class
JsonSchema = Mapping[str, Any] | str | bool | type[BaseModel]


class ClosedModelsJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, with every model's object closed (`additionalProperties: false`)
    unless that model accepts extra keys (`extra="allow"`).

    pydantic leaves model objects open because validation ignores extra keys by default; for
    constrained decoding an open object lets the model add keys until max_tokens runs out, so
    the output never finishes and never parses."""

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        json_schema = super().model_schema(schema)
        # RootModel and models with a custom schema may not produce an object: leave those alone
        if json_schema.get("type") == "object" and schema["cls"].model_config.get("extra") != "allow":
            json_schema.setdefault("additionalProperties", False)
        return json_schema


def is_model_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema sent for a pydantic model class (nested models under $defs included)."""
    return model.model_json_schema(schema_generator=ClosedModelsJsonSchema)


def schema_text(schema: JsonSchema) -> str:
    if is_model_class(schema):
        return json.dumps(model_schema(schema))  # type: ignore[arg-type]
    if isinstance(schema, str):
        return schema  # sent as given: the server says where it is not valid JSON
    if isinstance(schema, Mapping | bool):
        try:
            return json.dumps(schema if isinstance(schema, bool) else dict(schema))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"json_schema cannot be serialized as JSON: {exc}") from exc
    raise InvalidArgument(
        f"json_schema must be a dict, JSON text or a pydantic model class, got {type(schema).__name__}"
    )


def output_parser(json_schema: JsonSchema | None) -> Callable[[str], Any] | None:
    """How Completion.parsed is made from the output text: json.loads, or the pydantic model's
    model_validate_json; None for other constraints (their output is the text itself)."""
    if json_schema is None:
        return None
    if is_model_class(json_schema):
        return json_schema.model_validate_json  # type: ignore[union-attr]
    return json.loads
