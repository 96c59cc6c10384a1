"""The Connector protocol and the plain data it returns: a schema, a result set and
the rows of a running statement.

A connector is one database (or a folder of files) registered under a name. It introspects its
schema once (tables, columns, keys, samples, row counts) and executes guarded SQL on a read-only
connection. Everything above it (text-to-SQL, the Tables service) only sees these types.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ragloom.errors import DeadlineExceeded

# sqlglot dialect names; MariaDB and MySQL share "mysql", files are queried through DuckDB
Dialect = str  # "sqlite" | "postgres" | "mysql" | "duckdb"


@dataclass
class Column:
    name: str
    type: str  # as the database reports it, e.g. "INTEGER", "character varying(50)"
    nullable: bool = True
    primary_key: bool = False
    description: str = ""
    # a few distinct non-null values as the driver returned them (values.sample_value: texts cut)
    samples: list[Any] = field(default_factory=list)


@dataclass
class ForeignKey:
    columns: list[str]
    ref_table: str
    ref_columns: list[str]


@dataclass
class Table:
    name: str
    columns: list[Column]
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    row_count: int | None = None
    description: str = ""

    def column(self, name: str) -> Column | None:
        low = name.lower()
        return next((c for c in self.columns if c.name.lower() == low), None)


@dataclass
class Schema:
    connector: str
    dialect: Dialect
    tables: list[Table]

    def table(self, name: str) -> Table | None:
        low = name.lower()
        return next((t for t in self.tables if t.name.lower() == low), None)

    def subset(self, names: list[str]) -> Schema:
        keep = {n.lower() for n in names}
        return Schema(self.connector, self.dialect, [t for t in self.tables if t.name.lower() in keep])


@dataclass
class ResultSet:
    sql: str  # the statement that ran: after the guard added or tightened its row limit
    columns: list[str]
    # values as the driver returned them (int, float, Decimal, str, bytes, datetime, date, time,
    # dict/list, ...): exact; values.cell_value says how each travels
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows existed than max_rows
    tables: list[str]  # tables the statement reads
    # per column, the result type the driver reported ("int8", "DECIMAL(10,2)"); "" where it
    # reports none (SQLite)
    column_types: list[str] = field(default_factory=list)


class Rows:
    """One statement's result, read in batches while its read-only transaction stays open.

    Streaming keeps one batch in memory and lets the first rows leave before the last are read.
    The connector hands in `read` (up to n driver rows; driver errors already translated into
    ours) and `release` (roll back, give the connection back). One deadline covers the statement
    and every later read, so a slow reader cannot hold a transaction open past timeout_s. Close
    it (or use it as a context manager) when not reading to the end.
    """

    def __init__(
        self,
        sql: str,
        columns: list[str],
        column_types: list[str],
        tables: list[str],
        read: Callable[[int], list[tuple[Any, ...]]],
        release: Callable[[], None],
        max_rows: int,
        timeout_s: float,
        deadline: float,
    ) -> None:
        self.sql, self.columns, self.column_types, self.tables = sql, columns, column_types, tables
        self._read, self._release = read, release
        self.max_rows, self.timeout_s, self.deadline = max_rows, timeout_s, deadline
        self.count = 0  # rows handed out so far
        self.truncated = False  # more rows existed than max_rows (known once read to the end)
        self.closed = False

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        """Up to n more rows; [] once the result (or max_rows) is exhausted, which also closes it."""
        if self.closed:
            return []
        try:
            if time.monotonic() > self.deadline:
                raise DeadlineExceeded(f"query exceeded the {self.timeout_s:g}s time limit while its rows were read",
                                       reason="SQL_TIMEOUT")
            want = min(n, self.max_rows - self.count)
            rows = [tuple(r) for r in self._read(want)] if want > 0 else []
            self.count += len(rows)
            if len(rows) < want:
                self.close()
            elif self.count >= self.max_rows:
                self.truncated = bool(self._read(1))  # the guard's LIMIT is max_rows + 1
                self.close()
            return rows
        except BaseException:
            self.close()
            raise

    def result(self) -> ResultSet:
        """Everything left, read to the end and closed."""
        rows: list[tuple[Any, ...]] = []
        while not self.closed:
            rows.extend(self.fetch(1024))
        return ResultSet(self.sql, self.columns, rows, self.truncated, self.tables, self.column_types)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._release()

    def __enter__(self) -> Rows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Connector(Protocol):
    name: str
    dialect: Dialect
    url: str  # with any password replaced by "***": safe to log and to return to callers

    def schema(self, refresh: bool = False) -> Schema:
        """Tables, columns, keys, a few sample values and row counts; cached until refresh."""
        ...

    def open(self, sql: str, max_rows: int = 1000, timeout_s: float = 30.0) -> Rows:
        """Guard `sql` (guard.py), then start it read-only with a time limit; its rows (at most
        max_rows) are read from the returned Rows."""
        ...

    def execute(self, sql: str, max_rows: int = 1000, timeout_s: float = 30.0) -> ResultSet:
        """open() read to the end."""
        ...

    def close(self) -> None: ...
