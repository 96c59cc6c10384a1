"""How a failed RPC ends: the one map between ragloom's errors and gRPC status codes.

Servicers turn an exception into a status here (`failure_status`); the SDK turns a status back
into the same exception class (`error_from_status`). A RagloomError's message is meant for the
caller; anything else is a bug on our side, logged with its traceback and answered INTERNAL
without leaking details. Cancellation is not a failure: handlers re-raise asyncio.CancelledError.

Every failure also carries a google.rpc.Status in the `grpc-status-details-bin` trailer (see
proto/ragloom/v1/errors.proto): ErrorInfo (domain "ragloom.dev", the error's stable reason and
metadata), BadRequest naming the field at fault, RetryInfo where a retry may help, and
RequestInfo with the call's request id. The SDK reads them back onto the exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from ragloom import errors as e
from ragloom.services import request_ids

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DOMAIN = "ragloom.dev"  # ErrorInfo.domain of every ragloom error
DETAILS_KEY = "grpc-status-details-bin"  # the trailer gRPC libraries read google.rpc.Status from
DEFAULT_RETRY_S = 1.0  # RetryInfo's delay when the error names none
_RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
_NOT_RETRYABLE_REASONS = ("REQUEST_TOO_LARGE",)


# Most specific first: grpc_code() takes the first class the exception is an instance of.
_CODES: tuple[tuple[type[e.RagloomError], grpc.StatusCode], ...] = (
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),  # GrammarError, SqlError, ... too
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),  # ForbiddenQuery too
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (e.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),  # CompileTimeout too
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (e.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (e.ModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (e.Cancelled, grpc.StatusCode.CANCELLED),
    (e.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
)
# The SDK's direction: the base class for each code (ModelError arrives as FailedPrecondition).
_ERRORS: dict[grpc.StatusCode, type[e.RagloomError]] = {}
for _cls, _code in _CODES:
    _ERRORS.setdefault(_code, _cls)


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The status code for any exception: ours map through _CODES, anything else is INTERNAL."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


class Failure(NamedTuple):
    """The arguments of `context.abort(*failure)`."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, bytes], ...]


def _pack(msg: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)  # type: ignore[arg-type]
    return packed


def status_proto(exc: e.RagloomError | None, code: grpc.StatusCode, message: str, request_id: str = "") -> status_pb2.Status:
    """The google.rpc.Status of a failure (exc None: an internal error, no details of it)."""
    reason = exc.reason if exc is not None else "INTERNAL"
    metadata = dict(exc.metadata) if exc is not None else {}
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))]
    if exc is not None and exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if code in _RETRYABLE and reason not in _NOT_RETRYABLE_REASONS:
        delay = exc.retry_after_s if exc is not None and exc.retry_after_s is not None else DEFAULT_RETRY_S
        seconds = int(delay)
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=seconds, nanos=int((delay - seconds) * 1e9))
        )
        details.append(_pack(retry))
    if request_id:
        details.append(_pack(error_details_pb2.RequestInfo(request_id=request_id)))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


# The SDK's direction, refined by ErrorInfo.reason: classes a caller may want to catch by name
_BY_REASON: dict[str, type[e.RagloomError]] = {
    cls.reason: cls for cls in (e.GrammarError, e.SqlError, e.CompileTimeout, e.ModelError, e.ForbiddenQuery,
                                e.ScopeMissing)
}


def error_from_status(
    code: grpc.StatusCode, message: str, details: status_pb2.Status | None = None
) -> e.RagloomError:
    """The SDK's side: a status received from the server back into ragloom's hierarchy, with the
    reason, field, metadata and retry delay of its google.rpc.Status details when it has them."""
    info, field, retry_s, request_id = None, None, None, ""
    for packed in details.details if details is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            field = bad.field_violations[0].field if bad.field_violations else None
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_s = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        elif packed.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            req = error_details_pb2.RequestInfo()
            packed.Unpack(req)
            request_id = req.request_id
    if code == grpc.StatusCode.INTERNAL and details is None and "RST_STREAM" in message:
        # a stream reset below gRPC, not a server's INTERNAL (ours always carries details): a
        # proxy that lost its replica mid-call, or a dropped connection. Like UNAVAILABLE, the
        # call may or may not have run: retry it when it is idempotent.
        code = grpc.StatusCode.UNAVAILABLE
    cls = _ERRORS.get(code, e.RagloomError)
    refined = _BY_REASON.get(info.reason) if info is not None else None
    if refined is not None and grpc_code(refined("")) is code:
        cls = refined
    err = cls(message, field=field, retry_after_s=retry_s)
    err.code = code.name
    if info is not None:
        err.reason = info.reason
        err.metadata = dict(info.metadata)
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # refused by gRPC itself, without details: its concurrent-call limit, or a message too large
        err.reason = "OVERLOADED" if "concurrent" in message.lower() else "REQUEST_TOO_LARGE"
        if err.reason == "OVERLOADED" and err.retry_after_s is None:
            err.retry_after_s = DEFAULT_RETRY_S
    elif code not in _ERRORS:
        err.reason = "INTERNAL" if code == grpc.StatusCode.INTERNAL else code.name
    if request_id:
        err.metadata.setdefault("request_id", request_id)
    return err


def failure_status(exc: Exception, what: str, request_id: str = "") -> Failure:
    """How a call that raised `exc` ends; `what` names the call in logs and messages."""
    if isinstance(exc, e.RagloomError):
        code, message, known = grpc_code(exc), str(exc), exc
        log.info("%s rejected: %s (%s): %s", what, type(exc).__name__, exc.reason, exc)
    else:
        log.error("%s failed", what, exc_info=exc)
        code, message, known = grpc.StatusCode.INTERNAL, f"internal error in {what}; see server log", None
    status = status_proto(known, code, message, request_id)
    return Failure(code, message, ((DETAILS_KEY, status.SerializeToString()),))


@contextlib.asynccontextmanager
async def abort_on_failure(rpc: str, context: grpc.aio.ServicerContext, request_id: str = "") -> AsyncIterator[str]:
    """Around a handler's work (unary, or a stream's every yield), given the request's request_id:
    yields the id in use (checked, or generated) after sending it in the `x-request-id` header.
    A failure ends the call with failure_status(); cancellation is logged and passes on."""
    # context.abort() raises, so it is called outside the try: the generic handler must not
    # swallow it as an "unexpected" error
    failure: Failure | None = None
    rid = ""
    try:
        rid = request_ids.request_id(request_id)
        # each RPC runs in its own task, so this names this call's log lines only (never reset:
        # a stream's generator may be closed from another context, and the task ends with the call)
        request_ids.CURRENT.set(rid)
        await context.send_initial_metadata(((request_ids.HEADER, rid),))
        yield rid
    except asyncio.CancelledError:
        log.info("%s %s: cancelled by the client or its deadline", rpc, rid)
        raise
    except Exception as exc:
        failure = failure_status(exc, f"{rpc} {rid}".rstrip(), rid)
    if failure is not None:
        await context.abort(*failure)


async def unary(
    rpc: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[_T]], request_id: str = ""
) -> _T:
    """Run a unary handler's work() for a request with this request_id; its failure ends the call
    with failure_status()."""
    async with abort_on_failure(rpc, context, request_id):
        return await work()
    raise AssertionError("unreachable: abort_on_failure re-raises or aborts, and context.abort raises")
