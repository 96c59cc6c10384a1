"""An event loop on a daemon thread, for integration tests that run a grpc.aio server beside
blocking SDK calls. Imported by the test modules in this folder (pytest puts it on sys.path)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class BackgroundLoop:
    """run(coro) blocks until the coroutine finishes on the background loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class LiveServer:
    """A grpc.aio ragloom server on a BackgroundLoop, with its engine (None: no model)."""

    bg: BackgroundLoop
    server: Any  # RagloomServer
    engine: Any = None  # AsyncEngine

    @property
    def address(self) -> str:
        return str(self.server.address)

    @property
    def llm(self) -> Any:  # LLMEngine
        return self.engine.engine


@contextmanager
def live_server(settings: Any, engine_settings: Any = None, *, model: bool = True, **services: Any) -> Iterator[LiveServer]:
    """Start `ragloom serve`'s server in-process on a free port: the bundled model's engine
    (built from engine_settings, default settings) unless model=False, and the given services
    (collections=..., chunk_store=...); stop everything on exit."""
    from ragloom.generation.runner.async_engine import AsyncEngine
    from ragloom.generation.runner.engine import LLMEngine
    from ragloom.services.server import start_server

    bg = BackgroundLoop()
    engine = None
    try:
        if model:
            engine = AsyncEngine(LLMEngine(engine_settings or settings))
            bg.run(engine.start())
        server = bg.run(start_server(settings, engine, **services))
        try:
            yield LiveServer(bg, server, engine)
        finally:
            bg.run(server.stop(0))
    finally:
        if engine is not None:
            bg.run(engine.shutdown())
        bg.close()
