"""Property-based fuzzing of every RPC: random and extreme request messages must each get a
defined status code (never UNKNOWN or INTERNAL), and the server must keep serving.

The strategies are built from the served descriptors, so a new RPC or field is fuzzed without a
change here: strings (empty, huge, control characters, deep brackets, JSON Schemas, grammars,
SQL), integers at their type's limits, NaN and infinite floats, invalid UTF-8 bytes, unknown enum
numbers, deep Struct values and repeated fields. Names of the seeded collection and connector are
drawn often, so that requests get past the lookups into the real work.

`make test` runs a bounded, derandomized pass (a few examples per RPC); `make test-all` runs the
long random one (RAGLOOM_FUZZ_EXAMPLES overrides the count).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from background_loop import LiveServer, live_server
from google.protobuf import descriptor, message_factory, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragloom.client import Client
from ragloom.config import Settings
from ragloom.retrieval.collections import CollectionManager
from ragloom.services._proto import generation_pb2, rag_pb2, retrieval_pb2, retrieval_pb2_grpc, tables_pb2

ROOT = Path(__file__).resolve().parents[2]
SHOP_DB = ROOT / "examples" / "shop.db"
CALL_TIMEOUT_S = 3.0  # DEADLINE_EXCEEDED is a defined answer: long generations end there
UNDEFINED = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)

_FD = descriptor.FieldDescriptor
_INT_LIMITS = {
    _FD.TYPE_INT32: (-(2**31), 2**31 - 1), _FD.TYPE_SINT32: (-(2**31), 2**31 - 1), _FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _FD.TYPE_INT64: (-(2**63), 2**63 - 1), _FD.TYPE_SINT64: (-(2**63), 2**63 - 1), _FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _FD.TYPE_UINT32: (0, 2**32 - 1), _FD.TYPE_FIXED32: (0, 2**32 - 1),
    _FD.TYPE_UINT64: (0, 2**64 - 1), _FD.TYPE_FIXED64: (0, 2**64 - 1),
}

SEEDED_NAMES = ("fuzz", "fuzz-connector")
EXTREME_TEXT = (
    "", " ", "\x00", "\ud7ff\ue000", "a" * 70_000, "🙂" * 3_000, "(" * 5_000, "[" * 5_000 + "]" * 5_000,
    "'; DROP TABLE orders; --", "SELECT * FROM orders", "SELECT 1 -- '" + "(" * 400, "../../etc/passwd",
    "/etc/passwd", "sqlite:////etc/passwd", "postgresql://root@127.0.0.1:1/none", "\n" * 1000, "%s%n%x",
)
SCHEMAS = (
    '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}',
    '{"type": "string", "maxLength": 100000}', '{"type": "array", "minItems": 3000}',
    '{"$ref": "#/$defs/x", "$defs": {"x": {"$ref": "#/$defs/x"}}}', '{"pattern": "(a*)*b"}',
    '{"type": "string", "format": "email"}', '{"enum": []}', "true", "false", "[]", "{" * 3000, "null",
    json.dumps({"anyOf": [{"type": "integer", "minimum": i} for i in range(200)]}),
)
GRAMMARS = ('start: "a"+', "start: start", "start: x\nx: start", 'start: /(a|b)*c/', "%import common.WORD\nstart: WORD")
REGEXES = ("a*", "(a*)*b", "[", "\\p{L}+", "(?<=a)b", "a{1000000}", "(a|b){0,5000}", "")

_SPECIAL: dict[str, st.SearchStrategy[str]] = {
    "json_schema": st.sampled_from(SCHEMAS) | st.text(max_size=40),
    "lark_grammar": st.sampled_from(GRAMMARS) | st.text(max_size=40),
    "regex": st.sampled_from(REGEXES) | st.text(max_size=20),
    "collection": st.sampled_from(SEEDED_NAMES) | st.text(max_size=20),
    "connector": st.sampled_from(SEEDED_NAMES) | st.text(max_size=20),
    "name": st.sampled_from(SEEDED_NAMES) | st.text(max_size=20),
    "url": st.sampled_from(EXTREME_TEXT) | st.text(max_size=40),
    "sql": st.sampled_from(
        ("SELECT count(*) FROM orders", "SELECT * FROM orders WHERE id = 1", "select 1/0", "PRAGMA table_info(orders)",
         "ATTACH '/etc/passwd' AS x", "SELECT load_extension('x')", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL "
         "SELECT n+1 FROM r) SELECT n FROM r")
    ) | st.sampled_from(EXTREME_TEXT) | st.text(max_size=40),
}


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=30)


def _deep_struct(depth: int) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    node = s
    for _ in range(depth):
        node = node.fields["x"].struct_value
    return s


@st.composite
def _struct(draw: st.DrawFn, deepest: int) -> struct_pb2.Struct:
    if draw(st.integers(0, 9)) == 0:
        # past protobuf's nesting limit of 100 (a level is a Struct, a map entry and a Value) the server cannot
        # decode the request; the client (upb) builds such a message only at the top level
        return _deep_struct(draw(st.sampled_from((10, deepest))))
    s = struct_pb2.Struct()
    value = draw(st.dictionaries(st.sampled_from(("lang", "year", "$in", "$eq", "$bad", "")) | st.text(max_size=8),
                                 _json_values(), max_size=4))
    try:
        s.update(value)
    except ValueError:  # NaN is fine; a Struct refuses nothing else drawn here
        pass
    return s


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == _FD.TYPE_STRING:
        special = _SPECIAL.get(field.name)
        return special if special is not None else st.sampled_from(EXTREME_TEXT) | st.text(max_size=30)
    if t == _FD.TYPE_BYTES:
        return st.binary(max_size=64) | st.just(b"\xff\xfe\xc3(")
    if t in _INT_LIMITS:
        lo, hi = _INT_LIMITS[t]
        return st.sampled_from((lo, hi, 0, -1, 1)) | st.integers(min_value=max(lo, -10), max_value=min(hi, 2000))
    if t == _FD.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if t == _FD.TYPE_FLOAT:
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == _FD.TYPE_BOOL:
        return st.booleans()
    if t == _FD.TYPE_ENUM:
        return st.integers(-3, 12)  # proto3 enums are open: unknown numbers arrive as such
    raise AssertionError(f"no strategy for field type {t} ({field.full_name})")


@st.composite
def messages(draw: st.DrawFn, desc: descriptor.Descriptor, depth: int = 0) -> Any:
    """A random instance of the message type `desc` (fields set with probability 2/3)."""
    cls = message_factory.GetMessageClass(desc)
    if desc.full_name == "google.protobuf.Struct":
        return draw(_struct(95 if depth <= 1 else 25))
    msg = cls()
    for field in desc.fields:
        if draw(st.integers(0, 2)) == 0:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k in draw(st.lists(st.text(max_size=6), max_size=3)):
                getattr(msg, field.name)[k] = draw(st.integers(-5, 5))
            continue
        repeated = field.is_repeated
        if field.message_type is not None:
            if depth >= 3:
                continue
            sub = messages(field.message_type, depth + 1)
            if repeated:
                getattr(msg, field.name).extend(draw(st.lists(sub, max_size=3)))
            else:
                getattr(msg, field.name).CopyFrom(draw(sub))
        elif repeated:
            getattr(msg, field.name).extend(draw(st.lists(_scalar(field), max_size=4)))
        else:
            setattr(msg, field.name, draw(_scalar(field)))
    return msg


def _methods() -> list[descriptor.MethodDescriptor]:
    out: list[descriptor.MethodDescriptor] = []
    for module in (generation_pb2, retrieval_pb2, rag_pb2, tables_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            out.extend(service.methods)
    return out


METHODS = _methods()
TRIED: Counter[str] = Counter()


def call(channel: grpc.Channel, method: descriptor.MethodDescriptor, requests: list[Any]) -> grpc.StatusCode:
    """The status code the server answers `requests` with (all responses read)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    out_cls = message_factory.GetMessageClass(method.output_type)
    ser, de = (lambda m: m.SerializeToString()), out_cls.FromString
    try:
        if method.client_streaming:
            for _ in channel.stream_stream(path, ser, de)(iter(requests), timeout=CALL_TIMEOUT_S):
                pass
        elif method.server_streaming:
            for _ in channel.unary_stream(path, ser, de)(requests[0], timeout=CALL_TIMEOUT_S):
                pass
        else:
            channel.unary_unary(path, ser, de)(requests[0], timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Every service on the bundled model, with a seeded collection and connector to hit."""
    tmp = tmp_path_factory.mktemp("fuzz")
    db = tmp / "shop.db"
    shutil.copy(SHOP_DB, db)
    manager = CollectionManager(tmp / "collections")
    settings_ = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp, chunk_kv_memory_bytes=32 << 20,
                         constraint_timeout_s=2.0)
    engine = Settings(device="cpu", kv_cache_tokens=8192, max_num_seqs=4)
    try:
        with live_server(settings_, engine, collections=manager) as srv:
            with Client(srv.address) as c:
                c.create_collection("fuzz")
                c.upsert("fuzz", [{"id": f"d{i}", "text": f"Document {i} about rivers and cities.", "metadata": {"year": 2020 + i}}
                                  for i in range(5)])
                c.register_connector("fuzz-connector", f"sqlite:///{db}")
            yield srv
    finally:
        manager.close()
        print("\nfuzz inputs tried per RPC:", dict(TRIED), file=sys.stderr)


def _fuzz(served: LiveServer, method: descriptor.MethodDescriptor, examples: int, derandomize: bool) -> None:
    request = messages(method.input_type)
    inputs = st.lists(request, min_size=1, max_size=3 if method.client_streaming else 1)

    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(inputs)
    def run(requests: list[Any]) -> None:
        TRIED[method.name] += 1
        with grpc.insecure_channel(served.address) as channel:
            code = call(channel, method, requests)
        assert code not in UNDEFINED, f"{method.full_name} answered {code.name} to {requests!r:.300}"

    run()
    with grpc.insecure_channel(served.address) as channel:  # still serving
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


_IDS = [f"{m.containing_service.name}.{m.name}" for m in METHODS]


@pytest.mark.parametrize("method", METHODS, ids=_IDS)
def test_every_input_gets_a_defined_status(served: LiveServer, method: descriptor.MethodDescriptor) -> None:
    _fuzz(served, method, examples=8, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=_IDS)
def test_long_random_fuzz(served: LiveServer, method: descriptor.MethodDescriptor) -> None:
    _fuzz(served, method, examples=int(os.environ.get("RAGLOOM_FUZZ_EXAMPLES", "300")), derandomize=False)


def test_a_request_too_deep_to_decode_is_invalid_argument(served: LiveServer) -> None:
    """grpc.aio alone answers UNKNOWN when a request cannot be decoded (services/decoding.py)."""
    from google.rpc import error_details_pb2, status_pb2

    request = retrieval_pb2.SearchRequest(collection="fuzz", query="rivers")
    request.filter.CopyFrom(_deep_struct(60))  # 180 levels of nesting: more than protobuf decodes
    with grpc.insecure_channel(served.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(request, timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "cannot be decoded" in err.details()  # type: ignore[attr-defined]
    raw = dict(err.trailing_metadata())["grpc-status-details-bin"]  # type: ignore[attr-defined]
    details = status_pb2.Status.FromString(raw).details
    info_ = error_details_pb2.ErrorInfo()
    assert details[0].Unpack(info_) and info_.reason == "INVALID_FIELD"
