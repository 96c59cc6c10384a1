"""One exception hierarchy for all of ragloom, and its single mapping to gRPC status codes.

Libraries (runner, retrieval, cache, connectors) raise these; the service layer turns them into
status codes with `grpc_code()` and never needs to know which part raised.
"""

from __future__ import annotations

import grpc


class RagloomError(Exception):
    """Base class: a message a person can act on."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(RagloomError):
    """The request itself is wrong (empty prompt, bad sampling value, unknown keyword)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class GrammarError(InvalidArgument):
    """A constraint (lark grammar, JSON Schema, regex, choices) cannot be compiled as given."""


class UnsupportedKeyword(GrammarError):
    """A JSON Schema keyword the compiler cannot express; never silently dropped (strict mode)."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message)
        self.keyword = keyword


class CompileTimeout(GrammarError):
    """Compiling a constraint took longer than the configured limit."""


class SqlError(InvalidArgument):
    """SQL that cannot be parsed, names unknown tables or columns, or that the database rejected."""


class ForbiddenQuery(RagloomError):
    """SQL the guard refuses: anything but one read-only SELECT over allow-listed tables."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(RagloomError):
    """A named thing (model, collection, connector, request id) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RagloomError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(RagloomError):
    """Too many requests, or the request can never fit in the KV cache / limits."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(RagloomError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(RagloomError):
    """The server is draining or the engine is not running; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(RagloomError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Cancelled(RagloomError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(RagloomError):
    """The request asks for a feature this server does not provide (yet)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class ModelError(RagloomError):
    """A model could not be found, converted or loaded (missing path, unsupported architecture)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The status code for any exception: ours carry one, anything else is INTERNAL."""
    if isinstance(exc, RagloomError):
        return exc.code
    return grpc.StatusCode.INTERNAL


# The reverse direction, for the SDK: a gRPC status back into our hierarchy.
_BY_CODE: dict[grpc.StatusCode, type[RagloomError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        FailedPrecondition,
        Cancelled,
        Unimplemented,
        ForbiddenQuery,
    )
}


def from_grpc_code(code: grpc.StatusCode, message: str) -> RagloomError:
    return _BY_CODE.get(code, RagloomError)(message)
