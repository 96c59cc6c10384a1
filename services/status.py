"""How a failed RPC ends: the one place every servicer turns an exception into a gRPC status.

RagloomErrors carry their own code (ragloom.errors.grpc_code) and a message meant for the caller;
anything else is a bug on our side, logged with its traceback and answered INTERNAL without
leaking details. Cancellation is not a failure: handlers re-raise asyncio.CancelledError.
"""

from __future__ import annotations

import logging

import grpc

from ragloom.errors import RagloomError, grpc_code

log = logging.getLogger(__name__)


def failure_status(exc: Exception, what: str) -> tuple[grpc.StatusCode, str]:
    """(code, message) for `await context.abort(*...)`; `what` names the call in logs and messages."""
    if isinstance(exc, RagloomError):
        log.info("%s rejected: %s: %s", what, type(exc).__name__, exc)
        return grpc_code(exc), str(exc)
    log.error("%s failed", what, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {what}; see server log"
