"""The SDK leaves unset (None) arguments out of the request, so the server's defaults apply."""

from __future__ import annotations

import json

import grpc
import pytest

from ragloom.client import GroundedValue, _error, _QueryState, build_generate_request, build_query_request
from ragloom.errors import DeadlineExceeded, NotFound, RagloomError, Unimplemented
from ragloom.services._proto import tables_pb2 as tpb
from ragloom.services.generation import sampling_from_proto


def test_unset_arguments_are_absent() -> None:
    req = build_generate_request("hi", messages=None, request_id=None, max_tokens=None, temperature=None, stop=None)
    assert req.WhichOneof("input") == "prompt" and req.prompt == "hi"
    for name in ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "ignore_eos"):
        assert not req.sampling.HasField(name), name
    assert len(req.request_id) == 32  # a fresh uuid, so the caller can abort a stream it started


def test_zero_values_are_sent_not_dropped() -> None:
    # temperature=0 (greedy) and top_k=0 must reach the server as set fields
    req = build_generate_request(
        None, messages=[{"role": "user", "content": "x"}], request_id="r", temperature=0.0, top_k=0, seed=0, stop="\n"
    )
    assert req.sampling.HasField("temperature") and req.sampling.temperature == 0.0
    assert req.sampling.HasField("top_k") and req.sampling.HasField("seed")
    assert list(req.sampling.stop) == ["\n"]
    params = sampling_from_proto(req.sampling)
    assert params.greedy and params.seed == 0 and params.max_tokens == 256  # unset -> dataclass default



def _query(**switches: bool | None) -> tpb.QueryRequest:
    return build_query_request("shop", "q", mode=None, max_rows=None, timeout_s=None, instructions=None,
                               max_tokens=None, temperature=None, request_id=None, **switches)


def test_query_switches_sent_only_when_set() -> None:
    req = _query(link=None, grammar=None, self_correct=None, ground_values=None)
    assert not any(req.HasField(f) for f in ("link", "grammar", "self_correct", "ground_values"))
    req = _query(link=None, grammar=None, self_correct=None, ground_values=True)
    assert req.HasField("ground_values") and req.ground_values
    req = _query(link=None, grammar=None, self_correct=None, ground_values=False)  # explicit off is sent
    assert req.HasField("ground_values") and not req.ground_values


def test_query_stream_keeps_the_grounded_values() -> None:
    state = _QueryState()
    gv = tpb.GroundedValue(table="customers", column="country", value="Germany", span="germany", score=1.0, kind="exact")
    fuzzy = tpb.GroundedValue(table="customers", column="country", value="France", span="frnace", score=0.8333,
                              kind="fuzzy")
    state.feed(tpb.QueryResponse(header=tpb.QueryHeader(sql="SELECT 1", columns=["n"], grounded_values=[gv, fuzzy])))
    state.feed(tpb.QueryResponse(complete=tpb.QueryComplete(sql="SELECT 1", attempts=1, valid=True)))
    r = state.final()
    assert r.grounded_values == [
        GroundedValue(table="customers", column="country", value="Germany", span="germany", score=1.0, kind="exact"),
        GroundedValue(table="customers", column="country", value="France", span="frnace", score=0.8333, kind="fuzzy"),
    ]
    state = _QueryState()
    state.feed(tpb.QueryResponse(header=tpb.QueryHeader(sql="SELECT 1")))
    state.feed(tpb.QueryResponse(complete=tpb.QueryComplete(sql="SELECT 1")))
    assert state.final().grounded_values == []


def test_exactly_one_input() -> None:
    with pytest.raises(TypeError):
        build_generate_request(None, messages=None, request_id=None)
    with pytest.raises(TypeError):
        build_generate_request("a", messages=[{"role": "user", "content": "b"}], request_id=None)


