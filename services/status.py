"""How a failed RPC ends: the one map between ragloom's errors and gRPC status codes.

Servicers turn an exception into a status here (`failure_status`); the SDK turns a status back
into the same exception class (`error_from_status`). A RagloomError's message is meant for the
caller; anything else is a bug on our side, logged with its traceback and answered INTERNAL
without leaking details. Cancellation is not a failure: handlers re-raise asyncio.CancelledError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from ragloom import errors as e

log = logging.getLogger(__name__)

_T = TypeVar("_T")


# Most specific first: grpc_code() takes the first class the exception is an instance of.
_CODES: tuple[tuple[type[e.RagloomError], grpc.StatusCode], ...] = (
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),  # GrammarError, SqlError, ... too
    (e.ForbiddenQuery, grpc.StatusCode.PERMISSION_DENIED),
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


def error_from_status(code: grpc.StatusCode, message: str) -> e.RagloomError:
    """The SDK's side: a status received from the server back into ragloom's hierarchy."""
    return _ERRORS.get(code, e.RagloomError)(message)


def failure_status(exc: Exception, what: str) -> tuple[grpc.StatusCode, str]:
    """(code, message) for `await context.abort(*...)`; `what` names the call in logs and messages."""
    if isinstance(exc, e.RagloomError):
        log.info("%s rejected: %s: %s", what, type(exc).__name__, exc)
        return grpc_code(exc), str(exc)
    log.error("%s failed", what, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {what}; see server log"


@contextlib.asynccontextmanager
async def abort_on_failure(rpc: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Around a handler's work (unary, or a stream's every yield): its failure ends the call with
    failure_status(); cancellation is logged and passes on."""
    # context.abort() raises, so it is called outside the try: the generic handler must not
    # swallow it as an "unexpected" error
    failure: tuple[grpc.StatusCode, str] | None = None
    try:
        yield
    except asyncio.CancelledError:
        log.info("%s: cancelled by the client or its deadline", rpc)
        raise
    except Exception as exc:
        failure = failure_status(exc, rpc)
    if failure is not None:
        await context.abort(*failure)


async def unary(rpc: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[_T]]) -> _T:
    """Run a unary handler's work(); its failure ends the call with failure_status()."""
    async with abort_on_failure(rpc, context):
        return await work()
    raise AssertionError("unreachable: abort_on_failure re-raises or aborts, and context.abort raises")
