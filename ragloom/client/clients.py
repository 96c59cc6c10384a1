"""The two clients: the API of api.py on a blocking grpc channel, and on an asyncio one."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from ragloom.client.api import Api
from ragloom.client.drivers import Asyncio, Blocking


class Client(Api, Blocking):
    """Blocking client. Thread-safe; reuse one per process."""

    def _open_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        if self._credentials is not None:
            return grpc.secure_channel(address, self._credentials, options=options)
        return grpc.insecure_channel(address, options=options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(Api, Asyncio):
    """asyncio client; create it inside the event loop that uses it."""

    def _open_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(address, self._credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
