"""The channel side both clients share: address, default timeout, one stub per service."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ragloom.client.calls import Call
from ragloom.client.requests import UPSERT_BATCH_BYTES
from ragloom.errors import InvalidArgument

DEFAULT_ADDRESS = os.environ.get("RAGLOOM_ADDRESS", "127.0.0.1:50051")  # the SDK's and the CLI's default server
# matches Settings.max_message_bytes' default, so whatever the server may send is accepted
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_Stub = TypeVar("_Stub")


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the {what} {path}: {exc.strerror or exc}", field=what.replace(" ", "_")) from exc


def channel_credentials(
    tls: bool | None,
    root_certificates: str | Path | None,
    client_cert: str | Path | None,
    client_key: str | Path | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files (None: plaintext). Giving any of the files implies TLS;
    without root_certificates the system's trusted CAs verify the server."""
    if (client_cert is None) != (client_key is None):
        raise InvalidArgument("a client certificate needs both client_cert and client_key", field="client_cert")
    if tls is None:
        tls = any(p is not None for p in (root_certificates, client_cert, client_key))
    if not tls:
        if any(p is not None for p in (root_certificates, client_cert, client_key)):
            raise InvalidArgument("tls=False cannot be combined with certificate files", field="tls")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(root_certificates, "root certificates"),
        private_key=_read(client_key, "client key"),
        certificate_chain=_read(client_cert, "client cert"),
    )


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: `authorization: Bearer <key>` when there is a key."""
    if api_key is None:
        return ()
    key = api_key.strip()
    # metadata values are printable ASCII: a pasted newline or a non-ASCII key would fail every call
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        raise InvalidArgument("api_key must be non-empty printable ASCII without spaces", field="api_key")
    return (("authorization", f"Bearer {key}"),)


class ClientBase:
    """The channel, one stub per service on it, and the client's default timeout. Subclasses
    open the channel (blocking or asyncio) and say how API methods run on it (drivers.py)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: bool | None = None,
        root_certificates: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        api_key: str | None = None,
    ) -> None:
        """tls (implied by any of the certificate files): connect over TLS, verifying the server
        with root_certificates (a PEM CA bundle; default: the system's CAs), presenting
        client_cert/client_key (PEM) where the server asks for a client certificate (mTLS).
        api_key (default: $RAGLOOM_API_KEY) goes with every call as `authorization: Bearer`."""
        self.address = address
        self._credentials = channel_credentials(tls, root_certificates, client_cert, client_key)
        # call metadata rather than call credentials: those need a secure channel, and a key on a
        # plaintext loopback connection is a valid setup
        self._metadata = auth_metadata(api_key if api_key is not None else os.environ.get("RAGLOOM_API_KEY") or None)
        self.timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._stubs: dict[type, Any] = {}
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._channel: Any = self._open_channel(address, options)  # grpc.Channel or grpc.aio.Channel

    def _open_channel(self, address: str, options: list[tuple[str, Any]]) -> Any:
        raise NotImplementedError

    def _stub(self, cls: Callable[[Any], _Stub]) -> _Stub:
        """One stub per service on the shared channel, created on first use."""
        stub = self._stubs.get(cls)  # type: ignore[call-overload]
        if stub is None:
            stub = self._stubs[cls] = cls(self._channel)  # type: ignore[index]
        return stub

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    @property
    def _batch_bytes(self) -> int:
        return min(UPSERT_BATCH_BYTES, self._max_message_bytes // 2)

    def _start(self, call: Call) -> tuple[Any, float | None]:
        """The stub's method for `call`, and the timeout it runs under."""
        method = getattr(self._stub(call.stub), call.method)
        if self._metadata:  # every call of both clients starts here
            method = functools.partial(method, metadata=self._metadata)
        return method, self._timeout(call.timeout)
