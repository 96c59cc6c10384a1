"""The connector sandbox over gRPC, and the guard's file and server functions on real databases.

A server (Tables needs no model) with one connector root and the default hosts (loopback):
RegisterConnector outside them gets PERMISSION_DENIED with reason CONNECTOR_NOT_ALLOWED naming
the rule; a registration saved before the sandbox narrowed stays listed and is refused on use.
Then every file-reading, file-writing and other-server function or statement is refused by the
guard on real SQLite, PostgreSQL and MariaDB, and the data is unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from background_loop import BackgroundLoop
from sql_databases import PG_URL, ShopDb, any_database

from ragloom.client import Client, _error
from ragloom.config import Settings
from ragloom.connectors.registry import ConnectorRegistry
from ragloom.connectors.sandbox import ConnectorSandbox
from ragloom.connectors.sql import SqlConnector
from ragloom.errors import ForbiddenQuery, PermissionDenied, SqlError
from ragloom.retrieval.collections import CollectionManager
from ragloom.services._proto import tables_pb2 as pb
from ragloom.services._proto import tables_pb2_grpc as pb_grpc
from ragloom.services.server import RagloomServer, start_server


@dataclass
class Served:
    server: RagloomServer
    allowed: Path  # the one connector root
    outside: Path  # beside it, not a root


def _shop(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO orders VALUES (1, 9.5)")
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("sandbox")
    allowed, outside, data = tmp / "allowed", tmp / "outside", tmp / "server"
    for folder in (allowed, outside, data):
        folder.mkdir()
    _shop(allowed / "shop.db")
    _shop(outside / "shop.db")
    (allowed / "escape.db").symlink_to(outside / "shop.db")
    # saved by an earlier, unsandboxed server: now outside the roots
    earlier = ConnectorRegistry(data / "connectors.json")
    earlier.register("old_outside", f"sqlite:///{outside / 'shop.db'}")
    earlier.close()
    bg = BackgroundLoop()
    manager = CollectionManager(tmp / "collections")
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=data, connector_roots=[allowed])
    server = bg.run(start_server(settings, None, collections=manager))
    try:
        yield Served(server, allowed, outside)
    finally:
        bg.run(server.stop(0))
        manager.close()
        bg.close()


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("/etc/passwd", "connector_roots"),
        ("sqlite:////etc/passwd", "connector_roots"),
        ("{allowed}/../outside/shop.db", "connector_roots"),
        ("{allowed}/escape.db", "connector_roots"),  # a symlink inside the root, pointing out
        ("postgresql://postgres@db.example.com:5432/test", "connector_hosts"),
        ("mysql://root@169.254.169.254/test", "connector_hosts"),
        ("postgresql://postgres@127.0.0.1:5432/test?host=db.example.com", "connector_url_options"),
    ],
)
def test_register_outside_the_sandbox_is_permission_denied(served: Served, url: str, rule: str) -> None:
    with grpc.insecure_channel(served.server.address) as channel:
        stub = pb_grpc.TablesServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterConnector(pb.RegisterConnectorRequest(name="evil", url=url.format(allowed=served.allowed)),
                                   timeout=60)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    err = _error(info.value)
    assert err.reason == "CONNECTOR_NOT_ALLOWED" and err.metadata["rule"] == rule
    flag = "--connector-root" if rule == "connector_roots" else "--connector-host"
    assert flag in (info.value.details() or "") or rule == "connector_url_options"


def test_sdk_raises_permission_denied_and_allowed_ones_register(served: Served) -> None:
    with Client(served.server.address, timeout=60) as c:
        with pytest.raises(PermissionDenied) as info:
            c.register_connector("evil", "/etc/passwd")
        assert "outside the connector roots" in str(info.value) and info.value.code == "PERMISSION_DENIED"
        assert c.register_connector("inside", str(served.allowed / "shop.db")).tables == 1
        assert c.execute_sql("inside", "SELECT total FROM orders").rows == [[9.5]]
        # the default hosts are loopback: the local PostgreSQL is allowed
        assert c.register_connector("local_pg", PG_URL.replace("+psycopg", "")).dialect == "postgres"
        c.remove_connector("local_pg")
        assert "evil" not in {i.name for i in c.list_connectors()}


def test_earlier_registration_is_listed_but_refused(served: Served) -> None:
    with Client(served.server.address, timeout=60) as c:
        assert "old_outside" in {i.name for i in c.list_connectors()}
        with pytest.raises(PermissionDenied) as info:
            c.execute_sql("old_outside", "SELECT total FROM orders")
        assert info.value.reason == "CONNECTOR_NOT_ALLOWED"
        with pytest.raises(PermissionDenied):
            c.describe_schema("old_outside")


def test_a_host_list_without_loopback_refuses_the_local_database() -> None:
    registry = ConnectorRegistry(None, ConnectorSandbox([], ["db.example.com"]))
    with pytest.raises(PermissionDenied, match="127.0.0.1:5432 is not among the allowed connector hosts"):
        registry.register("pg", PG_URL)


# ---- file and server functions on the real databases: the guard refuses every one ----

FILE_ACCESS = [
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_read_binary_file('/etc/passwd')",
    "SELECT pg_stat_file('/etc/passwd')",
    "SELECT * FROM pg_ls_dir('/')",
    "SELECT pg_ls_dir('.')",
    "SELECT lo_import('/etc/passwd')",
    "COPY customers FROM '/etc/passwd'",
    "COPY (SELECT 1) TO PROGRAM 'id'",
    "SELECT * FROM dblink('host=db.example.com', 'SELECT 1') AS t(x int)",
    "SELECT load_file('/etc/passwd')",
    "SELECT name FROM customers UNION SELECT LOAD_FILE('/etc/shadow')",
    "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE customers",
    "SELECT name FROM customers INTO OUTFILE '/tmp/ragloom_sandbox_out.txt'",
    "ATTACH DATABASE '/etc/passwd' AS p",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT readfile('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('/etc/*')",
    "SELECT 1 -- '\n, " + "date(" * 24 + "1" + ")" * 24,  # the nesting bypass, on each dialect
]


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopDb]:
    with any_database(request.param, tmp_path_factory.mktemp("sandbox-db")) as database:
        database.baseline = database.fingerprint()
        yield database


def test_file_and_server_functions_are_refused_on_real_databases(db: ShopDb) -> None:
    connector = SqlConnector("shop", db.url)
    try:
        for sql in FILE_ACCESS:
            with pytest.raises((ForbiddenQuery, SqlError)) as info:
                connector.execute(sql)
            assert len(str(info.value)) > 15, sql
        assert connector.execute("SELECT count(*) FROM customers").rows[0][0] == 4  # still serving
    finally:
        connector.close()
    assert db.fingerprint() == db.baseline
    assert not Path("/tmp/ragloom_sandbox_out.txt").exists()