class _FakeRpcError(grpc.RpcError):
    """A grpc.RpcError value (grpc's own errors need a live call)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
        (grpc.StatusCode.INTERNAL, RagloomError),
    ],
)
def test_rpc_errors_map_back_to_ragloom_errors(code: grpc.StatusCode, cls: type[RagloomError]) -> None:
    rpc = _FakeRpcError(code, "boom")
    err = _error(rpc)
    assert type(err) is cls and str(err) == "boom" and err.__cause__ is rpc


# -- constraints ---------------------------------------------------------------------------------


def test_constraint_fields() -> None:
    from pydantic import BaseModel

    from ragloom.errors import InvalidArgument

    class Point(BaseModel):
        x: int
        y: int

    req = build_generate_request("p", messages=None, request_id=None, json_schema={"type": "integer"})
    assert req.WhichOneof("constraint") == "json_schema" and json.loads(req.json_schema) == {"type": "integer"}
    assert not req.HasField("strict")  # unset: the server's default (strict)
    req = build_generate_request("p", messages=None, request_id=None, json_schema='{"type": "string"}', strict=False)
    assert req.json_schema == '{"type": "string"}' and req.HasField("strict") and req.strict is False
    req = build_generate_request("p", messages=None, request_id=None, json_schema=Point, strict=True)
    # pydantic's schema, closed to extra keys (see test_client_schemas.py)
    assert json.loads(req.json_schema) == {**Point.model_json_schema(), "additionalProperties": False}
    assert req.strict is True
    req = build_generate_request("p", messages=None, request_id=None, grammar='start: "a"', strict=False)
    assert req.lark_grammar == 'start: "a"' and not req.HasField("strict")  # strict is for json_schema only
    req = build_generate_request("p", messages=None, request_id=None, regex="[0-9]+")
    assert req.WhichOneof("constraint") == "regex" and req.regex == "[0-9]+"
    req = build_generate_request("p", messages=None, request_id=None, choices=("yes", "no"))
    assert list(req.choices.choices) == ["yes", "no"]
    assert build_generate_request("p", messages=None, request_id=None).WhichOneof("constraint") is None
    for bad in (
        {"regex": "a", "choices": ["a"]},
        {"json_schema": {}, "grammar": "start: x"},
        {"choices": "yes"},  # a string is not a list of choices
        {"choices": []},
        {"choices": ["a", 1]},
        {"json_schema": 3},
        {"json_schema": {"default": object()}},  # not serializable as JSON
    ):
        with pytest.raises(InvalidArgument):
            build_generate_request("p", messages=None, request_id=None, **bad)


def test_completion_parsed_and_warnings() -> None:
    from pydantic import BaseModel

    from ragloom.client import _StreamState, output_parser
    from ragloom.services._proto import generation_pb2 as pb

    class Point(BaseModel):
        x: int
        y: int

    def run(parse: object, texts: list[str], finish_reason: str, warnings: tuple[str, ...] = ()) -> object:
        state = _StreamState("r", parse)  # type: ignore[arg-type]
        for t in texts:
            state.feed(pb.GenerateResponse(chunk=pb.Chunk(text=t)))
        state.feed(pb.GenerateResponse(complete=pb.Complete(finish_reason=finish_reason, warnings=warnings)))
        assert state.completion is not None
        return state.completion

    c = run(output_parser({"type": "object"}), ['{"x": ', "1}"], "stop", ("dropped 'uniqueItems'",))
    assert c.parsed == {"x": 1} and c.warnings == ["dropped 'uniqueItems'"]  # type: ignore[attr-defined]
    c = run(output_parser(Point), ['{"x": 1, "y": 2}'], "stop")
    assert c.parsed == Point(x=1, y=2)  # type: ignore[attr-defined]
    assert run(output_parser(Point), ['{"x": 1, '], "length").parsed is None  # type: ignore[attr-defined]
    c = run(output_parser(Point), ['{"x": 1}'], "stop")  # e.g. strict=False dropped what the model checks
    assert c.parsed is None and "did not parse" in c.warnings[0]  # type: ignore[attr-defined]
    assert run(output_parser(None), ["yes"], "stop").parsed is None  # type: ignore[attr-defined]
