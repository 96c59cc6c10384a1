"""The channel side both clients share: address, default timeout, one stub per service."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from ragloom.client.calls import Call
from ragloom.client.requests import UPSERT_BATCH_BYTES

DEFAULT_ADDRESS = os.environ.get("RAGLOOM_ADDRESS", "127.0.0.1:50051")  # the SDK's and the CLI's default server
# matches Settings.max_message_bytes' default, so whatever the server may send is accepted
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_Stub = TypeVar("_Stub")


class ClientBase:
    """The channel, one stub per service on it, and the client's default timeout. Subclasses
    open the channel (blocking or asyncio) and say how API methods run on it (drivers.py)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address
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
        return getattr(self._stub(call.stub), call.method), self._timeout(call.timeout)
