"""Relative connector paths over a live server: the SDK and `ragloom connect` resolve them in the
caller's directory and register them absolute; a raw caller that sends a relative path the
server cannot find is told the server's working directory.

The server runs in this process (Tables needs no model), so the SDK test checks what was sent
and stored; the CLI test runs `ragloom connect` in another directory than the server's."""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from background_loop import BackgroundLoop

from ragloom.client import Client, _error
from ragloom.config import Settings
from ragloom.connectors.registry import ConnectorRegistry
from ragloom.retrieval.collections import CollectionManager
from ragloom.services._proto import tables_pb2 as pb
from ragloom.services._proto import tables_pb2_grpc as pb_grpc
from ragloom.services.server import RagloomServer, start_server


@dataclass
class Served:
    server: RagloomServer
    data_dir: Path  # the server's connectors.json lives here
    workdir: Path  # the caller's directory, holding shop.db and files/orders.csv

    @property
    def address(self) -> str:
        return self.server.address


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("connector_paths")
    workdir = tmp / "caller"
    (workdir / "files").mkdir(parents=True)
    with sqlite3.connect(workdir / "shop.db") as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, country TEXT, total REAL)")
        conn.execute("INSERT INTO orders VALUES (1, 'FR', 9.5)")
    with open(workdir / "files" / "orders.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "country"], [1, "FR"]])
    bg = BackgroundLoop()
    manager = CollectionManager(tmp / "collections")
    # the connector roots: the caller's directory, and this process's own (the default) for the
    # relative paths a raw caller sends
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp / "server",
                        connector_roots=[workdir, Path.cwd()])
    server = bg.run(start_server(settings, None, collections=manager))
    try:
        yield Served(server, tmp / "server", workdir)
    finally:
        bg.run(server.stop(0))
        bg.close()


def test_sdk_sends_relative_paths_absolute(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    shop = served.workdir / "shop.db"
    monkeypatch.chdir(served.workdir)
    with Client(served.address, timeout=60) as c:
        assert c.register_connector("rel_file", "./shop.db").url == str(shop)
        assert c.register_connector("rel_url", "sqlite:///shop.db").url == f"sqlite:///{shop}"
        assert c.register_connector("rel_folder", "files").url == str(served.workdir / "files")
        monkeypatch.chdir(served.data_dir)  # the registrations no longer depend on any directory
        stored = {i.name: i.url for i in c.list_connectors()}
        assert {stored[n] for n in ("rel_file", "rel_url", "rel_folder")} == {
            str(shop), f"sqlite:///{shop}", str(served.workdir / "files")
        }
        assert c.execute_sql("rel_url", "SELECT country FROM orders").rows == [["FR"]]
    # a restarted server reopens them from its own directory
    registry = ConnectorRegistry(served.data_dir / "connectors.json")
    try:
        assert [t.name for t in registry.get("rel_file").schema().tables] == ["orders"]
        assert [t.name for t in registry.get("rel_folder").schema().tables] == ["orders"]
    finally:
        registry.close()


def test_cli_connect_resolves_in_its_own_directory(served: Served) -> None:
    # this process (the server) runs elsewhere: ./shop.db exists only in the CLI's directory
    assert not Path("shop.db").exists() and Path.cwd() != served.workdir
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "ragloom.cli", "connect", "cli_rel", "./shop.db", "--address", served.address],
        cwd=served.workdir, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(served.workdir / "shop.db") in proc.stdout
    with Client(served.address, timeout=60) as c:
        assert c.execute_sql("cli_rel", "SELECT count(*) AS n FROM orders").rows == [[1]]


def test_raw_relative_path_error_names_the_servers_directory(served: Served) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.TablesServiceStub(channel)
        for url in ("./no_such_shop.db", "sqlite:///no_such_dir/shop.db"):
            with pytest.raises(grpc.RpcError) as err:
                stub.RegisterConnector(pb.RegisterConnectorRequest(name="raw", url=url), timeout=60)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, url
            details = err.value.details() or ""
            assert "server's working directory" in details and os.getcwd() in details, details
            assert _error(err.value).reason == "FILE_NOT_FOUND", url
