"""Typed rows and the Tables contract over a live server, on real SQLite, PostgreSQL and MariaDB.

A table of awkward values (a BIGINT past 2**53, a BLOB, an exact NUMERIC, a naive and a zoned
timestamp, arrays and JSON, an unsigned BIGINT at its maximum, NULLs) is read through
ExecuteSql with the raw stub, to see the Cells a Go or Node client gets, and through the SDK, to
see the Python values. Also here: the header's column types and kinds, DescribeSchema's kinds,
samples and nullability, the proto's limits and defaults, request ids, usage, and the error
reasons a client can branch on. The server runs without a model (Tables' SQL side needs none).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from background_loop import BackgroundLoop
from sql_databases import ShopDb, any_database

from ragloom.client import Client
from ragloom.config import Settings
from ragloom.errors import (
    AlreadyExists,
    DeadlineExceeded,
    ForbiddenQuery,
    InvalidArgument,
    NotFound,
    RagloomError,
    Unavailable,
)
from ragloom.retrieval.collections import CollectionManager
from ragloom.services._proto import tables_pb2 as pb
from ragloom.services._proto import tables_pb2_grpc as pb_grpc
from ragloom.services.server import RagloomServer, start_server

BIG = 9007199254740993  # 2**53 + 1: a double would make it ...992
AMOUNT = "12345678901234567890.1234567891"  # 30 digits: no double holds it
HEAVY = "SELECT count(*) FROM " + ", ".join(f"orders o{i}" for i in range(14))  # 5**14 rows: never finishes

TYPED_DDL = {
    "sqlite": [
        "CREATE TABLE typed (id INTEGER PRIMARY KEY, big INTEGER, bin BLOB, amount NUMERIC(30, 10),"
        " stamp TIMESTAMP, note TEXT)",
        f"INSERT INTO typed VALUES (1, {BIG}, x'00ff', 12.5, '2024-05-01 13:45:00.5', 'x')",
        "INSERT INTO typed VALUES (2, NULL, NULL, NULL, NULL, NULL)",
    ],
    "postgres": [
        "CREATE TABLE {p}typed (id BIGINT PRIMARY KEY, big BIGINT, bin BYTEA, amount NUMERIC(30, 10),"
        " stamp TIMESTAMP, note TEXT, at_tz TIMESTAMPTZ, tags INTEGER[], doc JSONB)",
        f"INSERT INTO {{p}}typed VALUES (1, {BIG}, '\\x00ff', {AMOUNT}, '2024-05-01 13:45:00.5', 'x',"
        " '2024-05-01 13:45:00+02', '{1,2}', '{\"k\": [1, 2.50]}')",
        "INSERT INTO {p}typed (id) VALUES (2)",
    ],
    "mysql": [
        "CREATE TABLE typed (id BIGINT PRIMARY KEY, big BIGINT, bin BLOB, amount DECIMAL(30, 10),"
        " stamp DATETIME(6), note TEXT, ubig BIGINT UNSIGNED)",
        f"INSERT INTO typed VALUES (1, {BIG}, x'00ff', {AMOUNT}, '2024-05-01 13:45:00.5', 'x', 18446744073709551615)",
        "INSERT INTO typed (id) VALUES (2)",
    ],
}
# What row 1 is on the wire, per dialect: column -> (Cell field, value), and the header's type
# and kind of each column. SQLite has no decimal or datetime type: NUMERIC affinity stores 12.5 as
# a REAL, a timestamp is the text it was given, and its cursor reports no types.
_COMMON = {"id": ("int_value", 1), "big": ("int_value", BIG), "bin": ("bytes_value", b"\x00\xff"),
           "note": ("string_value", "x")}
WIRE: dict[str, dict[str, tuple[str, Any]]] = {
    "sqlite": {**_COMMON, "amount": ("double_value", 12.5), "stamp": ("string_value", "2024-05-01 13:45:00.5")},
    "postgres": {**_COMMON, "amount": ("decimal_value", AMOUNT), "stamp": ("datetime_value", "2024-05-01T13:45:00.500000"),
                 "at_tz": ("timestamp_value", (1714563900, 0)), "tags": ("json_value", "[1,2]"),
                 "doc": ("json_value", '{"k":[1,2.50]}')},
    "mysql": {**_COMMON, "amount": ("decimal_value", AMOUNT), "stamp": ("datetime_value", "2024-05-01T13:45:00.500000"),
              "ubig": ("decimal_value", "18446744073709551615")},
}
TYPES: dict[str, dict[str, tuple[str, int]]] = {
    "sqlite": {"id": ("", pb.CELL_KIND_INT), "big": ("", pb.CELL_KIND_INT), "bin": ("", pb.CELL_KIND_BYTES),
               "amount": ("", pb.CELL_KIND_DOUBLE), "stamp": ("", pb.CELL_KIND_STRING), "note": ("", pb.CELL_KIND_STRING)},
    "postgres": {"id": ("int8", pb.CELL_KIND_INT), "big": ("int8", pb.CELL_KIND_INT), "bin": ("bytea", pb.CELL_KIND_BYTES),
                 "amount": ("numeric(30,10)", pb.CELL_KIND_DECIMAL), "stamp": ("timestamp", pb.CELL_KIND_DATETIME),
                 "note": ("text", pb.CELL_KIND_STRING), "at_tz": ("timestamptz", pb.CELL_KIND_TIMESTAMP),
                 "tags": ("int4[]", pb.CELL_KIND_JSON), "doc": ("jsonb", pb.CELL_KIND_JSON)},
    "mysql": {"id": ("BIGINT", pb.CELL_KIND_INT), "big": ("BIGINT", pb.CELL_KIND_INT), "bin": ("BLOB", pb.CELL_KIND_BYTES),
              "amount": ("DECIMAL", pb.CELL_KIND_DECIMAL), "stamp": ("DATETIME", pb.CELL_KIND_DATETIME),
              "note": ("TEXT", pb.CELL_KIND_STRING), "ubig": ("BIGINT UNSIGNED", pb.CELL_KIND_DECIMAL)},
}
# DescribeSchema: the kind each declared type promises (SQLite's NUMERIC and TIMESTAMP: none)
DECLARED: dict[str, dict[str, int]] = {
    "sqlite": {"id": pb.CELL_KIND_INT, "big": pb.CELL_KIND_INT, "bin": pb.CELL_KIND_BYTES,
               "amount": pb.CELL_KIND_UNSPECIFIED, "stamp": pb.CELL_KIND_UNSPECIFIED, "note": pb.CELL_KIND_STRING},
    "postgres": {"id": pb.CELL_KIND_INT, "big": pb.CELL_KIND_INT, "bin": pb.CELL_KIND_BYTES, "amount": pb.CELL_KIND_DECIMAL,
                 "stamp": pb.CELL_KIND_DATETIME, "note": pb.CELL_KIND_STRING, "at_tz": pb.CELL_KIND_TIMESTAMP,
                 "tags": pb.CELL_KIND_JSON, "doc": pb.CELL_KIND_JSON},
    "mysql": {"id": pb.CELL_KIND_INT, "big": pb.CELL_KIND_INT, "bin": pb.CELL_KIND_BYTES, "amount": pb.CELL_KIND_DECIMAL,
              "stamp": pb.CELL_KIND_DATETIME, "note": pb.CELL_KIND_STRING, "ubig": pb.CELL_KIND_UNSPECIFIED},
}


@dataclass
class Served:
    bg: BackgroundLoop
    server: RagloomServer
    tmp: Path

    @property
    def address(self) -> str:
        return self.server.address


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("cells")
    bg = BackgroundLoop()
    manager = CollectionManager(tmp / "collections")
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp / "server",
                        connector_roots=[tmp_path_factory.getbasetemp()])  # `typed` makes its SQLite file elsewhere
    server = bg.run(start_server(settings, None, collections=manager))
    try:
        yield Served(bg, server, tmp)
    finally:
        bg.run(server.stop(0))
        manager.close()
        bg.close()


@dataclass
class Typed:
    dialect: str
    connector: str
    db: ShopDb


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mariadb"])
def typed(request: pytest.FixtureRequest, served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Typed]:
    with any_database(request.param, tmp_path_factory.mktemp("typed")) as db:
        with db.admin.begin() as c:
            for statement in TYPED_DDL[db.dialect]:
                c.exec_driver_sql(statement.replace("{p}", db.prefix))
        name = f"typed_{request.param}"
        with Client(served.address, timeout=60) as client:
            client.register_connector(name, db.url)
        try:
            yield Typed(db.dialect, name, db)
        finally:
            with Client(served.address, timeout=60) as client:
                client.remove_connector(name)


@pytest.fixture
def stub(served: Served) -> Iterator[pb_grpc.TablesServiceStub]:
    with grpc.insecure_channel(served.address) as channel:
        yield pb_grpc.TablesServiceStub(channel)


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    with Client(served.address, timeout=60) as c:
        yield c


def _execute(stub: pb_grpc.TablesServiceStub, **fields: Any) -> list[pb.ExecuteSqlResponse]:
    return list(stub.ExecuteSql(pb.ExecuteSqlRequest(**fields), timeout=60))


def test_cells_on_the_wire_are_typed_and_exact(typed: Typed, stub: pb_grpc.TablesServiceStub) -> None:
    columns = list(WIRE[typed.dialect])
    msgs = _execute(stub, connector=typed.connector, sql=f"SELECT {', '.join(columns)} FROM typed ORDER BY id",
                    request_id="cells-1")
    assert [m.WhichOneof("response") for m in msgs] == ["header", "rows", "complete"]
    header, rows, complete = msgs[0].header, msgs[1].rows.rows, msgs[2].complete
    assert header.request_id == "cells-1"
    assert [(c.name, c.type, c.kind) for c in header.columns] == [(n, *TYPES[typed.dialect][n]) for n in columns]
    first, nulls = rows
    for name, cell in zip(columns, first.cells):
        field, want = WIRE[typed.dialect][name]
        assert cell.WhichOneof("value") == field, name
        got = getattr(cell, field)
        if field == "timestamp_value":
            got = (got.seconds, got.nanos)  # 13:45 at +02:00 is 11:45 UTC
        assert got == want, name
    assert nulls.cells[0].int_value == 2
    assert all(c.WhichOneof("value") == "null_value" for c in nulls.cells[1:])
    assert complete.row_count == 2 and complete.mode == pb.QUERY_MODE_SQL and complete.attempts == 1
    assert complete.HasField("usage") and complete.usage.seconds > 0
    assert complete.usage.prompt_tokens == 0 and complete.usage.completion_tokens == 0


def test_sdk_rows_are_exact_python_values(typed: Typed, client: Client) -> None:
    r = client.execute_sql(typed.connector, "SELECT * FROM typed ORDER BY id")
    row = dict(zip(r.columns, r.rows[0]))
    assert row["big"] == BIG and isinstance(row["big"], int)
    assert row["bin"] == b"\x00\xff"
    assert all(v is None for k, v in zip(r.columns, r.rows[1]) if k != "id")
    kinds = {c.name: c.kind for c in r.column_types}
    if typed.dialect == "sqlite":
        assert row["amount"] == 12.5 and row["stamp"] == "2024-05-01 13:45:00.5"
        assert kinds["amount"] == "double" and kinds["stamp"] == "string"
        return
    assert row["amount"] == Decimal(AMOUNT) and kinds["amount"] == "decimal"
    assert row["stamp"] == dt.datetime(2024, 5, 1, 13, 45, 0, 500000) and row["stamp"].tzinfo is None
    assert kinds["stamp"] == "datetime" and kinds["big"] == "int" and kinds["bin"] == "bytes"
    if typed.dialect == "postgres":
        assert row["at_tz"] == dt.datetime(2024, 5, 1, 11, 45, tzinfo=dt.UTC) and kinds["at_tz"] == "timestamp"
        assert row["tags"] == [1, 2] and row["doc"] == {"k": [1, 2.5]}
        assert [c.type for c in r.column_types][:3] == ["int8", "int8", "bytea"]
    else:
        assert row["ubig"] == Decimal(2**64 - 1)


def test_schema_kinds_samples_and_nullable_keys(typed: Typed, client: Client, stub: pb_grpc.TablesServiceStub) -> None:
    resp = stub.DescribeSchema(pb.DescribeSchemaRequest(connector=typed.connector), timeout=60)
    assert resp.dialect == {"sqlite": pb.SQL_DIALECT_SQLITE, "postgres": pb.SQL_DIALECT_POSTGRES,
                            "mysql": pb.SQL_DIALECT_MYSQL}[typed.dialect]
    table = next(t for t in resp.tables if t.name == "typed")
    cols = {c.name: c for c in table.columns}
    assert {n: c.kind for n, c in cols.items()} == DECLARED[typed.dialect]
    assert cols["id"].primary_key and not cols["id"].nullable  # SQLite's INTEGER PRIMARY KEY too
    assert cols["big"].nullable
    assert [s.int_value for s in cols["big"].samples] == [BIG]  # NULLs are no samples
    assert [s.bytes_value for s in cols["bin"].samples] == [b"\x00\xff"]
    customers = next(t for t in resp.tables if t.name == "customers")
    assert not next(c for c in customers.columns if c.name == "id").nullable
    # the SDK: the same, as Python values and strings
    schema = client.describe_schema(typed.connector)
    assert schema.dialect == typed.dialect
    big = next(c for t in schema.tables if t.name == "typed" for c in t.columns if c.name == "big")
    assert big.samples == [BIG] and big.kind == "int"


def test_limits_defaults_and_ranges(typed: Typed, stub: pb_grpc.TablesServiceStub, client: Client) -> None:
    # 2**10 = 1024 rows: more than the default max_rows (1000), fewer than the upper bound
    many = "SELECT t0.id FROM " + ", ".join(f"typed t{i}" for i in range(10))
    msgs = _execute(stub, connector=typed.connector, sql=many)
    batches = [m.rows for m in msgs if m.WhichOneof("response") == "rows"]
    assert sum(len(b.rows) for b in batches) == 1000 and msgs[-1].complete.truncated
    assert [len(b.rows) for b in batches] == [256, 256, 256, 232]  # batch_rows unset: 256
    msgs = _execute(stub, connector=typed.connector, sql=many, max_rows=100_000, batch_rows=10_000)
    assert msgs[-1].complete.row_count == 1024 and not msgs[-1].complete.truncated
    for field, value in (("max_rows", 0), ("max_rows", 100_001), ("timeout_s", 0.0), ("timeout_s", 300.5),
                         ("timeout_s", float("nan")), ("batch_rows", 0), ("batch_rows", 10_001)):
        with pytest.raises(InvalidArgument) as err:
            _raise_from(stub, typed.connector, **{field: value})
        assert err.value.field == field and err.value.reason == "INVALID_FIELD", (field, value)
    with pytest.raises(InvalidArgument) as err:
        client.execute_sql(typed.connector, "SELECT 1", max_rows=0)  # the SDK sends 0: it is not "unset"
    assert err.value.field == "max_rows"


def test_rows_stream_while_they_are_read(typed: Typed, stub: pb_grpc.TablesServiceStub, client: Client) -> None:
    # the kinds of the header are the first batch's; the complete message's are over every row
    mixed = "SELECT id, CASE WHEN id = 1 THEN big ELSE 'two' END AS v FROM typed ORDER BY id"
    if typed.dialect == "sqlite":  # dynamically typed: one column holds an int, then a text
        msgs = _execute(stub, connector=typed.connector, sql=mixed, batch_rows=1)
        assert [m.WhichOneof("response") for m in msgs] == ["header", "rows", "rows", "complete"]
        assert [c.kind for c in msgs[0].header.columns] == [pb.CELL_KIND_INT, pb.CELL_KIND_INT]
        assert [c.kind for c in msgs[-1].complete.columns] == [pb.CELL_KIND_INT, pb.CELL_KIND_UNSPECIFIED]
        r = client.execute_sql(typed.connector, mixed)
        assert r.rows == [[1, BIG], [2, "two"]] and [c.kind for c in r.column_types] == ["int", ""]
    if typed.dialect != "postgres":
        return
    # 1024 rows of 50 kB: far more than the transport buffers, so the server must wait for this
    # reader, and while it waits its statement is a server-side cursor open in its transaction
    wide = "SELECT t0.id, repeat('x', 50000) AS pad FROM " + ", ".join(f"typed t{i}" for i in range(10))
    pattern = '%"ragloom_rows"%'  # DECLARE, then FETCH FORWARD ...; the rollback ends it
    call = stub.ExecuteSql(pb.ExecuteSqlRequest(connector=typed.connector, sql=wide, max_rows=5000, batch_rows=1),
                           timeout=60)
    assert next(call).WhichOneof("response") == "header" and len(next(call).rows.rows) == 1

    def open_cursors() -> int:
        with typed.db.admin.connect() as c:
            return int(c.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE :p"
                                         " AND state IN ('active', 'idle in transaction')"), {"p": pattern}).scalar_one())

    assert open_cursors() == 1
    rest = list(call)
    assert rest[-1].complete.row_count == 1024 and not rest[-1].complete.truncated
    assert open_cursors() == 0
    call = stub.ExecuteSql(pb.ExecuteSqlRequest(connector=typed.connector, sql=wide, max_rows=5000, batch_rows=1),
                           timeout=60)
    assert next(call).WhichOneof("response") == "header"
    assert open_cursors() == 1
    call.cancel()  # a reader that goes away: the statement is closed and its connection given back
    deadline = time.monotonic() + 10
    while open_cursors() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_cursors() == 0


def _raise_from(stub: pb_grpc.TablesServiceStub, connector: str, **fields: Any) -> None:
    """The SDK has no batch_rows: the raw call, its error read as the SDK reads errors."""
    from ragloom.client import _error

    try:
        _execute(stub, connector=connector, sql="SELECT 1", **fields)
    except grpc.RpcError as exc:
        raise _error(exc) from exc


def test_sql_errors_carry_reasons(typed: Typed, client: Client) -> None:
    with pytest.raises(InvalidArgument) as bad:
        client.execute_sql(typed.connector, "SELECT nope FROM typed")
    assert (bad.value.reason, bad.value.field) == ("SQL_INVALID", "sql")
    with pytest.raises(ForbiddenQuery) as forbidden:
        client.execute_sql(typed.connector, "DELETE FROM typed")
    assert forbidden.value.reason == "SQL_NOT_READ_ONLY" and forbidden.value.code == "PERMISSION_DENIED"
    with pytest.raises(DeadlineExceeded) as slow:
        client.execute_sql(typed.connector, HEAVY, timeout_s=0.5)
    assert slow.value.reason == "SQL_TIMEOUT" and slow.value.code == "DEADLINE_EXCEEDED"
    assert client.execute_sql(typed.connector, "SELECT count(*) FROM typed").rows == [[2]]  # still usable


def test_connector_errors_carry_reasons(served: Served, client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.execute_sql("no_such_connector", "SELECT 1")
    assert missing.value.reason == "CONNECTOR_NOT_FOUND" and missing.value.metadata["connector"] == "no_such_connector"
    with pytest.raises(NotFound) as missing:
        client.describe_schema("no_such_connector")
    assert missing.value.reason == "CONNECTOR_NOT_FOUND"
    with pytest.raises(NotFound) as no_file:
        client.register_connector("nofile", f"sqlite:///{served.tmp / 'missing.db'}")
    assert no_file.value.reason == "FILE_NOT_FOUND"
    with pytest.raises(NotFound) as no_file:
        client.register_connector("nofolder", str(served.tmp / "no_such_folder"))
    assert no_file.value.reason == "FILE_NOT_FOUND"
    with pytest.raises(InvalidArgument) as bad_url:
        client.register_connector("bad", "oracle://scott:tiger@host/db")
    assert (bad_url.value.reason, bad_url.value.field) == ("CONNECTOR_URL_INVALID", "url")
    with pytest.raises(InvalidArgument) as bad_name:
        client.register_connector("has space", "sqlite:///x.db")
    assert (bad_name.value.reason, bad_name.value.field) == ("INVALID_FIELD", "name")
    with pytest.raises(Unavailable) as down:
        client.register_connector("down", "postgresql://postgres:pw@127.0.0.1:1/test")
    assert down.value.reason == "DATABASE_UNAVAILABLE" and "pw@" not in str(down.value)
    with pytest.raises(InvalidArgument) as bad_id:
        client.list_connectors(request_id="not ok!")
    assert bad_id.value.field == "request_id"


def test_replace_keeps_examples_and_names_taken(served: Served, client: Client) -> None:
    db = served.tmp / f"ex_{uuid.uuid4().hex[:6]}.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    info = client.register_connector("examples", f"sqlite:///{db}")
    assert (info.name, info.dialect, info.tables, info.examples) == ("examples", "sqlite", 1, 0)
    try:
        assert client.add_sql_example("examples", "How many rows?", "SELECT count(*) FROM t") == 1
        with pytest.raises(InvalidArgument) as bad:
            client.add_sql_example("examples", "Bad", "SELECT nope FROM t")
        assert (bad.value.reason, bad.value.field) == ("SQL_INVALID", "sql")
        with pytest.raises(AlreadyExists) as taken:
            client.register_connector("examples", f"sqlite:///{db}")
        assert taken.value.reason == "CONNECTOR_EXISTS" and taken.value.metadata["connector"] == "examples"
        again = client.register_connector("examples", f"sqlite:///{db}", replace=True)
        assert again.examples == 1  # replace keeps the examples, as RegisterConnectorRequest says
    finally:
        client.remove_connector("examples")
    with pytest.raises(NotFound) as gone:
        client.remove_connector("examples")
    assert gone.value.reason == "CONNECTOR_NOT_FOUND"


def test_query_needs_a_model(typed: Typed, client: Client) -> None:
    with pytest.raises(RagloomError) as err:
        client.sql(typed.connector, "How many rows?")
    assert err.value.code == "FAILED_PRECONDITION"
