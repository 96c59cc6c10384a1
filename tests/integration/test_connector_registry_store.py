"""The connector registry in a shared PostgreSQL store: replicas see one set of registrations.

Each test gets a schema of its own on the machine's PostgreSQL. Two "replicas" are two
ConnectorRegistry objects, each over its own Store (its own engine and pool, as two processes
would have) on that schema. The connector targets are SQLite files and, for a URL that carries
a password, the same PostgreSQL (its test user authenticates by trust, so any password connects).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sql_databases import PG_URL, ShopDb, postgres_database, reachable, sqlite_database
from sqlalchemy.engine import make_url

from ragloom.connectors.registry import ConnectorRegistry
from ragloom.connectors.registry_store import (
    SqlRegistryBackend,
    fernet_key,
    holds_password,
    open_shared_registry,
)
from ragloom.connectors.sandbox import ConnectorSandbox
from ragloom.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from ragloom.retrieval.store import Store

KEY = "a passphrase only the replicas know"
SECRET = "s3cr3t-pw-7f1d"  # the password in connector URLs: must never be stored in clear


@pytest.fixture
def schema() -> Iterator[str]:
    admin = reachable(PG_URL)
    name = f"ragloom_reg_{uuid.uuid4().hex[:12]}"
    with admin.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield name
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture
def stores(schema: str) -> Iterator[list[Store]]:
    """Open stores on the schema, one per replica; `stores.append(...)` is closed too."""
    opened: list[Store] = []
    yield opened
    for store in opened:
        store.close()


def _replica(stores: list[Store], schema: str, key: str | None = KEY,
             sandbox: ConnectorSandbox | None = None) -> ConnectorRegistry:
    store = Store(PG_URL, schema=schema)
    stores.append(store)
    return ConnectorRegistry(sandbox=sandbox, backend=SqlRegistryBackend(store, key))


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[ShopDb]:
    with sqlite_database(tmp_path) as db:
        yield db


def _sqlite_file(folder: Path, rows: int) -> str:
    """A SQLite database whose table t has `rows` rows: tells two targets apart."""
    path = folder / f"t{rows}_{uuid.uuid4().hex[:6]}.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    c.close()
    return f"sqlite:///{path}"


def _raw_rows(schema: str) -> list[dict[str, Any]]:
    """The registry table as stored, read past the registry."""
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.text(f'SELECT * FROM "{schema}".ragloom_connectors'))]
    finally:
        engine.dispose()


def _pg_url_with_password(db: ShopDb) -> str:
    return make_url(db.url).set(password=SECRET).render_as_string(hide_password=False)


# ---- replicas share one registry --------------------------------------------------------------


def test_a_registration_on_one_replica_is_used_on_the_other(stores: list[Store], schema: str, shop: ShopDb) -> None:
    a, b = _replica(stores, schema), _replica(stores, schema)
    try:
        a.register("shop", shop.url)
        assert b.get("shop").execute("SELECT count(*) FROM orders").rows == [(5,)]
        assert [(i.name, i.dialect, i.url) for i in b.list()] == [("shop", "sqlite", shop.url)]
        a.add_example("shop", "How many orders?", "SELECT count(*) FROM orders")
        b.add_example("shop", "How many customers?", "SELECT count(*) FROM customers")
        assert [e["question"] for e in a.examples("shop")] == ["How many orders?", "How many customers?"]
        assert [i.examples for i in a.list()] == [2]
        with pytest.raises(AlreadyExists) as exc:
            b.register("shop", shop.url)
        assert exc.value.reason == "CONNECTOR_EXISTS"
    finally:
        a.close()
        b.close()


def test_replace_on_one_replica_reopens_on_the_other(stores: list[Store], schema: str, tmp_path: Path) -> None:
    first, second = _sqlite_file(tmp_path, 1), _sqlite_file(tmp_path, 2)
    a, b = _replica(stores, schema), _replica(stores, schema)
    try:
        a.register("t", first)
        a.add_example("t", "How many?", "SELECT count(*) FROM t")
        before = b.get("t")
        assert before.execute("SELECT count(*) FROM t").rows == [(1,)]
        assert b.get("t") is before  # unchanged registration: the open connector is reused
        a.register("t", second, replace=True)
        after = b.get("t")
        assert after is not before and after.execute("SELECT count(*) FROM t").rows == [(2,)]
        assert b.examples("t") == [{"question": "How many?", "sql": "SELECT count(*) FROM t"}]  # kept
    finally:
        a.close()
        b.close()


def test_a_removal_on_one_replica_is_not_found_on_the_other(stores: list[Store], schema: str, shop: ShopDb) -> None:
    a, b = _replica(stores, schema), _replica(stores, schema)
    try:
        a.register("shop", shop.url)
        a.add_example("shop", "How many orders?", "SELECT count(*) FROM orders")
        b.get("shop")  # open on b
        a.remove("shop")
        for call in (lambda: b.get("shop"), lambda: b.examples("shop"), lambda: b.remove("shop"),
                     lambda: b.add_example("shop", "q", "SELECT 1")):
            with pytest.raises(NotFound) as exc:
                call()
            assert exc.value.reason == "CONNECTOR_NOT_FOUND"
        assert b.list() == [] and a.list() == []
        b.register("shop", shop.url)  # the name is free again, without the old examples
        assert a.examples("shop") == []
    finally:
        a.close()
        b.close()


def test_concurrent_registrations_of_different_names_all_land(stores: list[Store], schema: str,
                                                              tmp_path: Path) -> None:
    a, b = _replica(stores, schema), _replica(stores, schema)
    urls = [_sqlite_file(tmp_path, i) for i in range(16)]
    start = threading.Barrier(8)

    def register(i: int) -> None:
        if i < 8:
            start.wait(30)
        (a if i % 2 else b).register(f"c{i:02d}", urls[i])

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, range(16)))
        names = [f"c{i:02d}" for i in range(16)]
        assert [i.name for i in a.list()] == names == [i.name for i in b.list()]
        assert all(b.get(f"c{i:02d}").execute("SELECT count(*) FROM t").rows == [(i,)] for i in range(16))
    finally:
        a.close()
        b.close()


def test_concurrent_registrations_of_one_name_one_wins(stores: list[Store], schema: str, tmp_path: Path) -> None:
    a, b = _replica(stores, schema), _replica(stores, schema)
    urls = [_sqlite_file(tmp_path, i + 1) for i in range(6)]
    start = threading.Barrier(6)

    def register(i: int) -> Exception | None:
        start.wait(30)
        try:
            (a if i % 2 else b).register("same", urls[i])
        except AlreadyExists as exc:
            return exc
        return None

    try:
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(register, range(6)))
        winners = [i for i, o in enumerate(outcomes) if o is None]
        assert len(winners) == 1
        assert all(isinstance(o, AlreadyExists) and o.reason == "CONNECTOR_EXISTS"
                   for o in outcomes if o is not None)
        want = [(winners[0] + 1,)]  # the winner's URL is the one stored, on both replicas
        assert a.get("same").execute("SELECT count(*) FROM t").rows == want
        assert b.get("same").execute("SELECT count(*) FROM t").rows == want
    finally:
        a.close()
        b.close()


def test_the_store_decides_a_race_for_one_name(stores: list[Store], schema: str) -> None:
    """Past the registries' early check: concurrent inserts of one name, one lands."""
    backends = [SqlRegistryBackend(s, KEY) for s in (Store(PG_URL, schema=schema), Store(PG_URL, schema=schema))]
    stores.extend(b.store for b in backends)
    start = threading.Barrier(8)

    def put(i: int) -> bool:
        start.wait(30)
        return backends[i % 2].put("same", f"sqlite:////nowhere/{i}.db", replace=False)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(put, range(8)))
    assert results.count(True) == 1
    stored = backends[0].entry("same")
    assert stored is not None and stored.url == f"sqlite:////nowhere/{results.index(True)}.db"
    # replace from both at once: every call succeeds, one URL is left, examples untouched
    assert backends[1].append_example("same", "q", "SELECT 1")
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda i: backends[i % 2].put("same", f"sqlite:////r/{i}.db", replace=True), range(8)))
    assert backends[0].examples("same") == [{"question": "q", "sql": "SELECT 1"}]
    assert len(_raw_rows(schema)) == 1


