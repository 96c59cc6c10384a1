"""How a failed RPC ends: the one place every servicer turns an exception into a gRPC status.

RagloomErrors carry their own code (ragloom.errors.grpc_code) and a message meant for the caller;
anything else is a bug on our side, logged with its traceback and answered INTERNAL without
leaking details. Cancellation is not a failure: handlers re-raise asyncio.CancelledError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from ragloom.errors import RagloomError, grpc_code

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def failure_status(exc: Exception, what: str) -> tuple[grpc.StatusCode, str]:
    """(code, message) for `await context.abort(*...)`; `what` names the call in logs and messages."""
    if isinstance(exc, RagloomError):
        log.info("%s rejected: %s: %s", what, type(exc).__name__, exc)
        return grpc_code(exc), str(exc)
    log.error("%s failed", what, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {what}; see server log"


async def unary(rpc: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[_T]]) -> _T:
    """Run a unary handler's work(); its failure ends the call with failure_status()."""
    # context.abort() raises, so it is called outside the try
    failure: tuple[grpc.StatusCode, str] | None = None
    try:
        return await work()
    except asyncio.CancelledError:
        log.info("%s: cancelled by the client or its deadline", rpc)
        raise
    except Exception as exc:
        failure = failure_status(exc, rpc)
    await context.abort(*failure)
    raise AssertionError("unreachable: context.abort raises")
