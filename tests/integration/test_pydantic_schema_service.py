"""The README's pydantic example through a live server on the bundled model: with the model's
object closed to extra keys (the SDK adds `additionalProperties: false`), the output finishes
and validates into a `Person`. Before, pydantic's open schema let the model add keys until
max_tokens ran out, and `parsed` was None."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest
from background_loop import live_server
from pydantic import BaseModel

from ragloom.client import Client, model_schema
from ragloom.config import Settings


class Person(BaseModel):  # as in the README
    name: str
    age: int
    city: str


README_MESSAGES = [{"role": "user", "content": "Marie is 34 and lives in Lyon. Her details as JSON?"}]


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with live_server(Settings(host="127.0.0.1", port=0, device="cpu", kv_cache_tokens=2048, shutdown_grace_s=1.0)) as s:
        yield s.address


def test_readme_person_example_is_a_validated_person(address: str) -> None:
    with Client(address, timeout=300) as client:
        person = client.generate(messages=README_MESSAGES, json_schema=Person, max_tokens=60, temperature=0)
    assert person.finish_reason == "stop", person.text
    assert isinstance(person.parsed, Person), (person.text, person.warnings)
    value = json.loads(person.text)
    assert set(value) == {"name", "age", "city"}  # no key beyond the model's
    jsonschema.validate(value, model_schema(Person))
    assert person.parsed == Person.model_validate(value)