def test_concurrent_examples_all_land(stores: list[Store], schema: str, shop: ShopDb) -> None:
    a, b = _replica(stores, schema), _replica(stores, schema)
    try:
        a.register("shop", shop.url)
        questions = [f"Question {i}?" for i in range(24)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: (a if i % 2 else b).add_example("shop", questions[i], f"SELECT {i}"), range(24)))
        stored = b.examples("shop")
        assert sorted(e["question"] for e in stored) == sorted(questions)
        assert all(e["sql"] == f"SELECT {questions.index(e['question'])}" for e in stored)
        assert [i.examples for i in a.list()] == [24]
    finally:
        a.close()
        b.close()


def test_a_sandbox_refusal_is_per_replica(stores: list[Store], schema: str, tmp_path: Path) -> None:
    """Registered on a replica whose roots allow the file, refused (not lost) on one whose do not."""
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    url = _sqlite_file(outside, 3)
    a = _replica(stores, schema, sandbox=ConnectorSandbox([tmp_path]))
    b = _replica(stores, schema, sandbox=ConnectorSandbox([inside]))
    try:
        a.register("out", url)
        assert set(b.refused()) == {"out"}
        with pytest.raises(PermissionDenied, match="outside the connector roots"):
            b.get("out")
        assert [i.name for i in b.list()] == ["out"]
    finally:
        a.close()
        b.close()


