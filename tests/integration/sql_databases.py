"""Throw-away test databases for the connector tests: SQLite, PostgreSQL and MariaDB, same data.

Each lives in its own place (a temporary file, a PostgreSQL schema, a MariaDB database) with a
random name, and is dropped afterwards; the connectors only ever see that place. `admin` is a
separate read-write engine that the tests use to build the data and to checksum it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("RAGLOOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("RAGLOOM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
TABLES = ("customers", "orders")

CUSTOMERS = [
    (1, "Ada", "London", "2023-01-05"),
    (2, "Grace", "New York", "2023-02-11"),
    (3, "Linus", "Helsinki", "2023-03-20"),
    (4, "Margaret", "Boston", None),
]
ORDERS = [
    (1, 1, "10.50", "2024-01-01 10:00:00", "paid"),
    (2, 1, "20.00", "2024-01-03 12:30:00", "paid"),
    (3, 2, "5.25", "2024-02-10 09:15:00", "refunded"),
    (4, 3, "99.99", "2024-03-01 18:45:00", "paid"),
    (5, 3, "1.00", "2024-03-02 08:00:00", "pending"),
]

_DDL = {
    "sqlite": [
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, signup_date DATE)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),"
        " total NUMERIC(10, 2), placed_at TIMESTAMP, status TEXT)",
    ],
    "postgres": [
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, signup_date DATE)",
        "COMMENT ON TABLE customers IS 'People who placed orders'",
        "COMMENT ON COLUMN customers.city IS 'City of the delivery address'",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),"
        " total NUMERIC(10, 2), placed_at TIMESTAMP, status TEXT)",
    ],
    "mysql": [
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL,"
        " city VARCHAR(50) COMMENT 'City of the delivery address', signup_date DATE)"
        " COMMENT 'People who placed orders'",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, total DECIMAL(10, 2),"
        " placed_at DATETIME, status VARCHAR(20), FOREIGN KEY (customer_id) REFERENCES customers(id))",
    ],
}


@dataclass
class ShopDb:
    dialect: str
    url: str  # what a connector is opened with
    admin: sa.Engine  # read-write, for building and checking the data
    prefix: str = ""  # how admin names the tables: "schema." for PostgreSQL
    baseline: str = ""  # a fingerprint() taken by the test that needs one

    def fingerprint(self) -> str:
        """A checksum of the table list and every row: equal before and after means nothing changed."""
        digest = hashlib.sha256()
        with self.admin.connect() as c:
            names = sorted(sa.inspect(c).get_table_names(schema=self.prefix.rstrip(".") or None))
            digest.update(repr(names).encode())
            for table in TABLES:
                rows = c.execute(sa.text(f"SELECT * FROM {self.prefix}{table} ORDER BY id")).all()
                digest.update(repr([tuple(r) for r in rows]).encode())
        return digest.hexdigest()


def _fill(conn: sa.Connection, dialect: str, prefix: str = "") -> None:
    for statement in _DDL[dialect]:
        conn.execute(sa.text(statement))
    conn.execute(
        sa.text(f"INSERT INTO {prefix}customers VALUES (:a, :b, :c, :d)"),
        [dict(zip("abcd", r)) for r in CUSTOMERS],
    )
    conn.execute(
        sa.text(f"INSERT INTO {prefix}orders VALUES (:a, :b, :c, :d, :e)"),
        [dict(zip("abcde", r)) for r in ORDERS],
    )


def reachable(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - any connection failure means "no server here"
        engine.dispose()
        if os.environ.get("CI"):  # CI has the servers: a missing one is a failure there, not a skip
            pytest.fail(f"database not reachable at {url}: {e}")
        pytest.skip(f"database not reachable at {url}: {e}")
    return engine


@contextmanager
def sqlite_database(folder: Path) -> Iterator[ShopDb]:
    path = folder / f"shop_{uuid.uuid4().hex[:8]}.db"
    admin = sa.create_engine(f"sqlite:///{path}")
    with admin.begin() as c:
        _fill(c, "sqlite")
    yield ShopDb("sqlite", f"sqlite:///{path}", admin)
    admin.dispose()


@contextmanager
def postgres_database() -> Iterator[ShopDb]:
    admin = reachable(PG_URL)
    schema = f"ragloom_conn_{uuid.uuid4().hex[:12]}"
    with admin.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        c.execute(sa.text(f'SET LOCAL search_path TO "{schema}"'))
        _fill(c, "postgres", f"{schema}.")
    url = make_url(PG_URL).set(drivername="postgresql").update_query_dict({"schema": schema})
    try:
        yield ShopDb("postgres", url.render_as_string(hide_password=False), admin, f"{schema}.")
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def mariadb_database() -> Iterator[ShopDb]:
    server = reachable(MYSQL_URL)
    name = f"ragloom_conn_{uuid.uuid4().hex[:12]}"
    with server.begin() as c:
        c.execute(sa.text(f"CREATE DATABASE `{name}`"))
    url = make_url(MYSQL_URL).set(database=name)
    admin = sa.create_engine(url)
    try:
        with admin.begin() as c:
            _fill(c, "mysql")
        yield ShopDb("mysql", url.set(drivername="mysql").render_as_string(hide_password=False), admin)
    finally:
        admin.dispose()
        with server.begin() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        server.dispose()


@contextmanager
def any_database(kind: str, folder: Path) -> Iterator[ShopDb]:
    """`kind` is a pytest param: sqlite, postgres or mariadb."""
    factory = {"sqlite": lambda: sqlite_database(folder), "postgres": postgres_database, "mariadb": mariadb_database}
    with factory[kind]() as db:
        yield db
