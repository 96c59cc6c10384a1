"""A replica reports NOT_SERVING until its collections' indexes have caught up with the store
(#22): a load balancer's health check keeps traffic away while a restarted replica rebuilds."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import grpc
import pytest
from background_loop import BackgroundLoop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragloom.config import Settings
from ragloom.retrieval.collections import CollectionManager, Document
from ragloom.retrieval.embed import Embedder
from ragloom.services.server import RagloomServer, build_server


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_not_serving_until_indexes_caught_up(tmp_path: Path, embedder: Embedder) -> None:
    manager = CollectionManager(tmp_path / "collections", embedder=embedder)
    manager.create_collection("notes")
    manager.upsert("notes", [Document("ships", "Lighthouses guide ships at night."),
                             Document("bread", "Bread rises because yeast makes gas.")])
    manager.close()
    shutil.rmtree(tmp_path / "collections" / "indexes")  # a replica whose disk cache was lost

    manager = CollectionManager(tmp_path / "collections", embedder=embedder)
    warming, release = threading.Event(), threading.Event()
    real_warm = manager.warm

    def slow_warm() -> int:
        warming.set()
        assert release.wait(30)
        return real_warm()

    manager.warm = slow_warm  # type: ignore[method-assign]
    bg = BackgroundLoop()
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp_path / "server")

    async def build() -> RagloomServer:  # a grpc.aio server belongs to the loop it is made on
        return build_server(settings, None, collections=manager)

    server = bg.run(build())
    starting = asyncio.run_coroutine_threadsafe(server.start(), bg.loop)
    try:
        assert warming.wait(30)
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "ragloom.v1.RetrievalService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING, service
            release.set()
            starting.result(60)
            assert "notes" in manager._indexes  # rebuilt from the store before reporting ready
            for service in ("", "ragloom.v1.RetrievalService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                assert status == health_pb2.HealthCheckResponse.SERVING, service
        assert manager.search("notes", "what guides ships?", k=1)[0].id == "ships"
    finally:
        release.set()
        bg.run(server.server.stop(0))
        manager.close()
        bg.close()


@pytest.mark.parametrize("deleted", [False, True])
def test_warm_counts_collections(tmp_path: Path, deleted: bool, embedder: Embedder) -> None:
    with CollectionManager(tmp_path, embedder=embedder) as manager:
        assert manager.warm() == 0
        manager.create_collection("a")
        manager.create_collection("b")
        if deleted:
            manager.delete_collection("b")
        assert manager.warm() == (1 if deleted else 2)