# ---- URLs encrypted at rest ---------------------------------------------------------------------


def test_passwords_are_stored_encrypted(stores: list[Store], schema: str, shop: ShopDb) -> None:
    with postgres_database() as pg:
        url = _pg_url_with_password(pg)
        a, b = _replica(stores, schema), _replica(stores, schema)
        try:
            a.register("pg", url)
            a.register("shop", shop.url)
            rows = {r["name"]: r for r in _raw_rows(schema)}
            assert set(rows) == {"pg", "shop"}
            for row in rows.values():
                assert row["url_format"] == "fernet"
                assert SECRET not in " ".join(str(v) for v in row.values())
            assert shop.url not in rows["shop"]["url_cipher"]  # every URL is encrypted, paths too
            assert "***" in rows["pg"]["url_shown"]
            assert b.get("pg").execute("SELECT count(*) FROM orders").rows == [(5,)]
            [info] = [i for i in b.list() if i.name == "pg"]
            assert SECRET not in info.url and "***" in info.url and info.dialect == "postgres"
        finally:
            a.close()
            b.close()


def test_without_a_key_a_password_is_refused_and_the_rest_stored_plain(
    stores: list[Store], schema: str, shop: ShopDb
) -> None:
    with postgres_database() as pg:
        registry = _replica(stores, schema, key=None)
        try:
            with pytest.raises(FailedPrecondition, match="RAGLOOM_SECRET_KEY") as exc:
                registry.register("pg", _pg_url_with_password(pg))
            assert exc.value.metadata == {"connector": "pg"}
            assert registry.list() == []
            registry.register("pg", pg.url)  # no password: nothing to protect
            registry.register("shop", shop.url)
            assert {r["name"]: r["url_format"] for r in _raw_rows(schema)} == {"pg": "plain", "shop": "plain"}
            assert registry.get("pg").execute("SELECT count(*) FROM customers").rows == [(4,)]
            with pytest.raises(FailedPrecondition):
                registry.register("pg", _pg_url_with_password(pg), replace=True)
        finally:
            registry.close()

        # a key set later: the plain rows are encrypted when a replica with the key starts
        keyed = _replica(stores, schema)
        try:
            assert {r["url_format"] for r in _raw_rows(schema)} == {"fernet"}
            assert keyed.get("shop").execute("SELECT count(*) FROM orders").rows == [(5,)]
        finally:
            keyed.close()


