"""Constrained decoding end to end: a real grpc.aio server over loopback on the bundled model,
called through the SDK, the raw stubs and the CLI. Every output is judged by an independent
checker (the `jsonschema` package, lark's own parser, `re.fullmatch`), and after every error the
server must still serve.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import lark
import pytest
from background_loop import LiveServer, live_server
from pydantic import BaseModel, Field
from server_loads import wait_idle_async

from ragloom.client import AsyncClient, Client
from ragloom.config import Settings
from ragloom.errors import DeadlineExceeded, InvalidArgument
from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import generation_pb2_grpc as pb_grpc

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "maxLength": 16},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
PERSON_PROMPT = [{"role": "user", "content": "Tom is 42 and lives in Oslo. Give his name, age and city as JSON."}]
YES_NO_GRAMMAR = r"""
start: "{\"answer\": " ANSWER "}"
ANSWER: "\"yes\"" | "\"no\""
"""
SUM_GRAMMAR = r"""
start: NUMBER (" + " NUMBER)~1..3 " = " NUMBER
NUMBER: /[0-9]{1,3}/
"""
DATE_REGEX = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
COLOURS = ["red", "green", "blue", "yellow"]


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population_millions: int = Field(ge=0, le=50)


Served = LiveServer


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with live_server(Settings(host="127.0.0.1", port=0, device="cpu", kv_cache_tokens=4096, shutdown_grace_s=1.0)) as s:
        yield s


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    with Client(served.address, timeout=120) as c:
        yield c


def _still_serving(client: Client) -> None:
    c = client.generate("The capital of France is", max_tokens=2, temperature=0)
    assert c.usage.completion_tokens >= 1


def _lark_accepts(grammar: str, text: str) -> bool:
    try:
        lark.Lark(grammar, parser="lalr").parse(text)
    except lark.exceptions.LarkError:
        return False
    return True


# -- each kind of constraint ---------------------------------------------------------------------


def test_json_schema_sampled_outputs_validate(client: Client) -> None:
    finished = 0
    for seed in (1, 2, 3):
        c = client.generate(
            messages=PERSON_PROMPT, json_schema=PERSON_SCHEMA, max_tokens=48, temperature=1.0, seed=seed
        )
        assert c.warnings == []
        if c.finish_reason != "stop":
            assert c.parsed is None
            continue
        finished += 1
        value = json.loads(c.text)
        jsonschema.validate(value, PERSON_SCHEMA)
        assert c.parsed == value
    assert finished >= 2, "sampled JSON rarely finished within max_tokens"


def test_json_schema_stream_and_seed_determinism(client: Client) -> None:
    kw: dict[str, Any] = {"json_schema": PERSON_SCHEMA, "max_tokens": 48, "temperature": 0.8, "seed": 7}
    s = client.stream(messages=PERSON_PROMPT, **kw)
    chunks = list(s)
    assert s.completion is not None
    assert "".join(ch.text for ch in chunks) == s.completion.text
    again = client.generate(messages=PERSON_PROMPT, **kw)
    assert again.text == s.completion.text
    if again.finish_reason == "stop":
        jsonschema.validate(again.parsed, PERSON_SCHEMA)


def test_lark_grammar(client: Client) -> None:
    c = client.generate("Is the sky blue? Reply in JSON:", grammar=YES_NO_GRAMMAR, max_tokens=16, temperature=0)
    assert c.finish_reason == "stop" and _lark_accepts(YES_NO_GRAMMAR, c.text), c.text
    assert c.parsed is None  # only json_schema outputs are parsed
    # at most 5 numbers of 3 digits: always finishes within 40 tokens
    c = client.generate("Arithmetic: 2 + 2 = 4. Now another one:", grammar=SUM_GRAMMAR, max_tokens=40,
                        temperature=1.0, seed=3)
    assert c.finish_reason == "stop" and _lark_accepts(SUM_GRAMMAR, c.text), c.text


def test_regex_fullmatch(client: Client) -> None:
    for seed in (1, 2):
        c = client.generate("Apollo 11 landed on the moon on", regex=DATE_REGEX, max_tokens=16, temperature=1.0, seed=seed)
        assert c.finish_reason == "stop", c.text
        assert re.fullmatch(DATE_REGEX, c.text), c.text


def test_choices(client: Client) -> None:
    for seed in (1, 2, 3):
        c = client.generate(
            messages=[{"role": "user", "content": "What colour is grass?"}],
            choices=COLOURS,
            max_tokens=8,
            temperature=1.0,
            seed=seed,
        )
        assert c.finish_reason == "stop" and c.text in COLOURS, c.text


def test_pydantic_model_returns_a_validated_instance(client: Client) -> None:
    c = client.generate(
        messages=[{"role": "user", "content": "Describe Paris as JSON: name, country, population in millions."}],
        json_schema=City,
        max_tokens=60,
        temperature=0,
    )
    assert c.finish_reason == "stop", c.text
    assert isinstance(c.parsed, City), c.parsed
    jsonschema.validate(json.loads(c.text), City.model_json_schema())
    assert c.parsed == City.model_validate_json(c.text)


async def test_concurrent_requests_with_different_constraints(served: Served) -> None:
    async with AsyncClient(served.address, timeout=180) as ac:
        jobs: list[tuple[str, Any, Any]] = [
            ("json_schema", PERSON_SCHEMA, ac.generate(messages=PERSON_PROMPT, json_schema=PERSON_SCHEMA,
                                                       max_tokens=48, temperature=0.7, seed=11)),
            ("grammar", YES_NO_GRAMMAR, ac.generate("Is fire cold? JSON:", grammar=YES_NO_GRAMMAR,
                                                    max_tokens=16, temperature=0.7, seed=12)),
            ("regex", DATE_REGEX, ac.generate("A date:", regex=DATE_REGEX, max_tokens=16, temperature=0.7, seed=13)),
            ("choices", COLOURS, ac.generate("The sky is", choices=COLOURS, max_tokens=8, temperature=0.7, seed=14)),
            ("pydantic", City, ac.generate("Tokyo as JSON:", json_schema=City, max_tokens=60, temperature=0.7,
                                           seed=15)),
            ("none", None, ac.generate("The capital of France is", max_tokens=8, temperature=0)),
        ]
        results = await asyncio.gather(*(job for _, _, job in jobs))
        # The engine frees the finished requests' slots and KV blocks just after their last message:
        # wait (bounded) for its loads to read idle; the test fails if they never do (a leak).
        await wait_idle_async(ac)
    for (kind, spec, _), c in zip(jobs, results, strict=True):
        if kind == "none":
            assert c.text.strip()
            continue
        if c.finish_reason != "stop":
            assert kind in ("json_schema", "pydantic"), (kind, c.text)  # only the JSON ones may run long
            continue
        if kind == "json_schema":
            jsonschema.validate(json.loads(c.text), spec)
        elif kind == "pydantic":
            assert isinstance(c.parsed, City)
        elif kind == "grammar":
            assert _lark_accepts(spec, c.text), c.text
        elif kind == "regex":
            assert re.fullmatch(spec, c.text), c.text
        else:
            assert c.text in spec


# -- errors: each answers INVALID_ARGUMENT and the server goes on ----------------------------------


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "regex"}, "format"),
        ({"type": "object", "properties": {"a": {"$dynamicRef": "#node"}}}, "$dynamicRef"),
    ],
)
def test_unsupported_keyword_strict_then_lenient(client: Client, schema: dict[str, Any], keyword: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.generate("A list:", json_schema=schema, max_tokens=4)
    assert keyword in str(info.value)
    assert info.value.reason == "SCHEMA_KEYWORD_UNSUPPORTED" and info.value.metadata["keyword"] == keyword
    assert info.value.field == "json_schema"
    assert isinstance(info.value.__cause__, grpc.RpcError)
    assert info.value.__cause__.code() == grpc.StatusCode.INVALID_ARGUMENT
    _still_serving(client)
    c = client.generate("A list:", json_schema=schema, strict=False, max_tokens=24, temperature=0)
    assert c.warnings and any(keyword in w for w in c.warnings), c.warnings
    if c.finish_reason == "stop":
        json.loads(c.text)  # still JSON (the dropped keyword is not enforced)
    _still_serving(client)


def _raw_error(served: Served, request: pb.GenerateRequest) -> grpc.RpcError:
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(request, timeout=60))
    return info.value


NON_LALR = """
start: a | b
a: "x" "y"
b: "x" "y"
"""


@pytest.mark.parametrize(
    ("name", "request_kwargs", "needle", "reason", "field"),
    [
        ("invalid JSON text", {"json_schema": '{"type": "object",'}, "not valid JSON", "SCHEMA_INVALID", "json_schema"),
        ("JSON that is not a schema", {"json_schema": "[1, 2]"}, "json_schema", "SCHEMA_INVALID", "json_schema"),
        ("schema with a malformed keyword", {"json_schema": '{"type": "object", "required": "a"}'}, "required",
         "SCHEMA_INVALID", "json_schema"),
        ("schema that no value satisfies", {"json_schema": '{"not": {}}'}, "accepts no JSON value", "SCHEMA_INVALID",
         "json_schema"),
        ("grammar that does not parse", {"lark_grammar": 'start: "a" (\n'}, "grammar", "GRAMMAR_INVALID", "lark_grammar"),
        ("grammar that is not LALR(1)", {"lark_grammar": NON_LALR}, "LALR", "GRAMMAR_INVALID", "lark_grammar"),
        ("grammar with an undefined rule", {"lark_grammar": "start: missing\n"}, "grammar", "GRAMMAR_INVALID",
         "lark_grammar"),
        ("empty grammar", {"lark_grammar": "  "}, "empty", "GRAMMAR_INVALID", "lark_grammar"),
        ("empty regex", {"regex": ""}, "regex", "GRAMMAR_INVALID", "regex"),
        ("regex with a backreference", {"regex": r"(a)\1"}, "backreference", "GRAMMAR_INVALID", "regex"),
        ("choices of only the empty string", {"choices": [""]}, "empty", "GRAMMAR_INVALID", "choices[0]"),
        ("an empty choice among others", {"choices": ["yes", "", "no"]}, "empty", "GRAMMAR_INVALID", "choices[1]"),
        ("a duplicate choice", {"choices": ["yes", "yes"]}, "duplicate", "GRAMMAR_INVALID", "choices"),
        ("grammar matching only the empty string", {"lark_grammar": "start: a\na:\n"}, "empty", "GRAMMAR_INVALID",
         "lark_grammar"),
    ],
)
def test_bad_constraints_are_invalid_argument(
    served: Served, client: Client, name: str, request_kwargs: dict[str, Any], needle: str, reason: str, field: str
) -> None:
    from ragloom.client import _error

    err = _raw_error(served, pb.GenerateRequest(prompt="Hello", sampling=pb.SamplingParams(max_tokens=4),
                                                **request_kwargs))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.code(), err.details())
    assert needle in err.details(), (name, err.details())
    known = _error(err)
    assert (known.reason, known.field) == (reason, field), (name, known.reason, known.field)
    _still_serving(client)


def test_sdk_rejects_bad_constraint_arguments_before_any_call() -> None:
    # nothing listens here: an RPC would fail with Unavailable, not InvalidArgument
    with Client("127.0.0.1:1", timeout=5) as c:
        with pytest.raises(InvalidArgument, match="at most one"):
            c.generate("x", regex="a+", choices=["a"])
        with pytest.raises(InvalidArgument, match="choices"):
            c.generate("x", choices="abc")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="json_schema"):
            c.generate("x", json_schema=42)  # type: ignore[arg-type]


def test_compile_timeout(served: Served, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served.llm.settings, "constraint_timeout_s", 1e-4)
    # a schema no earlier test compiled: cached constraints are served without compiling
    schema = {"type": "object", "properties": {"timeout_probe": {"type": "string"}}, "required": ["timeout_probe"]}
    with pytest.raises(DeadlineExceeded) as info:  # the compiler stopped: not the request's fault
        client.generate("x", json_schema=schema, max_tokens=4)
    assert "the json_schema constraint" in str(info.value) and "0.0001s limit" in str(info.value), str(info.value)
    assert info.value.reason == "CONSTRAINT_COMPILE_TIMEOUT" and info.value.field is None
    assert info.value.metadata["part"].startswith("the json_schema constraint"), info.value.metadata
    _still_serving(client)
    # timed in processor.compile_constraint, not jsonschema.py
    err = _raw_error(served, pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(max_tokens=4),
                                                lark_grammar='start: "timeout" "probe"\n'))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert "the lark_grammar constraint" in err.details(), err.details()
    monkeypatch.undo()
    _still_serving(client)
    c = client.generate("x", json_schema=schema, max_tokens=24, temperature=0)  # compiles fine with the default limit
    assert c.finish_reason in ("stop", "length")


# -- CLI against the served server -------------------------------------------------------------------

RAGLOOM = [sys.executable, "-m", "ragloom.cli"]


def _cli(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"RAGLOOM_DEVICE": "cpu"}
    return subprocess.run(RAGLOOM + args, capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_generate_constrained(served: Served, tmp_path: Path) -> None:
    schema_file = tmp_path / "person.json"
    schema_file.write_text(json.dumps(PERSON_SCHEMA))
    addr = ["--address", served.address, "--temperature", "0"]
    r = _cli(["generate", "Tom is 42 and lives in Oslo. As JSON:", "--json-schema", str(schema_file),
              "--max-tokens", "48", "--no-stream", *addr])
    assert r.returncode == 0, r.stderr
    jsonschema.validate(json.loads(r.stdout), PERSON_SCHEMA)
    r = _cli(["generate", "What colour is grass?", "--choice", "red", "--choice", "green", "--max-tokens", "4", *addr])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("red", "green")
    lenient = json.dumps({"type": "array", "items": {"type": "integer"}, "maxItems": 3, "uniqueItems": True})
    r = _cli(["generate", "Some numbers:", "--json-schema", lenient, "--lenient", "--max-tokens", "16", *addr])
    assert r.returncode == 0, r.stderr
    assert "ragloom: warning:" in r.stderr and "uniqueItems" in r.stderr
    r = _cli(["generate", "x", "--regex", "a+", "--choice", "a", *addr])
    assert r.returncode == 2 and "not allowed with" in r.stderr  # argparse: mutually exclusive
    r = _cli(["generate", "x", "--json-schema", "{oops", *addr])
    assert r.returncode == 1 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["generate", "x", "--json-schema", json.dumps({"type": "string", "format": "regex"}), *addr])
    assert r.returncode == 1 and "'format'" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["generate", "--help"])
    assert all(flag in r.stdout for flag in ("--json-schema", "--grammar", "--regex", "--choice", "--lenient"))


@pytest.mark.slow
def test_cli_generate_local_constrained(tmp_path: Path) -> None:
    grammar = tmp_path / "yesno.lark"
    grammar.write_text(YES_NO_GRAMMAR)
    r = _cli(["generate", "--local", "Is the sky blue? JSON:", "--grammar", str(grammar), "--max-tokens", "16",
              "--temperature", "0", "--usage"])
    assert r.returncode == 0, r.stderr
    assert _lark_accepts(YES_NO_GRAMMAR, r.stdout.strip()), r.stdout
    assert "finish_reason=stop" in r.stderr
