"""The SDK leaves unset (None) arguments out of the request, so the server's defaults apply."""

from __future__ import annotations

import json

import grpc
import pytest

from ragloom.client import GroundedValue, _error, _QueryState, build_generate_request, build_query_request
from ragloom.errors import DeadlineExceeded, InvalidArgument, NotFound, RagloomError, Unimplemented
from ragloom.services._proto import tables_pb2 as tpb
from ragloom.services.generation import sampling_from_proto


def test_unset_arguments_are_absent() -> None:
    req = build_generate_request("hi", messages=None, request_id=None, max_tokens=None, temperature=None, stop=None)
    assert req.prompt == "hi" and not req.messages
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


def test_query_mode_and_limits_sent_only_when_set() -> None:
    req = _query(link=None, grammar=None, self_correct=None)
    assert req.mode == tpb.QUERY_MODE_UNSPECIFIED and not req.HasField("max_rows") and not req.HasField("timeout_s")
    req = build_query_request("shop", "q", mode="table", max_rows=5, timeout_s=2.5, instructions=None,
                              max_tokens=None, temperature=None, request_id=None, link=None, grammar=None,
                              self_correct=None)
    assert req.mode == tpb.QUERY_MODE_TABLE and req.max_rows == 5 and req.timeout_s == 2.5
    with pytest.raises(InvalidArgument, match="mode must be one of 'sql', 'table', 'auto'") as err:
        build_query_request("shop", "q", mode="bogus", max_rows=None, timeout_s=None, instructions=None,
                            max_tokens=None, temperature=None, request_id=None, link=None, grammar=None,
                            self_correct=None)
    assert err.value.field == "mode"


def test_query_stream_keeps_the_grounded_values() -> None:
    state = _QueryState()
    gv = tpb.GroundedValue(table="customers", column="country", value="Germany", span="germany", score=1.0,
                           kind=tpb.GROUNDING_KIND_EXACT)
    fuzzy = tpb.GroundedValue(table="customers", column="country", value="France", span="frnace", score=0.8333,
                              kind=tpb.GROUNDING_KIND_FUZZY)
    header = tpb.QueryHeader(sql="SELECT 1", columns=[tpb.Column(name="n", kind=tpb.CELL_KIND_INT)],
                             grounded_values=[gv, fuzzy])
    state.feed(tpb.QueryResponse(header=header))
    state.feed(tpb.QueryResponse(complete=tpb.QueryComplete(sql="SELECT 1", attempts=1, valid=True,
                                                            mode=tpb.QUERY_MODE_SQL)))
    r = state.final()
    assert r.grounded_values == [
        GroundedValue(table="customers", column="country", value="Germany", span="germany", score=1.0, kind="exact"),
        GroundedValue(table="customers", column="country", value="France", span="frnace", score=0.8333, kind="fuzzy"),
    ]
    assert r.columns == ["n"] and r.mode == "sql"
    state = _QueryState()
    state.feed(tpb.QueryResponse(header=tpb.QueryHeader(sql="SELECT 1")))
    state.feed(tpb.QueryResponse(complete=tpb.QueryComplete(sql="SELECT 1", mode=tpb.QUERY_MODE_TABLE)))
    assert state.final().grounded_values == [] and state.final().mode == "table"


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
    assert list(req.choices) == ["yes", "no"] and req.WhichOneof("constraint") is None  # beside the oneof
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
        reason = pb.FinishReason.Value("FINISH_REASON_" + finish_reason.upper())
        state.feed(pb.GenerateResponse(complete=pb.Complete(finish_reason=reason, warnings=warnings)))
        assert state.completion is not None
        return state.completion

    c = run(output_parser({"type": "object"}), ['{"x": ', "1}"], "stop", ("dropped 'uniqueItems'",))
    assert c.parsed == {"x": 1} and c.warnings == ["dropped 'uniqueItems'"]  # type: ignore[attr-defined]
    assert c.finish_reason == "stop"  # type: ignore[attr-defined]  # FINISH_REASON_STOP, as users spell it
    c = run(output_parser(Point), ['{"x": 1, "y": 2}'], "stop")
    assert c.parsed == Point(x=1, y=2)  # type: ignore[attr-defined]
    assert run(output_parser(Point), ['{"x": 1, '], "length").parsed is None  # type: ignore[attr-defined]
    c = run(output_parser(Point), ['{"x": 1}'], "stop")  # e.g. strict=False dropped what the model checks
    assert c.parsed is None and "did not parse" in c.warnings[0]  # type: ignore[attr-defined]
    assert run(output_parser(None), ["yes"], "stop").parsed is None  # type: ignore[attr-defined]


