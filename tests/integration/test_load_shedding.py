"""Load shedding on the event loop's lateness (#21, --max-loop-lag-s): while the loop runs late,
ragloom.v1 calls are refused with RESOURCE_EXHAUSTED (OVERLOADED, with a retry delay) before any
handler runs; health checks pass; when the loop catches up, calls are served again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from background_loop import BackgroundLoop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragloom.client import Client
from ragloom.config import Settings
from ragloom.errors import ResourceExhausted
from ragloom.retrieval.collections import CollectionManager
from ragloom.services.limits import LoopLag
from ragloom.services.server import start_server


def test_loop_lag_measures_a_blocked_loop() -> None:
    async def scenario() -> tuple[float, float]:
        lag = LoopLag(interval_s=0.02)
        lag.start()
        await asyncio.sleep(0.1)
        idle = lag.lag_s
        time.sleep(0.3)  # a callback that holds the loop, as a saturated loop does
        for _ in range(3):  # the overdue timer runs first: the next sample, 20 ms on, is small again
            await asyncio.sleep(0)
        late = lag.lag_s
        lag.stop()
        return idle, late

    idle, late = asyncio.run(scenario())
    assert idle < 0.1 and late >= 0.25


def test_calls_are_shed_while_the_loop_is_late(tmp_path: Path) -> None:
    bg = BackgroundLoop()
    manager = CollectionManager(tmp_path / "collections")
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp_path / "server",
                        max_loop_lag_s=0.2)
    server = bg.run(start_server(settings, None, collections=manager))
    try:
        assert server.loop_lag is not None
        with Client(server.address, timeout=30) as client:
            assert client.list_collections() == []
            server.loop_lag.stop()  # hold the measurement at a late loop
            server.loop_lag.lag_s = 0.8
            with pytest.raises(ResourceExhausted) as info:
                client.list_collections()
            err = info.value
            assert err.reason == "OVERLOADED" and err.retry_after_s == pytest.approx(1.6)
            assert err.metadata["loop_lag_ms"] == "800" and "event loop runs 800 ms late" in str(err)
            with grpc.insecure_channel(server.address) as channel:  # health still answers
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            server.loop_lag.lag_s = 0.0  # caught up
            assert client.list_collections() == []
    finally:
        bg.run(server.stop(0))
        manager.close()
        bg.close()


def test_off_by_default(tmp_path: Path) -> None:
    assert Settings().max_loop_lag_s is None
