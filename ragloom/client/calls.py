"""The RPCs an API method asks for, as plain values: each method is a generator that yields one
of these and is sent the response, so that one definition serves the blocking and the asyncio
client (see drivers.py), and what goes over the wire can be read without a channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from ragloom.client.results import StreamChunk
from ragloom.errors import RagloomError
from ragloom.services.status import DETAILS_KEY, error_from_status

R = TypeVar("R")


class State(Protocol):
    """Folds a server stream's messages into a result (see streams.py)."""

    @property
    def done(self) -> bool: ...

    def feed(self, msg: Any) -> StreamChunk | None: ...


class RequestSource(Protocol):
    """Turns items into a client stream's messages, as the blocking or the asyncio client needs them,
    and hears the server's messages (acknowledgements) as they come."""

    def requests(self, items: Any) -> Iterator[Any]: ...

    def arequests(self, items: Any) -> AsyncIterator[Any]: ...

    def attach(self, cancel: Callable[[], Any]) -> None:
        """Given the started call's cancel(), so that failing items cancel the call rather than end
        the stream (a stream that ends normally asks the server to commit what it got)."""

    def receive(self, msg: Any) -> None: ...


@dataclass(frozen=True)
class Call:
    stub: type  # the generated stub class, e.g. GenerationServiceStub
    method: str  # its method, e.g. "Generate"
    timeout: float | None  # None: the client's


@dataclass(frozen=True)
class Unary(Call):
    """One request, one response: the op is sent the response message."""

    request: Any


@dataclass(frozen=True)
class ServerStream(Call):
    """One request, a stream of responses folded into `state`; the op is sent None once the
    stream has ended (or the wrapping Stream is handed to the caller: see drivers.streaming)."""

    request: Any
    state: State


@dataclass(frozen=True)
class ClientStream(Call):
    """A stream of requests that `source` makes of `items`, and the server's stream of replies:
    each goes to source.receive() as it arrives; the op is sent the last one (None if none came)."""

    source: RequestSource
    items: Any


AnyCall = Unary | ServerStream | ClientStream
# an API method: yields the calls to make, is sent each response (or thrown its RagloomError),
# returns the method's result
Op = Generator[AnyCall, Any, R]


def _status_details(exc: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a ragloom server puts in the trailers of a failed call, if any."""
    trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None  # type: ignore[attr-defined]
    for key, value in trailing or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def _error(exc: grpc.RpcError) -> RagloomError:
    """The ragloom error for a failed call (with .code, .reason, .field, .metadata and
    .retry_after_s from the server's error details), with the RpcError as __cause__."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)  # type: ignore[attr-defined]
    err = error_from_status(code, details or code.name, _status_details(exc))
    err.__cause__ = exc
    return err