# -- enums: the SDK's strings <-> the API's enums ---------------------------------------------------


def test_chat_roles_and_speculative_become_enums() -> None:
    from ragloom.services._proto import generation_pb2 as pb

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}]
    req = build_generate_request(None, messages=chat, request_id="r", speculative="lookup")
    assert [m.role for m in req.messages] == [pb.ROLE_SYSTEM, pb.ROLE_USER, pb.ROLE_ASSISTANT]
    assert [m.content for m in req.messages] == ["Be brief.", "Hi", "Hello"] and not req.prompt
    assert req.speculative == pb.SPECULATIVE_METHOD_LOOKUP
    assert build_generate_request("p", messages=None, request_id=None, speculative="off").speculative == (
        pb.SPECULATIVE_METHOD_OFF
    )
    assert build_generate_request("p", messages=None, request_id=None).speculative == pb.SPECULATIVE_METHOD_UNSPECIFIED


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}, "messages[1].role"),
        ({"messages": [{"role": "unspecified", "content": "a"}]}, "messages[0].role"),
        ({"messages": [{"content": "a"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"prompt": "p", "speculative": "medusa"}, "speculative"),
        ({"prompt": "p", "regex": "a+", "choices": ["a"]}, "choices"),
        ({"prompt": "p", "json_schema": {}, "grammar": "start: x"}, "grammar"),
    ],
)
def test_unknown_strings_are_refused_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    from ragloom.errors import InvalidArgument

    args = {"prompt": None, "messages": None, "request_id": None} | kwargs
    with pytest.raises(InvalidArgument) as info:
        build_generate_request(args.pop("prompt"), **args)  # type: ignore[arg-type]
    assert info.value.field == field, str(info.value)


def test_ask_request_k_and_mode() -> None:
    from ragloom.client import build_ask_request
    from ragloom.errors import InvalidArgument
    from ragloom.services._proto import rag_pb2 as apb

    req = build_ask_request("q", collection="kb")
    assert not req.HasField("k") and req.mode == apb.ASK_MODE_UNSPECIFIED  # the server's defaults
    req = build_ask_request("q", collection="kb", k=3, mode="epic")
    assert req.HasField("k") and req.k == 3 and req.mode == apb.ASK_MODE_EPIC
    assert build_ask_request("q", collection="kb", k=0).HasField("k")  # sent: the server refuses it, not the SDK
    with pytest.raises(InvalidArgument) as info:
        build_ask_request("q", collection="kb", mode="fastest")
    assert info.value.field == "mode" and "'blend'" in str(info.value)


def test_ask_stream_and_cache_stats_read_the_enums() -> None:
    from ragloom.client import _AskState
    from ragloom.client.results import cache_stats_from
    from ragloom.services._proto import generation_pb2 as pb
    from ragloom.services._proto import rag_pb2 as apb

    state = _AskState("a")
    state.feed(apb.AskResponse(passages=apb.Passages(passages=[
        apb.Passage(id="d", chunk_id="d#0", kv_source=apb.KV_SOURCE_COMPUTED),
        apb.Passage(id="e", chunk_id="e#0", kv_source=apb.KV_SOURCE_REDIS),
    ])))
    state.feed(apb.AskResponse(chunk=pb.Chunk(text="Paris")))
    state.feed(apb.AskResponse(complete=apb.AskComplete(finish_reason=pb.FINISH_REASON_LENGTH, mode=apb.ASK_MODE_BLEND)))
    answer = state.final()
    assert [p.kv_source for p in answer.passages] == ["computed", "redis"]
    assert (answer.text, answer.finish_reason, answer.mode) == ("Paris", "length", "blend")

    stats = cache_stats_from(apb.GetCacheStatsResponse(hits=2, tiers=[
        apb.TierStats(name="memory", kind=apb.TIER_KIND_MEMORY, available=True),
        apb.TierStats(name="shared", kind=apb.TIER_KIND_REDIS),
    ]))
    assert [(t.name, t.kind) for t in stats.tiers] == [("memory", "memory"), ("shared", "redis")] and stats.hits == 2
