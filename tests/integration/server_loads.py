"""Waiting for the server's engine to go idle, read from its own load report (GetLoads).

A stream's last message reaches the client before the engine has released that request's slot
and KV blocks, so reading the loads right after the last stream ends races the engine loop (it
read `running=4, kv_blocks_used=12` on a busy machine). Tests poll, bounded, for the server's
own signal instead. Imported by the test modules in this folder (pytest puts it on sys.path)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

POLL_S = 0.05


def _busy(loads: Any) -> bool:
    return bool(loads.kv_blocks_used or loads.running or loads.waiting)


def wait_idle(client: Any, timeout: float = 30.0) -> Any:
    """Poll a Client's loads until nothing runs, waits or holds KV blocks; return those loads.
    Fails the test, showing the last loads, when the engine is still busy after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    loads = client.loads()
    while _busy(loads):
        if time.monotonic() > deadline:
            pytest.fail(f"the engine did not go idle within {timeout:g}s: {loads}")
        time.sleep(POLL_S)
        loads = client.loads()
    return loads


async def wait_idle_async(client: Any, timeout: float = 30.0) -> Any:
    """wait_idle for an AsyncClient, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    loads = await client.loads()
    while _busy(loads):
        if time.monotonic() > deadline:
            pytest.fail(f"the engine did not go idle within {timeout:g}s: {loads}")
        await asyncio.sleep(POLL_S)
        loads = await client.loads()
    return loads
