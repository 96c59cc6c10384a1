"""SQL database connectors: SQLite, PostgreSQL and MariaDB/MySQL, read-only at two levels.

The guard (guard.py) refuses anything but one SELECT; underneath it, every connection is opened
read-only so that a guard bug still cannot write:
- SQLite: the file is opened with the URI `mode=ro` and `PRAGMA query_only=ON`, and may attach
  no other database;
- PostgreSQL: `default_transaction_read_only=on` for the session, and each statement runs in a
  `READ ONLY` transaction with `SET LOCAL statement_timeout`;
- MariaDB/MySQL: `SET SESSION TRANSACTION READ ONLY`, each statement inside
  `START TRANSACTION READ ONLY` with `max_statement_time` (MariaDB) / `max_execution_time` (MySQL).
Every transaction is rolled back, never committed. Use a least-privilege database role as well.

Introspection uses SQLAlchemy's inspector; statements run on the raw DB-API connection from
SQLAlchemy's pool, so the text the guard produced is sent as is (no parameter interpolation).
Rows keep the driver's values (exact ints and decimals, bytes, datetimes, ...) and the result
types the driver reports (PostgreSQL type names, MySQL field types; SQLite reports none).
"""

from __future__ import annotations

import decimal
import functools
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import QueuePool

from ragloom.connectors.base import Column, ForeignKey, ResultSet, Rows, Schema, Table
from ragloom.connectors.guard import guard
from ragloom.connectors.values import clip_error, column_samples, redact_url, scrub
from ragloom.errors import (
    DeadlineExceeded,
    ForbiddenQuery,
    InvalidArgument,
    NotFound,
    RagloomError,
    SqlError,
    Unavailable,
)

log = logging.getLogger(__name__)

