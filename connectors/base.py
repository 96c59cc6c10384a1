"""The Connector protocol and the plain data it returns: a schema and a result set.

A connector is one database (or a folder of files) registered under a name. It introspects its
schema once (tables, columns, keys, samples, row counts) and executes guarded SQL on a read-only
connection. Everything above it (text-to-SQL, the Tables service) only sees these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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


@dataclass
class Fetched:
    """What one statement returned, before the guard's bookkeeping is added (see ResultSet)."""

    columns: list[str]
    column_types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


class Connector(Protocol):
    name: str
    dialect: Dialect
    url: str  # with any password replaced by "***": safe to log and to return to callers

    def schema(self, refresh: bool = False) -> Schema:
        """Tables, columns, keys, a few sample values and row counts; cached until refresh."""
        ...

    def execute(self, sql: str, max_rows: int = 1000, timeout_s: float = 30.0) -> ResultSet:
        """Guard `sql` (guard.py), then run it read-only with a time limit; at most max_rows rows."""
        ...

    def close(self) -> None: ...
