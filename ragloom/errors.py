"""One exception hierarchy for all of ragloom, free of any transport.

Libraries (runner, retrieval, cache, connectors) raise these. `services/status.py` alone maps
them to gRPC status codes, and back again for the SDK.
"""

from __future__ import annotations


class RagloomError(Exception):
    """Base class: a message a person can act on."""


class InvalidArgument(RagloomError):
    """The request itself is wrong (empty prompt, bad sampling value, unknown keyword)."""


class GrammarError(InvalidArgument):
    """A constraint (lark grammar, JSON Schema, regex, choices) cannot be compiled as given."""


class UnsupportedKeyword(GrammarError):
    """A JSON Schema keyword the compiler cannot express; never silently dropped (strict mode)."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message)
        self.keyword = keyword


class SqlError(InvalidArgument):
    """SQL that cannot be parsed, names unknown tables or columns, or that the database rejected."""


class ForbiddenQuery(RagloomError):
    """SQL the guard refuses: anything but one read-only SELECT over allow-listed tables."""


class NotFound(RagloomError):
    """A named thing (model, collection, connector, request id) does not exist."""


class AlreadyExists(RagloomError):
    """A thing to be created exists already (collection, connector)."""


class ResourceExhausted(RagloomError):
    """Too many requests, or the request can never fit in the KV cache / limits."""


class DeadlineExceeded(RagloomError):
    """The request's deadline passed before the work finished; the work was stopped."""


class CompileTimeout(DeadlineExceeded):
    """Compiling a constraint took longer than the configured limit (constraint_timeout_s); the
    compiler stopped. Not an InvalidArgument: the same constraint may compile under a longer limit."""


class Unavailable(RagloomError):
    """The server is draining or the engine is not running; the caller may retry."""


class FailedPrecondition(RagloomError):
    """The system is not in a state to do this (e.g. a collection's embedder differs)."""


class Cancelled(RagloomError):
    """The caller cancelled the work."""


class Unimplemented(RagloomError):
    """The request asks for a feature this server does not provide (yet)."""


class ModelError(RagloomError):
    """A model could not be found, converted or loaded (missing path, unsupported architecture)."""