def test_a_wrong_key_fails_that_connector_only(stores: list[Store], schema: str, shop: ShopDb,
                                               tmp_path: Path) -> None:
    a = _replica(stores, schema)
    a.register("shop", shop.url)
    a.add_example("shop", "How many orders?", "SELECT count(*) FROM orders")
    other = _replica(stores, schema, key="not the same passphrase")
    keyless = _replica(stores, schema, key=None)
    try:
        with pytest.raises(FailedPrecondition, match="another secret key") as exc:
            other.get("shop")
        assert exc.value.reason == "FAILED_PRECONDITION" and exc.value.metadata == {"connector": "shop"}
        with pytest.raises(FailedPrecondition, match="no RAGLOOM_SECRET_KEY"):
            keyless.get("shop")
        # the rest of the registry works: listing (URL as stored, masked), examples, other connectors
        assert [(i.name, i.url, i.examples) for i in other.list()] == [("shop", shop.url, 1)]
        assert len(other.examples("shop")) == 1
        other.register("own", _sqlite_file(tmp_path, 2))
        assert other.get("own").execute("SELECT count(*) FROM t").rows == [(2,)]
        with pytest.raises(FailedPrecondition):
            other.add_example("shop", "q", "SELECT 1")
        # replacing it under the other key fixes it there (and breaks it for the first key)
        other.register("shop", shop.url, replace=True)
        assert other.get("shop").execute("SELECT count(*) FROM orders").rows == [(5,)]
        assert len(other.examples("shop")) == 1
        with pytest.raises(FailedPrecondition, match="another secret key"):
            a.get("shop")
    finally:
        for r in (a, other, keyless):
            r.close()


def test_fernet_keys_and_passphrases() -> None:
    key = Fernet.generate_key()
    assert fernet_key(key.decode()) == key  # a Fernet key is used as is
    assert fernet_key(key.decode() + "\n") == key
    derived = base64.urlsafe_b64encode(hashlib.sha256(b"correct horse").digest())
    assert fernet_key("correct horse") == derived == fernet_key("  correct horse\n")
    Fernet(derived)  # a valid key
    with pytest.raises(InvalidArgument):
        fernet_key("  ")
    assert holds_password("postgresql://u:pw@h/db") and holds_password("mysql://h/db?password=x")
    assert not holds_password("postgresql://u@h/db") and not holds_password("/data/shop.db")
    assert not holds_password("sqlite:////data/shop.db")


def test_the_key_comes_from_the_environment_or_the_config_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from ragloom.config import load_settings

    monkeypatch.delenv("RAGLOOM_SECRET_KEY", raising=False)
    config = tmp_path / "ragloom.toml"
    config.write_text('secret_key = "from the file"\n')
    assert load_settings().secret_key is None
    settings = load_settings(config)
    assert settings.secret_key is not None and settings.secret_key.get_secret_value() == "from the file"
    assert "from the file" not in repr(settings)  # a SecretStr: never printed or logged
    monkeypatch.setenv("RAGLOOM_SECRET_KEY", "from the environment")
    assert load_settings(config).secret_key.get_secret_value() == "from the environment"  # type: ignore[union-attr]


def test_replicas_with_the_same_fernet_key_or_passphrase_share(stores: list[Store], schema: str,
                                                               shop: ShopDb) -> None:
    key = Fernet.generate_key().decode()
    a, b = _replica(stores, schema, key=key), _replica(stores, schema, key=key + "\n")
    c = _replica(stores, schema, key="passphrase")
    try:
        a.register("shop", shop.url)
        assert b.get("shop").execute("SELECT count(*) FROM orders").rows == [(5,)]
        with pytest.raises(FailedPrecondition):
            c.get("shop")
        c.register("shop", shop.url, replace=True)
        assert _replica(stores, schema, key="passphrase").get("shop").execute(
            "SELECT count(*) FROM customers").rows == [(4,)]
    finally:
        for r in (a, b, c):
            r.close()


# ---- a single server's connectors.json, imported once -------------------------------------------


