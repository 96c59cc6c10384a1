"""Connectors end to end on real databases and files: introspection, execution, limits, timeouts,
secrets, and the registry that persists them.

SQLite runs everywhere; PostgreSQL and MariaDB are the machine's own servers (RAGLOOM_TEST_PG_URL,
RAGLOOM_TEST_MYSQL_URL), each test module in a schema / database of its own that is dropped after.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import time
from datetime import date, datetime
from decimal import Decimal

import pandas as pd
import pytest
from sql_databases import PG_URL, any_database, postgres_database
from sqlalchemy.engine import make_url

from ragloom.connectors.files import FileConnector
from ragloom.connectors.registry import ConnectorRegistry, open_connector
from ragloom.connectors.sql import SqlConnector
from ragloom.errors import (
    AlreadyExists,
    DeadlineExceeded,
    ForbiddenQuery,
    InvalidArgument,
    NotFound,
    RagloomError,
    SqlError,
    Unavailable,
)

# 5**14 rows to count: far beyond any time limit here, and made of nothing but a real table.
HEAVY = "SELECT count(*) FROM " + ", ".join(f"orders o{i}" for i in range(14))
SECRET = "Sup3r-Secret-Pw"


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mariadb"])
def db(request, tmp_path_factory):
    with any_database(request.param, tmp_path_factory.mktemp("db")) as database:
        yield database


@pytest.fixture(scope="module")
def conn(db):
    connector = SqlConnector("shop", db.url)
    yield connector
    connector.close()


# ---- SQL databases ----


def test_introspection(db, conn):
    schema = conn.schema()
    assert schema.dialect == db.dialect and schema.connector == "shop"
    assert [t.name for t in schema.tables] == ["customers", "orders"]
    customers, orders = schema.tables
    assert customers.primary_key == ["id"] and customers.row_count == 4 and orders.row_count == 5
    assert [c.name for c in orders.columns] == ["id", "customer_id", "total", "placed_at", "status"]
    assert orders.column("customer_id").nullable is False and orders.column("id").primary_key
    # a primary key the database keeps non-null says so (SQLite: the INTEGER PRIMARY KEY rowid alias)
    assert orders.column("id").nullable is False and customers.column("id").nullable is False
    assert orders.column("status").nullable is True
    assert "NUMERIC" in orders.column("total").type.upper() or "DECIMAL" in orders.column("total").type.upper()
    [fk] = orders.foreign_keys
    assert (fk.columns, fk.ref_table, fk.ref_columns) == (["customer_id"], "customers", ["id"])
    # up to 3 distinct non-null samples, as the driver returns them
    assert customers.column("city").samples == ["London", "New York", "Helsinki"]
    assert orders.column("status").samples == ["paid", "refunded", "pending"]
    if db.dialect == "sqlite":  # NUMERIC affinity: 10.50 is stored as a REAL, 20.00 as an INTEGER
        assert orders.column("total").samples == [10.5, 20, 5.25]
    else:  # exact decimals, scale kept
        assert orders.column("total").samples == [Decimal("10.50"), Decimal("20.00"), Decimal("5.25")]
        assert [str(v) for v in orders.column("total").samples] == ["10.50", "20.00", "5.25"]
    if db.dialect != "sqlite":  # SQLite has no comments
        assert customers.description == "People who placed orders"
        assert customers.column("city").description == "City of the delivery address"
    assert conn.schema() is schema and conn.schema(refresh=True) is not schema


# what each database returns for sum(NUMERIC), max(TIMESTAMP) and a DATE, and the result types
# its driver reports (SQLite has no decimal, datetime or date type: it stores reals and text)
EXACT_ROWS = {
    "sqlite": ([("Ada", 30.5), ("Grace", 5.25), ("Linus", 100.99)], "2024-03-02 08:00:00", "2023-01-05",
               ["", "", ""]),
    "postgres": ([("Ada", Decimal("30.50")), ("Grace", Decimal("5.25")), ("Linus", Decimal("100.99"))],
                 datetime(2024, 3, 2, 8, 0), date(2023, 1, 5), ["text", "numeric", "timestamp"]),
    "mysql": ([("Ada", Decimal("30.50")), ("Grace", Decimal("5.25")), ("Linus", Decimal("100.99"))],
              datetime(2024, 3, 2, 8, 0), date(2023, 1, 5), ["VARCHAR", "DECIMAL", "DATETIME"]),
}


def test_execute_returns_exact_driver_values(db, conn):
    result = conn.execute(
        "SELECT c.name, sum(o.total) AS spent, max(o.placed_at) AS last_order "
        "FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.name ORDER BY c.name"
    )
    spent, last_order, signup, types = EXACT_ROWS[db.dialect]
    assert [c.lower() for c in result.columns] == ["name", "spent", "last_order"]
    got = [(r[0], round(r[1], 2) if isinstance(r[1], float) else r[1]) for r in result.rows]
    assert got == spent and [type(r[1]) for r in result.rows] == [type(v) for _, v in spent]
    assert result.rows[2][2] == last_order
    assert result.column_types == types
    assert result.tables == ["customers", "orders"] and not result.truncated
    dates = conn.execute("SELECT signup_date FROM customers WHERE id = 1").rows
    assert dates == [(signup,)]


def test_row_limit(conn):
    capped = conn.execute("SELECT id FROM orders ORDER BY id", max_rows=2)
    assert capped.rows == [(1,), (2,)] and capped.truncated
    assert "LIMIT 2" in capped.sql  # the limit asked for (one more row is fetched to know more exist)
    small = conn.execute("SELECT id FROM orders ORDER BY id LIMIT 1", max_rows=2)
    assert small.rows == [(1,)] and not small.truncated and "LIMIT 1" in small.sql
    tightened = conn.execute("SELECT id FROM orders ORDER BY id LIMIT 100000", max_rows=3)
    assert len(tightened.rows) == 3 and tightened.truncated and "100000" not in tightened.sql
    exact = conn.execute("SELECT id FROM orders", max_rows=5)
    assert len(exact.rows) == 5 and not exact.truncated
    with pytest.raises(InvalidArgument):
        conn.execute("SELECT id FROM orders", max_rows=0)


def test_timeout_is_deadline_exceeded(conn):
    # HEAVY counts 5**14 rows: it cannot finish, so an answer at all means the database stopped it, and
    # "time limit" is only said when the driver reports that interruption (see SqlConnector._translate).
    with pytest.raises(DeadlineExceeded, match="time limit"):
        conn.execute(HEAVY, timeout_s=0.5)
    assert conn.execute("SELECT count(*) FROM orders").rows == [(5,)]  # the connection is still usable


def test_rows_stream_in_batches_and_give_the_connection_back(conn):
    with conn.open("SELECT id FROM orders ORDER BY id", max_rows=4) as rows:
        assert rows.columns == ["id"] and not rows.closed and rows.tables == ["orders"]
        assert rows.fetch(3) == [(1,), (2,), (3,)] and not rows.closed
        assert rows.fetch(3) == [(4,)]  # max_rows reached: one more row exists, so truncated
        assert rows.closed and rows.truncated and rows.count == 4
        assert rows.fetch(3) == []
    whole = conn.open("SELECT id FROM orders ORDER BY id").result()
    assert len(whole.rows) == 5 and not whole.truncated
    # readers that stop early, many more than the pool holds, leave nothing behind
    for _ in range(12):
        early = conn.open("SELECT id, status FROM orders ORDER BY id")
        assert early.fetch(1) == [(1, "paid")]
        early.close()
    assert conn.execute("SELECT count(*) FROM orders").rows == [(5,)]


def test_a_slow_reader_meets_the_deadline(conn):
    rows = conn.open("SELECT id FROM orders ORDER BY id", timeout_s=0.3)
    assert rows.fetch(1) == [(1,)]
    time.sleep(0.4)
    with pytest.raises(DeadlineExceeded, match="time limit while its rows were read"):
        rows.fetch(1)
    assert rows.closed
    assert conn.execute("SELECT count(*) FROM orders").rows == [(5,)]


def test_an_error_in_a_later_row_ends_the_stream(tmp_path):
    path = tmp_path / "n.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE n (id INTEGER PRIMARY KEY, v TEXT)")
        c.executemany("INSERT INTO n VALUES (?, ?)", [(1, "[1]"), (2, "[2]"), (3, "[3]"), (4, "not json")])
    connector = SqlConnector("n", f"sqlite:///{path}")
    try:
        # SQLite steps as rows are fetched (Python's cursor one row ahead): json() fails on the
        # fourth row, after the first two were handed out
        rows = connector.open("SELECT json(v) FROM n ORDER BY id")
        assert rows.fetch(1) == [("[1]",)] and rows.fetch(1) == [("[2]",)]
        with pytest.raises(SqlError, match="malformed JSON"):
            rows.fetch(1)
        assert rows.closed
        assert connector.execute("SELECT count(*) FROM n").rows == [(4,)]
    finally:
        connector.close()


def test_unknown_names_and_database_errors(db, conn):
    with pytest.raises(SqlError, match="unknown table 'invoices'.*customers, orders"):
        conn.execute("SELECT * FROM invoices")
    with pytest.raises(SqlError, match="unknown column 'totl'"):
        conn.execute("SELECT totl FROM orders")
    with pytest.raises(SqlError, match="does not parse"):
        conn.execute("SELECT FROM WHERE")
    if db.dialect != "sqlite":  # SQLite silently takes the first row of a scalar subquery
        with pytest.raises(SqlError, match="(PostgreSQL|MariaDB) error: .*more than"):
            conn.execute("SELECT name FROM customers WHERE id = (SELECT customer_id FROM orders)")


def test_other_schema_qualifiers_are_refused(db, conn):
    own = conn.qualifiers[0]
    assert conn.execute(f"SELECT count(*) FROM {own}.orders").rows == [(5,)]
    with pytest.raises(ForbiddenQuery, match="outside this connector's schema"):
        conn.execute("SELECT * FROM elsewhere.orders")


def test_sqlite_missing_file_and_bad_urls(tmp_path):
    with pytest.raises(NotFound, match="not found"):
        SqlConnector("x", f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(InvalidArgument, match="must name a database file"):
        SqlConnector("x", "sqlite://")
    with pytest.raises(InvalidArgument, match="supported: sqlite"):
        SqlConnector("x", "oracle://scott:tiger@db/orcl")


# ---- secrets ----


def test_postgres_password_never_shown():
    # The machine's PostgreSQL trusts local users, so a connection with any password succeeds.
    with postgres_database() as db:
        url = make_url(db.url).set(password=SECRET).render_as_string(hide_password=False)
        connector = SqlConnector("secret", url)
        try:
            assert SECRET not in connector.url and "***" in connector.url
            assert SECRET not in repr(connector)
            for bad in ("SELECT * FROM nowhere", "SELECT name::int FROM customers", "DROP TABLE orders"):
                with pytest.raises(RagloomError) as info:
                    connector.execute(bad)
                assert SECRET not in str(info.value) and str(info.value)
        finally:
            connector.close()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://postgres:{SECRET}@127.0.0.1:1/test",  # nothing listens on port 1
        f"mysql://root:{SECRET}@127.0.0.1:3306/test",  # root has no password: access denied
    ],
)
def test_connection_failure_hides_password(url):
    with pytest.raises((Unavailable, InvalidArgument)) as info:
        SqlConnector("down", url)
    assert SECRET not in str(info.value) and "***" in str(info.value)


# ---- files through DuckDB ----


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "city": ["Oslo", "Rome", "Lima", "Oslo"],
            "year": [2020, 2021, 2022, 2023],
            "temp": [5.5, 18.25, 19.0, None],
            "day": pd.to_datetime(["2020-01-01", "2021-02-02", "2022-03-03", "2023-04-04"]),
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".xlsx"])
def test_file_connector(tmp_path, frame, suffix):
    path = tmp_path / f"Weather Data 2024{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path),
     ".xlsx": lambda: frame.to_excel(path, index=False)}[suffix]()
    connector = open_connector("weather", str(path))
    assert isinstance(connector, FileConnector) and connector.dialect == "duckdb"
    [table] = connector.schema().tables
    assert table.name == "weather_data_2024" and table.row_count == 4 and table.foreign_keys == []
    assert [c.name for c in table.columns] == ["city", "year", "temp", "day"]
    assert table.column("year").type in ("BIGINT", "INTEGER") and table.column("temp").type == "DOUBLE"
    assert table.column("city").samples == ["Oslo", "Rome", "Lima"]
    result = connector.execute(
        "SELECT city, avg(temp) AS t, max(day) AS last FROM weather_data_2024 GROUP BY city ORDER BY city",
        max_rows=2,
    )
    assert result.rows == [("Lima", 19.0, result.rows[0][2]), ("Oslo", 5.5, result.rows[1][2])]
    # a CSV's "2023-04-04" is read as a DATE; Parquet and Excel keep pandas' timestamps
    day, day_type = (date(2023, 4, 4), "DATE") if suffix == ".csv" else (datetime(2023, 4, 4), "TIMESTAMP")
    assert result.rows[1][2] == day and type(result.rows[1][2]) is type(day) and result.truncated
    assert result.column_types[:2] == ["VARCHAR", "DOUBLE"] and result.column_types[2].startswith(day_type)
    with connector.open("SELECT year FROM weather_data_2024 ORDER BY year", max_rows=3) as rows:
        assert rows.fetch(2) == [(2020,), (2021,)] and rows.fetch(2) == [(2022,)] and rows.truncated
    slow = connector.open("SELECT city FROM weather_data_2024", timeout_s=0.2)
    assert len(slow.fetch(1)) == 1
    time.sleep(0.3)
    with pytest.raises(DeadlineExceeded):
        slow.fetch(1)
    assert slow.closed and connector.execute("SELECT count(*) FROM weather_data_2024").rows == [(4,)]
    connector.close()


def test_file_folder_and_isolation(tmp_path, frame):
    (tmp_path / "a.csv").write_text("x,y\n1,one\n2,two\n")
    frame.to_parquet(tmp_path / "2024 weather.parquet")
    with pd.ExcelWriter(tmp_path / "book.xlsx") as writer:
        frame.to_excel(writer, sheet_name="Main", index=False)
        frame.head(2).to_excel(writer, sheet_name="Top two", index=False)
    (tmp_path / "notes.txt").write_text("not a table")
    connector = FileConnector("folder", tmp_path)
    assert [t.name for t in connector.schema().tables] == ["t_2024_weather", "a", "book_main", "book_top_two"]
    assert connector.execute("SELECT y FROM a WHERE x = 2").rows == [("two",)]
    # a type error comes back short: DuckDB's list of every `*` overload is cut (it would fill the
    # correction prompt)
    with pytest.raises(SqlError, match="Binder Error") as err:
        connector.execute("SELECT y * y FROM a")
    assert "Candidate functions" not in str(err.value) and len(str(err.value)) < 700
    # the guard refuses file readers, and under it DuckDB itself cannot reach the file system
    with pytest.raises(ForbiddenQuery, match="table-valued"):
        connector.execute("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(SqlError, match="disabled by configuration"):
        connector._run("SELECT * FROM read_csv('/etc/passwd')", 5, 5)
    with pytest.raises(SqlError, match="locked"):
        connector._run("SET enable_external_access = true", 5, 5)
    # writes that bypass the guard only touch the in-memory copy, and are rolled back
    connector._run("DELETE FROM a", 5, 5)
    assert connector.execute("SELECT count(*) FROM a").rows == [(2,)]
    assert (tmp_path / "a.csv").read_text() == "x,y\n1,one\n2,two\n"
    with pytest.raises(DeadlineExceeded):
        connector.execute("SELECT count(*) FROM " + ", ".join(f"book_main b{i}" for i in range(20)), timeout_s=0.5)
    (tmp_path / "a.csv").write_text("x,y\n1,one\n")
    assert connector.schema(refresh=True).table("a").row_count == 1  # refresh reloads the files
    connector.close()


def test_file_errors(tmp_path):
    with pytest.raises(NotFound):
        FileConnector("x", tmp_path / "missing.csv")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidArgument, match="no .csv"):
        FileConnector("x", tmp_path)
    with pytest.raises(InvalidArgument, match="unsupported file type"):
        FileConnector("x", tmp_path / "notes.txt")


# ---- opening and registering ----


def test_open_connector_dispatch(tmp_path, db):
    if db.dialect == "sqlite":
        path = make_url(db.url).database
        assert isinstance(open_connector("s", str(path)), SqlConnector)  # a .db path is SQLite
    else:
        assert isinstance(open_connector("s", db.url), SqlConnector)
    with pytest.raises(InvalidArgument, match="supported: sqlite://, postgresql://"):
        open_connector("x", "mongodb://u:pw@host/db")
    with pytest.raises(NotFound):
        open_connector("x", str(tmp_path / "nothing.csv"))


def test_registry_persists_privately(tmp_path, db):
    path = tmp_path / "state" / "connectors.json"
    registry = ConnectorRegistry(path)
    connector = registry.register("shop", db.url)
    assert registry.get("shop") is connector
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(AlreadyExists):
        registry.register("shop", db.url)
    registry.add_example("shop", "How many orders?", "SELECT count(*) FROM orders")
    with pytest.raises(ForbiddenQuery):
        registry.add_example("shop", "Wipe it", "DELETE FROM orders")
    with pytest.raises(SqlError):
        registry.add_example("shop", "Bad", "SELECT nope FROM orders")
    [info] = registry.list()
    assert (info.name, info.dialect, info.examples) == ("shop", db.dialect, 1)
    registry.close()

    reopened = ConnectorRegistry(path)  # a restart: registrations come back, connectors reopen lazily
    assert reopened.examples("shop") == [{"question": "How many orders?", "sql": "SELECT count(*) FROM orders"}]
    assert reopened.get("shop").execute("SELECT count(*) FROM orders").rows == [(5,)]
    reopened.register("shop", db.url, replace=True)
    assert len(reopened.examples("shop")) == 1  # replacing the URL keeps the examples
    reopened.remove("shop")
    with pytest.raises(NotFound, match="registered: none"):
        reopened.get("shop")
    assert json.loads(path.read_text())["connectors"] == {}
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp files left
    reopened.close()


def test_registry_names_and_failures(tmp_path):
    registry = ConnectorRegistry(None)
    for bad in ("", "has space", "x" * 65, "semi;colon"):
        with pytest.raises(InvalidArgument):
            registry.register(bad, "sqlite:///whatever.db")
    with pytest.raises(NotFound):
        registry.register("ok", f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(NotFound, match="registered: none"):
        registry.get("ok")
    with pytest.raises(Unavailable):
        registry.register("down", f"postgresql://postgres:{SECRET}@127.0.0.1:1/test")
    assert registry.list() == []
    (tmp_path / "t.csv").write_text("a\n1\n")
    registry.register("csv.v1", str(tmp_path / "t.csv"))
    assert [(i.name, i.dialect, i.url) for i in registry.list()] == [("csv.v1", "duckdb", str(tmp_path / "t.csv"))]
    registry.close()


def test_registry_redacts_urls(tmp_path):
    url = make_url(PG_URL).set(drivername="postgresql", password=SECRET).render_as_string(hide_password=False)
    registry = ConnectorRegistry(tmp_path / "r.json")
    try:
        registry.register("pg", url)
    except Unavailable:
        pytest.skip("PostgreSQL not reachable")
    [info] = registry.list()
    assert SECRET not in info.url and "***" in info.url
    assert SECRET in (tmp_path / "r.json").read_text()  # needed to reconnect: hence mode 0600
    registry.close()


def test_registry_is_thread_safe(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    for i in range(8):
        (tmp_path / f"t{i}.csv").write_text(f"a\n{i}\n")
    registry = ConnectorRegistry(tmp_path / "r.json")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: registry.register(f"c{i}", str(tmp_path / f"t{i}.csv")), range(8)))
        opened = list(pool.map(lambda _: registry.get("c3"), range(8)))
    assert len({id(c) for c in opened}) == 1  # one connector per name, however many callers
    assert [i.name for i in ConnectorRegistry(tmp_path / "r.json").list()] == [f"c{i}" for i in range(8)]
    registry.close()
