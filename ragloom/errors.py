"""One exception hierarchy for all of ragloom, free of any transport.

Libraries (runner, retrieval, cache, connectors) raise these. `services/status.py` alone maps
them to gRPC status codes, and back again for the SDK.
"""

from __future__ import annotations

from collections.abc import Mapping


class RagloomError(Exception):
    """Base class: a message a person can act on.

    `reason` is a stable machine-readable name (one of ragloom.v1.ErrorReason's values; each class
    has a default), `field` the request field at fault as a path ("sampling.top_p",
    "documents[3].id"), `metadata` what the error names ({"collection": "notes"}), and
    `retry_after_s` how long a caller should wait before retrying (where a retry may help). The
    SDK fills `code` with the gRPC status code's name of an error it received.
    """

    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.field = field
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}
        self.retry_after_s = retry_after_s
        self.code: str | None = None


class InvalidArgument(RagloomError):
    """The request itself is wrong (empty prompt, bad sampling value, unknown keyword)."""

    reason = "INVALID_FIELD"


class GrammarError(InvalidArgument):
    """A constraint (lark grammar, JSON Schema, regex, choices) cannot be compiled as given."""

    reason = "GRAMMAR_INVALID"


class UnsupportedKeyword(GrammarError):
    """A JSON Schema keyword the compiler cannot express; never silently dropped (strict mode)."""

    reason = "SCHEMA_KEYWORD_UNSUPPORTED"

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message, metadata={"keyword": keyword})
        self.keyword = keyword


class SqlError(InvalidArgument):
    """SQL that cannot be parsed, names unknown tables or columns, or that the database rejected."""

    reason = "SQL_INVALID"


class PermissionDenied(RagloomError):
    """The server's configuration does not let this caller do this: a connector path outside the
    connector roots or a database host outside the allowed hosts (the default reason), SQL the
    guard refuses (ForbiddenQuery), a missing scope."""

    reason = "CONNECTOR_NOT_ALLOWED"


class ForbiddenQuery(PermissionDenied):
    """SQL the guard refuses: anything but one read-only SELECT over allow-listed tables."""

    reason = "SQL_NOT_READ_ONLY"


class ScopeMissing(PermissionDenied):
    """The caller's API key is valid but lacks the scope the call needs (metadata "scope")."""

    reason = "SCOPE_MISSING"


class Unauthenticated(RagloomError):
    """The server requires an API key and the call has none, or one the server does not know."""

    reason = "API_KEY_INVALID"


class NotFound(RagloomError):
    """A named thing (model, collection, connector, request id) does not exist."""

    reason = "NOT_FOUND"


class AlreadyExists(RagloomError):
    """A thing to be created exists already (collection, connector)."""

    reason = "ALREADY_EXISTS"


class ResourceExhausted(RagloomError):
    """Too many requests, or the request can never fit in the KV cache / limits."""

    reason = "REQUEST_TOO_LARGE"


class DeadlineExceeded(RagloomError):
    """The request's deadline passed before the work finished; the work was stopped."""

    reason = "DEADLINE_EXCEEDED"


class CompileTimeout(DeadlineExceeded):
    """Compiling a constraint took longer than the configured limit (constraint_timeout_s); the
    compiler stopped. Not an InvalidArgument: the same constraint may compile under a longer limit."""

    reason = "CONSTRAINT_COMPILE_TIMEOUT"


class Unavailable(RagloomError):
    """The server is draining or the engine is not running; the caller may retry."""

    reason = "SERVER_UNAVAILABLE"


class FailedPrecondition(RagloomError):
    """The system is not in a state to do this (e.g. a collection's embedder differs)."""

    reason = "FAILED_PRECONDITION"


class Cancelled(RagloomError):
    """The caller cancelled the work."""

    reason = "CANCELLED"


class Unimplemented(RagloomError):
    """The request asks for a feature this server does not provide (yet)."""

    reason = "UNIMPLEMENTED"


class ModelError(RagloomError):
    """A model could not be found, converted or loaded (missing path, unsupported architecture)."""

    reason = "MODEL_UNAVAILABLE"