def test_the_json_file_is_imported_once(stores: list[Store], schema: str, shop: ShopDb, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    path = data / "connectors.json"
    with postgres_database() as pg:
        single = ConnectorRegistry(path)
        single.register("shop", shop.url)
        single.register("pg", _pg_url_with_password(pg))
        single.add_example("shop", "How many orders?", "SELECT count(*) FROM orders")
        single.close()
        text = path.read_text()

        store = Store(PG_URL, schema=schema)
        stores.append(store)
        # a password and no key: refused, nothing imported, the file left as it was
        with pytest.raises(FailedPrecondition, match="RAGLOOM_SECRET_KEY"):
            open_shared_registry(store, None, None, legacy_file=path)
        assert path.read_text() == text and _raw_rows(schema) == []

        caplog.set_level(logging.INFO, logger="ragloom.connectors.registry_store")
        registry = open_shared_registry(store, None, KEY, legacy_file=path)
        try:
            assert any("imported 2 connector(s)" in r.getMessage() for r in caplog.records)
            assert not path.exists() and (data / "connectors.json.imported").read_text() == text
            assert [(i.name, i.examples) for i in registry.list()] == [("pg", 0), ("shop", 1)]
            assert registry.examples("shop") == [{"question": "How many orders?", "sql": "SELECT count(*) FROM orders"}]
            assert registry.get("pg").execute("SELECT count(*) FROM orders").rows == [(5,)]
            assert all(SECRET not in str(r) for r in _raw_rows(schema))
        finally:
            registry.close()

        # a connectors.json appearing later (another replica's data dir) is not merged in
        again = ConnectorRegistry(path)
        again.register("late", shop.url)
        again.close()
        caplog.clear()
        registry = open_shared_registry(store, None, KEY, legacy_file=path)
        try:
            assert path.exists() and [i.name for i in registry.list()] == ["pg", "shop"]
            assert any("not imported" in r.getMessage() for r in caplog.records)
        finally:
            registry.close()


def test_a_sqlite_store_serves_the_backend_too(tmp_path: Path, shop: ShopDb) -> None:
    """store_url may name SQLite as well (one machine, several processes)."""
    store = Store(f"sqlite:///{tmp_path / 'shared.db'}")
    try:
        a = ConnectorRegistry(backend=SqlRegistryBackend(store, KEY))
        a.register("shop", shop.url)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: a.add_example("shop", f"Q{i}?", f"SELECT {i}"), range(12)))
        b = ConnectorRegistry(backend=SqlRegistryBackend(store, KEY))
        assert b.get("shop").execute("SELECT count(*) FROM orders").rows == [(5,)]
        assert len(b.examples("shop")) == 12
        b.remove("shop")
        with pytest.raises(NotFound):
            a.get("shop")
        a.close()
        b.close()
    finally:
        store.close()


# ---- end to end: two servers, one store ---------------------------------------------------------


def test_two_servers_share_connectors_over_grpc(schema: str, tmp_path: Path, shop: ShopDb) -> None:
    from background_loop import BackgroundLoop

    from ragloom.client import Client
    from ragloom.config import Settings
    from ragloom.retrieval.collections import CollectionManager
    from ragloom.services.server import start_server

    bg = BackgroundLoop()
    servers: list[Any] = []
    managers: list[CollectionManager] = []
    try:
        for replica in ("a", "b"):
            manager = CollectionManager(tmp_path / replica / "collections", store_url=PG_URL, store_schema=schema)
            managers.append(manager)
            settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=0, data_dir=tmp_path / replica / "data",
                                store_url=PG_URL, secret_key=KEY, connector_roots=[tmp_path])
            servers.append(bg.run(start_server(settings, None, collections=manager)))
        a_addr, b_addr = (s.address for s in servers)
        with postgres_database() as pg, Client(a_addr, timeout=60) as a, Client(b_addr, timeout=60) as b:
            a.register_connector("shop", shop.url)
            a.register_connector("pg", _pg_url_with_password(pg))
            assert a.add_sql_example("shop", "How many orders?", "SELECT count(*) FROM orders") == 1
            assert b.execute_sql("shop", "SELECT count(*) FROM orders").rows == [[5]]
            assert b.execute_sql("pg", "SELECT count(*) FROM customers").rows == [[4]]
            listed = {c.name: c for c in b.list_connectors()}
            assert set(listed) == {"pg", "shop"} and listed["shop"].examples == 1
            assert SECRET not in listed["pg"].url and listed["pg"].tables == 2
            assert all(SECRET not in str(r) for r in _raw_rows(schema))

            b.remove_connector("shop")
            with pytest.raises(NotFound) as exc:
                a.execute_sql("shop", "SELECT 1")
            assert exc.value.reason == "CONNECTOR_NOT_FOUND"
            assert [c.name for c in a.list_connectors()] == ["pg"]
            a.remove_connector("pg")
    finally:
        for server in servers:
            bg.run(server.stop(0))
        for manager in managers:
            manager.close()
        bg.close()