# URL scheme (before any "+driver") -> sqlglot dialect; the driver is always ours.
SCHEMES = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql"}
DRIVERS = {"sqlite": "sqlite+pysqlite", "postgres": "postgresql+psycopg", "mysql": "mysql+pymysql"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
SAMPLE_ROWS = 100  # rows read per table to find up to SAMPLES distinct values per column
SAMPLES = 3
INTROSPECT_TIMEOUT_S = 5.0
URL_INVALID = "CONNECTOR_URL_INVALID"  # the ErrorReason of a URL that cannot be used as given
UNAVAILABLE = "DATABASE_UNAVAILABLE"

# pymysql's field type codes (pymysql.constants.FIELD_TYPE) as the SQL type names they stand for;
# the text and binary forms share codes and differ by character set (63 is "binary")
_MYSQL_TYPES = {
    0: "DECIMAL", 1: "TINYINT", 2: "SMALLINT", 3: "INT", 4: "FLOAT", 5: "DOUBLE", 7: "TIMESTAMP",
    8: "BIGINT", 9: "MEDIUMINT", 10: "DATE", 11: "TIME", 12: "DATETIME", 13: "YEAR", 14: "DATE",
    15: "VARCHAR", 16: "BIT", 245: "JSON", 246: "DECIMAL", 247: "ENUM", 248: "SET", 249: "TINYTEXT",
    250: "MEDIUMTEXT", 251: "LONGTEXT", 252: "TEXT", 253: "VARCHAR", 254: "CHAR", 255: "GEOMETRY",
}
_MYSQL_BINARY = {"TINYTEXT": "TINYBLOB", "MEDIUMTEXT": "MEDIUMBLOB", "LONGTEXT": "LONGBLOB", "TEXT": "BLOB",
                 "VARCHAR": "VARBINARY", "CHAR": "BINARY"}
_MYSQL_INTS = {"TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT"}
_MYSQL_UNSIGNED, _MYSQL_ENUM, _MYSQL_SET, _MYSQL_BINARY_CHARSET = 32, 256, 2048, 63


class SqlConnector:
    """One SQL database. `url` is e.g. sqlite:///data/shop.db, postgresql://u:p@host/db?schema=sales,
    mysql://u:p@host/db (MariaDB too)."""

    def __init__(self, name: str, url: str, schema: str | None = None, connect_timeout_s: float = 10.0) -> None:
        self.name = name
        self.url = redact_url(url)
        self._secrets = [url]
        sa_url, self.dialect, pg_schema = self._parse(url, schema)
        if sa_url.password:
            self._secrets.append(str(sa_url.password))
        self._pg_schema = pg_schema
        self._engine = self._create_engine(sa_url, pg_schema, connect_timeout_s)
        self._flavor = self.dialect  # "mariadb" or "mysql" once known, for the timeout variable
        self._lock = threading.Lock()
        self._schema: Schema | None = None
        try:
            # The one schema name a query may prefix tables with (public, the database, main).
            self.qualifiers: tuple[str, ...] = (self._connect(),)
        except Exception:
            self._engine.dispose()
            raise

    # ---- the Connector protocol ----

    def schema(self, refresh: bool = False) -> Schema:
        with self._lock:
            if self._schema is None or refresh:
                self._schema = Schema(self.name, self.dialect, self._introspect())
            return self._schema

    def open(self, sql: str, max_rows: int = 1000, timeout_s: float = 30.0) -> Rows:
        if max_rows < 1 or timeout_s <= 0:
            raise InvalidArgument(f"max_rows must be >= 1 and timeout_s > 0 (got {max_rows}, {timeout_s})")
        checked = guard(sql, self.dialect, self.schema(), max_rows, self.qualifiers)
        return self._open(checked.run_sql, max_rows, timeout_s, shown=checked.sql, tables=checked.tables, stream=True)

    def execute(self, sql: str, max_rows: int = 1000, timeout_s: float = 30.0) -> ResultSet:
        return self.open(sql, max_rows, timeout_s).result()

    def close(self) -> None:
        self._engine.dispose()

    def __repr__(self) -> str:
        return f"SqlConnector({self.name!r}, {self.url!r})"

    # ---- connections ----

    def _parse(self, url: str, schema: str | None) -> tuple[URL, str, str | None]:
        try:
            sa_url = make_url(url)
        except ArgumentError:
            raise InvalidArgument(f"not a database URL: {self.url!r}", reason=URL_INVALID) from None
        scheme = sa_url.get_backend_name()
        dialect = SCHEMES.get(scheme)
        if dialect is None:
            raise InvalidArgument(
                f"unsupported database URL scheme {scheme!r}; supported: {', '.join(SCHEMES)}", reason=URL_INVALID
            )
        sa_url = sa_url.set(drivername=DRIVERS[dialect])
        pg_schema = schema or sa_url.query.get("schema")
        if isinstance(pg_schema, tuple):
            pg_schema = pg_schema[-1]
        sa_url = sa_url.difference_update_query(["schema"])
        if pg_schema is not None and (dialect != "postgres" or not _IDENT.fullmatch(pg_schema)):
            raise InvalidArgument(
                f"schema={pg_schema!r}: a schema option is for PostgreSQL, a plain identifier", reason=URL_INVALID
            )
        if dialect == "sqlite":
            if not sa_url.database or sa_url.database == ":memory:":
                raise InvalidArgument(
                    "a SQLite URL must name a database file: sqlite:////abs/path/file.db", reason=URL_INVALID
                )
            if not Path(sa_url.database).is_file():
                raise NotFound(f"SQLite database file not found: {sa_url.database}", reason="FILE_NOT_FOUND",
                               metadata={"path": sa_url.database})
        elif not sa_url.database:
            raise InvalidArgument(f"the URL must name a database: {self.url}", reason=URL_INVALID)
        return sa_url, dialect, pg_schema

    def _create_engine(self, url: URL, pg_schema: str | None, connect_timeout_s: float) -> sa.Engine:
        if self.dialect == "sqlite":
            uri = Path(str(url.database)).resolve().as_uri() + "?mode=ro"

            def creator() -> sqlite3.Connection:
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
                conn.execute("PRAGMA query_only=ON")
                # no ATTACH of another file, whatever gets past the guard (extension loading is
                # off already: Python never enables it unless asked)
                conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
                return conn

            # an explicit pool: "sqlite://" alone would make SQLAlchemy assume a per-thread memory DB
            return sa.create_engine("sqlite+pysqlite://", creator=creator, poolclass=QueuePool)
        if self.dialect == "postgres":
            options = "-c default_transaction_read_only=on"
            if pg_schema:
                options += f' -c search_path="{pg_schema}"'
            args: dict[str, Any] = {"options": options, "connect_timeout": max(1, int(connect_timeout_s))}
        else:
            args = {
                "connect_timeout": max(1, int(connect_timeout_s)),
                "init_command": "SET SESSION TRANSACTION READ ONLY",
            }
        engine = sa.create_engine(url, connect_args=args, pool_pre_ping=True, pool_size=4, max_overflow=4)
        if self.dialect == "postgres":
            sa.event.listen(engine, "connect", _exact_json)
        return engine

    def _connect(self) -> str:
        """Open one connection now (so a bad URL fails at registration) and return the default schema."""
        query = {
            "sqlite": "SELECT 'main'",
            "postgres": "SELECT current_schema()",
            "mysql": "SELECT DATABASE(), VERSION()",
        }[self.dialect]
        try:
            raw = self._engine.raw_connection()
        except Exception as e:  # noqa: BLE001 - every driver has its own connection errors
            raise Unavailable(f"cannot connect to {self.url}: {self._message(e)}", reason=UNAVAILABLE) from None
        try:
            cur = raw.cursor()
            cur.execute(query)
            row = cur.fetchone()
            raw.rollback()
        except Exception as e:  # noqa: BLE001
            raw.invalidate()
            raise Unavailable(f"cannot use {self.url}: {self._message(e)}", reason=UNAVAILABLE) from None
        finally:
            raw.close()
        if row is None or row[0] is None:
            raise InvalidArgument(
                f"{self.url}: no default schema (does the schema or database exist?)", reason=URL_INVALID
            )
        if self.dialect == "mysql":
            self._flavor = "mariadb" if "mariadb" in str(row[1]).lower() else "mysql"
        return str(row[0])

    def _run(self, sql: str, max_rows: int, timeout_s: float) -> ResultSet:
        """Run one statement read-only under a time limit, always rolled back; no guard here.

        Callers: introspection with statements built here, and tests that prove the connection
        itself refuses writes.
        """
        return self._open(sql, max_rows, timeout_s).result()

    def _open(self, sql: str, max_rows: int, timeout_s: float, shown: str | None = None,
              tables: list[str] | None = None, stream: bool = False) -> Rows:
        """Start one statement in a read-only, time-limited transaction that closing the Rows
        rolls back. stream=True reads rows from the server as they are fetched: a server-side
        cursor on PostgreSQL, an unbuffered one on MariaDB/MySQL (SQLite always steps lazily).
        Those hold only a SELECT, which is all the guard lets through."""
        deadline = time.monotonic() + timeout_s
        try:
            raw = self._engine.raw_connection()
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"cannot connect to {self.url}: {self._message(e)}", reason=UNAVAILABLE) from None
        cleanup: Callable[[], None] = lambda: None  # noqa: E731
        cur: Any = None

        def release() -> None:
            try:
                cleanup()
                if cur is not None:
                    cur.close()  # an unbuffered MySQL cursor reads what is left (at most the guard's LIMIT)
                raw.rollback()
            except Exception:  # noqa: BLE001 - a broken connection must not stay in the pool
                raw.invalidate()
            raw.close()

        def read(n: int) -> list[Any]:
            try:
                return list(cur.fetchmany(n)) if cur.description else []
            except RagloomError:
                raise
            except Exception as e:  # noqa: BLE001 - translated into our hierarchy
                raise self._translate(e, timeout_s, deadline) from None

        try:
            plain = raw.cursor()
            cleanup = self._begin(raw.driver_connection, plain, timeout_s, deadline)
            cur = self._cursor(raw, plain) if stream else plain
            cur.execute(sql)
            columns = [d[0] for d in cur.description or []]
            types = self._result_types(cur)
        except BaseException as e:
            release()
            if isinstance(e, RagloomError) or not isinstance(e, Exception):
                raise
            raise self._translate(e, timeout_s, deadline) from None
        return Rows(shown if shown is not None else sql, columns, types, tables or [], read, release, max_rows,
                    timeout_s, deadline)

    def _cursor(self, raw: Any, plain: Any) -> Any:
        """The cursor a streamed statement runs on (see _open)."""
        if self.dialect == "postgres":
            # one statement per transaction at a time, so one name serves every connection
            return raw.driver_connection.cursor(name="ragloom_rows")
        if self.dialect == "mysql":
            import pymysql.cursors

            return raw.driver_connection.cursor(pymysql.cursors.SSCursor)
        return plain

    def _begin(self, driver: Any, cur: Any, timeout_s: float, deadline: float) -> Callable[[], None]:
        """Start the read-only, time-limited transaction; returns what undoes per-run settings."""
        if self.dialect == "sqlite":
            # Re-asserted per run: a pooled connection must not keep what an earlier statement set.
            cur.execute("PRAGMA query_only=ON")
            # SQLite has no statement timeout: the VM asks every 1000 instructions whether to stop
            driver.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
            return lambda: driver.set_progress_handler(None, 0)
        if self.dialect == "postgres":
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
        # MySQL session variables outlive a rollback, so the read-only default is set again each time
        elif self._flavor == "mariadb":
            cur.execute("SET SESSION TRANSACTION READ ONLY")
            cur.execute(f"SET SESSION max_statement_time = {max(0.001, timeout_s):.3f}")
            cur.execute("START TRANSACTION READ ONLY")
        else:
            cur.execute("SET SESSION TRANSACTION READ ONLY")
            cur.execute(f"SET SESSION max_execution_time = {max(1, int(timeout_s * 1000))}")
            cur.execute("START TRANSACTION READ ONLY")
        return lambda: None

    def _result_types(self, cur: Any) -> list[str]:
        """The result's column types as the driver reports them; "" where it reports none."""
        description = cur.description or []
        if self.dialect == "postgres":
            # psycopg: the type name with modifiers ("numeric(10,2)", "int4[]"); a type it does not
            # know (a user-defined enum) shows as its bare oid, which tells a client nothing
            names = [str(getattr(d, "type_display", "") or "") for d in description]
            return ["" if n.isdigit() else n for n in names]
        if self.dialect == "mysql":
            # the character set (binary or text) and the flags are only on pymysql's field objects
            fields = getattr(getattr(cur, "_result", None), "fields", None) or [None] * len(description)
            return [_mysql_type(d[1], f) for d, f in zip(description, fields)]
        return [""] * len(description)  # SQLite's cursor reports no types (the values have them)

    # ---- errors ----

    def _message(self, e: BaseException) -> str:
        e = getattr(e, "orig", None) or e  # SQLAlchemy wraps the driver's exception
        if len(e.args) == 2 and isinstance(e.args[0], int):  # pymysql: (code, message)
            text = f"{e.args[1]} (error {e.args[0]})"
        else:
            text = str(e).strip() or type(e).__name__
        return clip_error(scrub(text, *self._secrets))

    def _translate(self, e: Exception, timeout_s: float, deadline: float) -> RagloomError:
        """A driver error as ours: time limit, read-only refusal, lost connection, or bad SQL."""
        message = self._message(e)
        kind = type(e).__name__
        code = e.args[0] if e.args and isinstance(e.args[0], int) else None  # pymysql (code, message)
        sqlstate = getattr(e, "sqlstate", None)  # psycopg
        if (
            kind == "QueryCanceled"
            or code in (1969, 3024, 1317)
            or (isinstance(e, sqlite3.OperationalError) and "interrupted" in message and time.monotonic() >= deadline)
        ):
            return DeadlineExceeded(f"query exceeded the {timeout_s:g}s time limit ({message})", reason="SQL_TIMEOUT")
        if sqlstate == "25006" or code in (1792, 1290) or "readonly database" in message:
            return ForbiddenQuery(f"the connection is read-only: {message}")
        # psycopg raises subclasses (AdminShutdown for pg_terminate_backend, 57P01): match by class
        # ancestry and SQLSTATE (08 connection exception, 57 operator intervention), not by name
        operational = any(c.__name__ == "OperationalError" for c in type(e).__mro__)
        lost_pg = self.dialect == "postgres" and operational and (sqlstate or "08")[:2] in ("08", "57")
        if lost_pg or code in (2003, 2006, 2013):
            return Unavailable(f"lost the connection to {self.url}: {message}", reason=UNAVAILABLE)
        label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}.get(self.dialect, "MariaDB" if self._flavor == "mariadb" else "MySQL")
        return SqlError(f"{label} error: {message}")

    # ---- introspection ----

    def _introspect(self) -> list[Table]:
        tables: list[Table] = []
        schema = self._pg_schema
        try:
            with self._engine.connect() as conn:
                insp = sa.inspect(conn)
                views = set(insp.get_view_names(schema=schema))
                if self.dialect == "postgres":
                    views |= set(insp.get_materialized_view_names(schema=schema))
                for name in sorted(set(insp.get_table_names(schema=schema)) | views):
                    table = self._describe_table(insp, name, schema, name in views)
                    self._primary_keys_not_null(conn, table)
                    tables.append(table)
        except RagloomError:
            raise
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"cannot read the schema of {self.url}: {self._message(e)}", reason=UNAVAILABLE) from None
        for table in tables:
            self._add_samples(table)
        return tables

    def _describe_table(self, insp: Any, name: str, schema: str | None, is_view: bool) -> Table:
        pk = (insp.get_pk_constraint(name, schema=schema) or {}).get("constrained_columns") or []
        columns = [
            Column(
                name=c["name"],
                type=self._type_name(c["type"]),
                nullable=bool(c.get("nullable", True)),
                primary_key=c["name"] in pk,
                description=c.get("comment") or "",
            )
            for c in insp.get_columns(name, schema=schema)
        ]
        fks = [
            ForeignKey(list(fk["constrained_columns"]), fk["referred_table"], list(fk["referred_columns"]))
            for fk in insp.get_foreign_keys(name, schema=schema)
            if fk.get("referred_table")
        ]
        try:
            description = (insp.get_table_comment(name, schema=schema) or {}).get("text") or ""
        except NotImplementedError:  # SQLite has no comments
            description = ""
        if is_view:
            description = f"(view) {description}".strip()
        return Table(name, columns, list(pk), fks, None, description)

    def _primary_keys_not_null(self, conn: sa.Connection, table: Table) -> None:
        """Mark the primary key columns the database keeps non-null as such.

        PostgreSQL and MySQL add NOT NULL to every primary key column. SQLite does not (a legacy
        bug it keeps: `id TEXT PRIMARY KEY` takes NULLs) except for the rowid alias, a lone
        `INTEGER PRIMARY KEY` column, which can never be NULL; the inspector shows the type
        normalized (INT reads as INTEGER, but only the exact word INTEGER makes the alias), so the
        declared type comes from PRAGMA table_info. WITHOUT ROWID tables already say NOT NULL."""
        if not table.primary_key:
            return
        if self.dialect != "sqlite":
            for name in table.primary_key:
                if (column := table.column(name)) is not None:
                    column.nullable = False
            return
        if len(table.primary_key) != 1:
            return
        quoted = self._engine.dialect.identifier_preparer.quote(table.name)
        declared = {row[1]: str(row[2] or "") for row in conn.exec_driver_sql(f"PRAGMA table_info({quoted})")}
        (name,) = table.primary_key
        column = table.column(name)
        if column is not None and declared.get(column.name, "").strip().upper() == "INTEGER":
            column.nullable = False

    def _type_name(self, type_: Any) -> str:
        try:
            return str(type_.compile(dialect=self._engine.dialect))
        except Exception:  # noqa: BLE001 - NullType and exotic types cannot always compile
            return type(type_).__name__.upper()

    def _add_samples(self, table: Table) -> None:
        """Row count and up to SAMPLES distinct non-null values per column, each query time-limited."""
        prep = self._engine.dialect.identifier_preparer
        quoted = prep.quote(table.name)
        if self._pg_schema:
            quoted = f"{prep.quote_schema(self._pg_schema)}.{quoted}"
        try:
            counted = self._run(f"SELECT count(*) FROM {quoted}", 1, INTROSPECT_TIMEOUT_S)
            table.row_count = int(counted.rows[0][0])
            sampled = self._run(f"SELECT * FROM {quoted} LIMIT {SAMPLE_ROWS}", SAMPLE_ROWS, INTROSPECT_TIMEOUT_S)
        except RagloomError as e:  # a huge or odd table still gets its columns described
            log.warning("%s: no samples for %s: %s", self.name, table.name, e)
            return
        for i, name in enumerate(sampled.columns):
            column = table.column(name)
            if column is not None:
                column.samples = column_samples(sampled.rows, i, SAMPLES)


def _exact_json(dbapi_connection: Any, _record: Any) -> None:
    """json/jsonb numbers as Decimal, not float: "2.50" stays 2.50 and 12345678901234567.89 keeps
    its digits in the JSON text a Cell carries (values.json_text writes Decimals exactly)."""
    from psycopg.types.json import set_json_loads

    set_json_loads(functools.partial(json.loads, parse_float=decimal.Decimal), dbapi_connection)


def _mysql_type(code: Any, field: Any) -> str:
    """A pymysql result column's SQL type name ("BIGINT UNSIGNED", "BLOB", "VARCHAR"); "" if unknown."""
    name = _MYSQL_TYPES.get(code, "") if isinstance(code, int) else ""
    if not name or field is None:
        return name
    flags = int(getattr(field, "flags", 0) or 0)
    if name in _MYSQL_INTS and flags & _MYSQL_UNSIGNED:
        return f"{name} UNSIGNED"
    if name == "CHAR" and flags & (_MYSQL_ENUM | _MYSQL_SET):
        return "SET" if flags & _MYSQL_SET else "ENUM"
    if name in _MYSQL_BINARY and getattr(field, "charsetnr", None) == _MYSQL_BINARY_CHARSET:
        return _MYSQL_BINARY[name]
    return name
