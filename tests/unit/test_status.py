"""The one map between ragloom's errors and gRPC status codes (services/status.py)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from ragloom import errors as e
from ragloom.services.status import error_from_status, grpc_code


def test_errors_module_knows_no_transport() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, ragloom.errors; print('grpc' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (e.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.SqlError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.UnsupportedKeyword("uniqueItems", "x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.ForbiddenQuery("x"), grpc.StatusCode.PERMISSION_DENIED),
        (e.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (e.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (e.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (e.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (e.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (e.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (e.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (e.ModelError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (e.Cancelled("x"), grpc.StatusCode.CANCELLED),
        (e.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED),
        (e.RagloomError("x"), grpc.StatusCode.INTERNAL),
        (KeyError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_has_its_code(exc: BaseException, code: grpc.StatusCode) -> None:
    assert grpc_code(exc) is code


def test_status_comes_back_as_the_same_class() -> None:
    for cls in (e.InvalidArgument, e.PermissionDenied, e.NotFound, e.AlreadyExists, e.ResourceExhausted,
                e.DeadlineExceeded, e.Unavailable, e.FailedPrecondition, e.Cancelled, e.Unimplemented):
        back = error_from_status(grpc_code(cls("m")), "m")
        assert type(back) is cls and str(back) == "m"
    assert type(error_from_status(grpc.StatusCode.UNKNOWN, "m")) is e.RagloomError


# -- rich error details (google.rpc.Status in grpc-status-details-bin) -------------------------

def _round_trip(exc: e.RagloomError, request_id: str = "req-1") -> e.RagloomError:
    """What the SDK makes of the status the server sends for `exc`."""
    from google.rpc import status_pb2

    from ragloom.services.status import DETAILS_KEY, failure_status

    failure = failure_status(exc, "Test", request_id)
    [(key, raw)] = failure.trailing_metadata
    assert key == DETAILS_KEY
    status = status_pb2.Status.FromString(raw)
    assert status.code == failure.code.value[0] and status.message == failure.message
    return error_from_status(failure.code, failure.message, status)


def test_reason_field_and_metadata_survive_the_wire() -> None:
    sent = e.InvalidArgument("top_p must be in (0, 1], got 2", field="sampling.top_p")
    got = _round_trip(sent)
    assert type(got) is e.InvalidArgument and str(got) == str(sent)
    assert (got.code, got.reason, got.field) == ("INVALID_ARGUMENT", "INVALID_FIELD", "sampling.top_p")
    assert got.metadata["request_id"] == "req-1"

    got = _round_trip(e.NotFound("no collection 'x'", reason="COLLECTION_NOT_FOUND", metadata={"collection": "x"}))
    assert (got.code, got.reason, got.field) == ("NOT_FOUND", "COLLECTION_NOT_FOUND", None)
    assert got.metadata["collection"] == "x"

    got = _round_trip(e.UnsupportedKeyword("patternProperties", "unsupported"))
    assert (got.reason, got.metadata["keyword"]) == ("SCHEMA_KEYWORD_UNSUPPORTED", "patternProperties")
    assert type(got) is e.InvalidArgument  # the SDK maps codes to base classes


def test_retry_info_only_where_a_retry_may_help() -> None:
    busy = _round_trip(e.ResourceExhausted("queue full", reason="OVERLOADED", retry_after_s=2.5))
    assert (busy.reason, busy.retry_after_s) == ("OVERLOADED", 2.5)
    assert _round_trip(e.Unavailable("draining")).retry_after_s == 1.0
    assert _round_trip(e.ResourceExhausted("prompt longer than the context")).retry_after_s is None
    assert _round_trip(e.InvalidArgument("bad")).retry_after_s is None


def test_internal_errors_leak_nothing() -> None:
    from google.rpc import error_details_pb2, status_pb2

    from ragloom.services.status import failure_status

    failure = failure_status(KeyError("secret path /etc/x"), "Test", "r")
    assert failure.code is grpc.StatusCode.INTERNAL and "secret" not in failure.message
    status = status_pb2.Status.FromString(failure.trailing_metadata[0][1])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "INTERNAL" and not info.metadata
    assert all("secret" not in str(d) for d in status.details)


def test_every_reason_is_in_the_proto_enum() -> None:
    """Reasons are a contract (errors.proto's ErrorReason): each class default and every literal
    reason="..." in the code must be one of its values."""
    import re
    from pathlib import Path

    from ragloom.services._proto import errors_pb2

    known = set(errors_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    classes = [c for c in vars(e).values() if isinstance(c, type) and issubclass(c, e.RagloomError)]
    assert {c.reason for c in classes} <= known
    root = Path(__file__).resolve().parents[2]
    used: dict[str, str] = {}
    for folder in ("ragloom", "generation", "retrieval", "cache", "connectors", "services"):
        for path in (root / folder).rglob("*.py"):
            for m in re.finditer(r'\breason\s*=\s*"([A-Z_]+)"', path.read_text()):
                used.setdefault(m.group(1), str(path.relative_to(root)))
    unknown = {r: where for r, where in used.items() if r not in known}
    assert not unknown, f"reasons missing from ErrorReason in errors.proto: {unknown}"
    assert "COLLECTION_NOT_FOUND" in known and "SQL_NOT_READ_ONLY" in known


def test_request_ids_are_checked() -> None:
    from ragloom.services.request_ids import request_id

    assert request_id("abc-1.2:3_x") == "abc-1.2:3_x"
    assert len(request_id("")) == 32
    for bad in ("has space", "x" * 129, "semi;colon"):
        with pytest.raises(e.InvalidArgument) as info:
            request_id(bad)
        assert info.value.field == "request_id"


def test_sdk_raises_the_class_named_by_the_reason() -> None:
    assert type(_round_trip(e.SqlError("no such column"))) is e.SqlError
    assert type(_round_trip(e.GrammarError("not LALR(1)"))) is e.GrammarError
    timeout = _round_trip(e.CompileTimeout("too slow", metadata={"part": "automata"}))
    assert type(timeout) is e.CompileTimeout and timeout.metadata["part"] == "automata"
    assert type(_round_trip(e.ForbiddenQuery("DROP"))) is e.ForbiddenQuery
    denied = _round_trip(e.PermissionDenied("outside the roots", metadata={"rule": "connector_roots"}))
    assert type(denied) is e.PermissionDenied and denied.reason == "CONNECTOR_NOT_ALLOWED"
    assert denied.metadata["rule"] == "connector_roots"


def test_grpc_own_refusals_get_a_reason() -> None:
    """gRPC refuses calls over max_concurrent_rpcs and oversize messages itself, without details."""
    busy = error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
    assert (busy.reason, busy.retry_after_s) == ("OVERLOADED", 1.0)
    big = error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)")
    assert (big.reason, big.retry_after_s) == ("REQUEST_TOO_LARGE", None)


def test_a_stream_reset_below_grpc_is_unavailable() -> None:
    # nginx resets the client's stream (HTTP/2 INTERNAL_ERROR) when its replica dies mid-call
    reset = error_from_status(grpc.StatusCode.INTERNAL, "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))")
    assert isinstance(reset, e.Unavailable) and reset.code == "UNAVAILABLE"
    bug = error_from_status(grpc.StatusCode.INTERNAL, "internal error in Search; see server log")
    assert type(bug) is e.RagloomError and bug.reason == "INTERNAL"


def test_a_struct_json_cannot_hold_is_invalid_argument() -> None:
    """Found by the RPC fuzzer: a NaN in a Search filter failed in MessageToDict -> INTERNAL."""
    from google.protobuf import struct_pb2

    from ragloom.structs import struct_to_dict

    s = struct_pb2.Struct()
    s.update({"year": float("nan")})
    with pytest.raises(e.InvalidArgument) as info:
        struct_to_dict(s, "filter")
    assert info.value.field == "filter"
