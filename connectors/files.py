"""Files as tables: a CSV, Parquet or Excel file, or a folder of them, queried through DuckDB.

Each file becomes one table named after its file name (lower-cased, non-identifier characters
replaced by "_"; an Excel workbook with several sheets gives one table per sheet, stem_sheet).
The data is copied into an in-memory DuckDB database at load time; then external access is
switched off and the configuration locked, so that no query, guarded or not, can read another
file (read_csv('/etc/passwd'), COPY, ATTACH, INSTALL). The source files are never written: a
statement can only change the in-memory copy, and every statement runs in a transaction that is
rolled back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from ragloom.connectors.base import Column, ResultSet, Rows, Schema, Table
from ragloom.connectors.guard import guard
from ragloom.connectors.values import clip_error, column_samples
from ragloom.errors import DeadlineExceeded, InvalidArgument, NotFound, SqlError

log = logging.getLogger(__name__)

SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".xlsx": "excel"}
SAMPLE_ROWS = 100
SAMPLES = 3
URL_INVALID = "CONNECTOR_URL_INVALID"  # the ErrorReason of a path that cannot be used as given


def is_table_file(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


class FileConnector:
    dialect = "duckdb"
    qualifiers = ("main", "memory")  # DuckDB's default schema and in-memory catalog

    def __init__(self, name: str, path: str | Path, allow: Callable[[Path], Path] | None = None) -> None:
        """`allow` (the server's sandbox: sandbox.py) checks each file before it is read and returns
        its resolved path, or raises: a folder inside the roots may hold symlinks out of them."""
        self.name = name
        self._allow = allow
        self._path = Path(path).expanduser()
        if not self._path.exists():
            raise NotFound(f"no such file or folder: {self._path}", reason="FILE_NOT_FOUND",
                           metadata={"path": str(self._path)})
        self.url = str(self._path)  # no credentials in a path
        self._lock = threading.Lock()
        self._con, self._schema = self._load()

    # ---- the Connector protocol ----

    def schema(self, refresh: bool = False) -> Schema:
        if refresh:  # the files may have changed: load them again, then swap
            con, schema = self._load()
            with self._lock:
                old, self._con, self._schema = self._con, con, schema
            old.close()
        return self._schema

    def open(self, sql: str, max_rows: int = 1000, timeout_s: float = 30.0) -> Rows:
        if max_rows < 1 or timeout_s <= 0:
            raise InvalidArgument(f"max_rows must be >= 1 and timeout_s > 0 (got {max_rows}, {timeout_s})")
        checked = guard(sql, self.dialect, self._schema, max_rows, self.qualifiers)
        return self._open(checked.run_sql, max_rows, timeout_s, shown=checked.sql, tables=checked.tables)

    def execute(self, sql: str, max_rows: int = 1000, timeout_s: float = 30.0) -> ResultSet:
        return self.open(sql, max_rows, timeout_s).result()

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __repr__(self) -> str:
        return f"FileConnector({self.name!r}, {self.url!r})"

    # ---- loading ----

    def _files(self) -> list[Path]:
        if self._path.is_dir():
            files = sorted(p for p in self._path.iterdir() if p.is_file() and is_table_file(p) and not p.name.startswith("."))
            if not files:
                raise InvalidArgument(f"{self._path} holds no {', '.join(SUFFIXES)} files", reason=URL_INVALID)
            return files
        if not is_table_file(self._path):
            raise InvalidArgument(
                f"{self._path.name}: unsupported file type; supported: {', '.join(SUFFIXES)}", reason=URL_INVALID
            )
        return [self._path]

    def _load(self) -> tuple[duckdb.DuckDBPyConnection, Schema]:
        con = duckdb.connect(":memory:")
        try:
            names: list[str] = []
            for path in self._files():
                source = self._allow(path) if self._allow is not None else path.resolve()
                try:
                    self._load_file(con, path, source, names)
                except duckdb.Error as e:
                    raise InvalidArgument(f"cannot read {path.name} as a table: {e}", reason=URL_INVALID) from None
            # From here on no statement can reach the file system or undo these settings.
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            tables = [self._describe(con, n) for n in names]
        except Exception:
            con.close()
            raise
        return con, Schema(self.name, self.dialect, tables)

    def _load_file(self, con: duckdb.DuckDBPyConnection, path: Path, source: Path, names: list[str]) -> None:
        """Load `source`, the file `path` resolves to (the path already checked), as `path`'s table."""
        kind = SUFFIXES[path.suffix.lower()]
        literal = "'" + str(source).replace("'", "''") + "'"
        if kind != "excel":
            name = _table_name(path.stem, names)
            reader = "read_csv_auto" if kind == "csv" else "read_parquet"
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM {reader}({literal})')
            names.append(name)
            return
        import pandas as pd  # only Excel needs pandas (and openpyxl under it)

        try:
            sheets = pd.read_excel(source, sheet_name=None, engine="openpyxl")
        except Exception as e:  # noqa: BLE001 - openpyxl raises many kinds for a bad workbook
            raise InvalidArgument(
                f"cannot read {path.name} as an Excel workbook: {e}", reason=URL_INVALID
            ) from None
        for sheet, frame in sheets.items():
            if frame.columns.empty:
                continue  # an empty sheet is not a table
            stem = path.stem if len(sheets) == 1 else f"{path.stem}_{sheet}"
            name = _table_name(stem, names)
            con.register("__ragloom_frame", frame)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM __ragloom_frame')
            con.unregister("__ragloom_frame")
            names.append(name)

    def _describe(self, con: duckdb.DuckDBPyConnection, name: str) -> Table:
        info = con.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
            "WHERE schema_name = 'main' AND table_name = ? ORDER BY column_index",
            [name],
        ).fetchall()
        columns = [Column(str(c), str(t), bool(n)) for c, t, n in info]
        count = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        rows = con.execute(f'SELECT * FROM "{name}" LIMIT {SAMPLE_ROWS}').fetchall()
        for i, column in enumerate(columns):
            column.samples = column_samples(rows, i, SAMPLES)
        return Table(name, columns, row_count=int(count[0]) if count else None)

    # ---- running ----

    def _run(self, sql: str, max_rows: int, timeout_s: float) -> ResultSet:
        """Run one statement without the guard, read to the end (introspection, tests)."""
        return self._open(sql, max_rows, timeout_s).result()

    def _open(self, sql: str, max_rows: int, timeout_s: float, shown: str | None = None,
              tables: list[str] | None = None) -> Rows:
        """Start one statement without the guard, in a transaction that closing the Rows rolls
        back; a timer interrupts it at timeout_s, reads included."""
        with self._lock:
            cur = self._con.cursor()  # its own connection to the same database: safe across threads
        timer = threading.Timer(timeout_s, cur.interrupt)
        timer.start()
        deadline = time.monotonic() + timeout_s

        def release() -> None:
            timer.cancel()
            try:
                cur.rollback()
            except duckdb.Error:
                pass  # no transaction left to roll back (the statement failed)
            cur.close()

        def read(n: int) -> list[Any]:
            try:
                return cur.fetchmany(n) if cur.description else []
            except duckdb.InterruptException:
                raise DeadlineExceeded(f"query exceeded the {timeout_s:g}s time limit", reason="SQL_TIMEOUT") from None
            except duckdb.Error as e:
                raise SqlError(clip_error(f"DuckDB error: {e}")) from None

        try:
            try:
                cur.begin()
                cur.execute(sql)
            except duckdb.InterruptException:
                raise DeadlineExceeded(f"query exceeded the {timeout_s:g}s time limit", reason="SQL_TIMEOUT") from None
            except duckdb.Error as e:
                raise SqlError(clip_error(f"DuckDB error: {e}")) from None
            columns = [d[0] for d in cur.description or []]
            # DuckDB types every result column, expressions included ("DECIMAL(10,2)", "INTEGER[]");
            # a bare NULL literal has the type "NULL", which says nothing
            types = [t if (t := str(d[1])) != '"NULL"' and t != "NULL" else "" for d in cur.description or []]
        except BaseException:
            release()
            raise
        return Rows(shown if shown is not None else sql, columns, types, tables or [], read, release, max_rows,
                    timeout_s, deadline)


def _table_name(stem: str, taken: list[str]) -> str:
    """A plain SQL identifier from a file name: 'Sales 2024 (final)' -> 'sales_2024_final'."""
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", stem).strip("_").lower() or "table"
    if name[0].isdigit():
        name = f"t_{name}"
    base, n = name, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name
