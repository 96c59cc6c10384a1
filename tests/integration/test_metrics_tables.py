"""Metrics of a server without a model (#21): Search latency, ExecuteSql requests by status and
SQL refusals by rule, scraped over HTTP; and the configurable Search k bound."""

from __future__ import annotations

import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from background_loop import BackgroundLoop
from prometheus_client.parser import text_string_to_metric_families

from ragloom.client import Client
from ragloom.config import Settings
from ragloom.errors import ForbiddenQuery, InvalidArgument
from ragloom.retrieval.collections import CollectionManager
from ragloom.services.server import RagloomServer, start_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RagloomServer, Path]]:
    tmp = tmp_path_factory.mktemp("metrics")
    bg = BackgroundLoop()
    manager = CollectionManager(tmp / "collections")
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp / "server",
                        metrics_port=0, search_max_k=5)
    server = bg.run(start_server(settings, None, collections=manager))
    try:
        yield server, tmp / "server"
    finally:
        bg.run(server.stop(0))
        manager.close()
        bg.close()


def _samples(server: RagloomServer) -> list[Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _samples_once_counted(server: RagloomServer, **last_call: str) -> list[Any]:
    """The samples once the last call (its labels) is counted: the interceptor counts a call when
    its handler has finished, which can be just after the client already has the call's status."""
    deadline = time.monotonic() + 10
    while True:
        samples = _samples(server)
        if _value(samples, "ragloom_requests_total", **last_call) >= 1 or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_sql_requests_and_refusals(served: tuple[RagloomServer, Path]) -> None:
    server, data = served
    data.mkdir(parents=True, exist_ok=True)
    db = data / "shop.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO items (name) VALUES ('a'), ('b')")
    with Client(server.address, timeout=60) as client:
        client.register_connector("shop", f"sqlite:///{db}")
        assert client.execute_sql("shop", "SELECT count(*) FROM items").rows == [[2]]
        with pytest.raises(ForbiddenQuery):
            client.execute_sql("shop", "DELETE FROM items")
        with pytest.raises(InvalidArgument) as info:
            client.execute_sql("shop", "SELECT 1", max_rows=100_001)  # over the default sql_max_rows
        assert info.value.field == "max_rows"
    service = "ragloom.v1.TablesService"
    samples = _samples_once_counted(server, service=service, method="ExecuteSql", code="INVALID_ARGUMENT")
    assert _value(samples, "ragloom_requests_total", service=service, method="ExecuteSql", code="OK") == 1
    assert _value(samples, "ragloom_requests_total", service=service, method="ExecuteSql", code="PERMISSION_DENIED") == 1
    assert _value(samples, "ragloom_requests_total", service=service, method="ExecuteSql", code="INVALID_ARGUMENT") == 1
    assert _value(samples, "ragloom_requests_total", service=service, method="RegisterConnector", code="OK") == 1
    assert _value(samples, "ragloom_sql_refusals_total", rule="statement") == 1


def test_search_latency_and_k_bound(served: tuple[RagloomServer, Path]) -> None:
    server, _ = served
    with Client(server.address, timeout=120) as client:
        client.create_collection("notes")
        client.upsert("notes", [{"id": "1", "text": "Paris is the capital of France."},
                                {"id": "2", "text": "Rome is the capital of Italy."}])
        hits = client.search("notes", "capital of France", k=2)
        assert hits and hits[0].id == "1"
        with pytest.raises(InvalidArgument) as info:
            client.search("notes", "capital", k=6)  # search_max_k=5
        assert info.value.field == "k"
    samples = _samples_once_counted(server, service="ragloom.v1.RetrievalService", method="Search",
                                    code="INVALID_ARGUMENT")
    assert _value(samples, "ragloom_search_duration_seconds_count") == 1
    assert _value(samples, "ragloom_requests_total", service="ragloom.v1.RetrievalService", method="Search",
                  code="INVALID_ARGUMENT") == 1
