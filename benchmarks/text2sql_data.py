"""Data for benchmarks/text2sql.py: defog sql-eval questions, per-dialect gold SQL, the databases
on SQLite / PostgreSQL / MariaDB, and sql-eval's execution-accuracy comparison.

Everything here is plain Python plus sqlglot and the DB drivers; no model, no ragloom imports, so
the comparator is unit-testable on its own (tests/unit/test_text2sql_compare.py).

Questions (`../shared/data/text2sql/`, see its SOURCE.md):
- `questions.jsonl` gives ids, db, category and the SQLite golds (already split into alternatives);
- `raw/questions_gen_{postgres,mysql}.csv` hold the same 210 rows in the same order. Their `query`
  field is one or more gold statements separated by `;`. The Postgres file also writes column
  alternatives as `SELECT {a.x, a.y}, ... GROUP BY {}`; `expand_braces` expands them exactly the way
  sql-eval's `get_all_minimal_queries` does (every non-empty subset of the first brace group, in
  order of size, and `GROUP BY {}` replaced by the same columns).
- A few rows of the Postgres/MySQL files word the question or the instructions differently (ILIKE
  instead of LIKE; ids 160, 177, 197 reword the question); the gold of a dialect answers that
  dialect's own text, so `Question.text(dialect)` / `Question.instructions_for(dialect)` return it.

Databases:
- SQLite: `dbs/<db>.sqlite`, opened read-only.
- PostgreSQL: `ensure_postgres` creates `t2s_<db>` and loads `dumps/<db>.sql` unchanged with
  `psql -1 -v ON_ERROR_STOP=1`. A database comment records that the load finished (and when), so
  a second call does nothing. The dump of ewallet puts its tables in schema `consumer_div`; the
  database's `search_path` is set to `consumer_div, public`, so unqualified names (what a model
  writes, and what the SQLite golds use) and the Postgres golds' qualified names both work.
- MariaDB/MySQL: `ensure_mariadb` creates `t2s_<db>` with tables from the dump's CREATE TABLE
  statements translated by sqlglot (postgres -> mysql: DATE stays DATE, TIMESTAMP becomes
  DATETIME(6), NUMERIC(p,s) DECIMAL(p,s) (bare NUMERIC DECIMAL(38,10)), REAL FLOAT, DOUBLE PRECISION
  and FLOAT DOUBLE, BOOLEAN TINYINT(1), SERIAL INT; primary keys kept where
  MySQL allows them (not on TEXT), foreign keys kept where InnoDB accepts
  them, defaults dropped) and copies every row from the loaded
  PostgreSQL database (so the Postgres-only expressions of the dumps' INSERTs are evaluated by
  Postgres itself, exactly as the SQLite files were built). Row counts are checked against SQLite.

MySQL golds: sql-eval wrote them for MySQL 8 with databases named `<db>`; a gold that fails on
MariaDB as written is retried after `adapt_mysql_gold` (database qualifier dropped; an aggregate's
alias inside an ORDER BY expression replaced by the aggregate), and `GoldCache.adapted` records it.

Scoring: `results_match` / `is_correct` mirror sql-eval's `compare_query_results` (eval/eval.py:
`compare_df(gold, gen) or subset_df(gold, gen)`, any gold alternative): gold columns matched to
prediction columns by their values (names ignored, extra prediction columns allowed), duplicate rows
dropped (`normalize_table`), then rows compared as a multiset. Where this differs from sql-eval:
order counts when the gold has a top-level ORDER BY (sql-eval: category order_by or the words
order/sort/arrange in the question), and then only on the gold's sort columns, so ties may come in
any order; values are normalized (floats/decimals to 4 decimals instead of pandas' rtol 1e-5,
dates as ISO text, a midnight timestamp equal to its date); the column assignment is searched
rather than greedy.

Dates: six dumps compute dates from "now" at load time; the SQLite files froze them on 2026-11-23.
A Postgres/MariaDB load made on another day holds other dates than the SQLite files, and golds
using CURRENT_DATE shift with the calendar. Comparisons are always prediction vs gold on the same
database at the same time, so each dialect is self-consistent; `load_dates()` reports the load days.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import hashlib
import itertools
import json
import math
import re
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text2sql"
DIALECTS = ("sqlite", "postgres", "mysql")
CATEGORIES = ("group_by", "order_by", "ratio", "table_join", "instruct", "date_functions")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306"
DB_PREFIX = "t2s_"
MARKER = "ragloom text2sql"

# ---------------------------------------------------------------------------------------------
# questions and gold SQL


def split_statements(sql: str) -> list[str]:
    """Split on `;` outside '...', "..." and `...` quotes (doubled quotes are escapes); strip, drop empty."""
    out: list[str] = []
    buf: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            buf.append(ch)
            if ch == quote:
                if i + 1 < len(sql) and sql[i + 1] == quote:  # '' inside a literal
                    buf.append(sql[i + 1])
                    i += 1
                else:
                    quote = None
        elif ch in "'\"`":
            quote = ch
            buf.append(ch)
        elif ch == ";":
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    out.append("".join(buf))
    return [s.strip() for s in out if s.strip()]


def expand_braces(query: str) -> list[str]:
    """sql-eval's get_all_minimal_queries for one statement: `SELECT {a, b} ... GROUP BY {}` gives
    `SELECT a ... GROUP BY a`, `SELECT b ... GROUP BY b`, `SELECT a, b ... GROUP BY a, b`."""
    start = query.find("{")
    end = query.find("}", start + 1)
    if start == -1 or end == -1:
        return [query]
    options = query[start + 1 : end].split(",")
    out = []
    for r in range(1, len(options) + 1):
        for combo in itertools.combinations(options, r):
            cols = ", ".join(c.strip() for c in combo)
            right = query[end + 1 :].replace("GROUP BY {}", f"GROUP BY {cols}")
            out.append(query[:start] + cols + right)
    return out


def gold_alternatives(field_text: str) -> list[str]:
    """A CSV `query` field -> every acceptable gold statement."""
    return [q for s in split_statements(field_text) for q in expand_braces(s)]


@dataclass
class Question:
    id: int
    db: str
    category: str
    question: str  # the SQLite wording (questions.jsonl)
    instructions: str
    gold: dict[str, list[str]]  # dialect -> gold alternatives
    wording: dict[str, tuple[str, str]] = field(default_factory=dict)  # dialect -> (question, instructions)

    def text(self, dialect: str) -> str:
        return self.wording.get(dialect, (self.question, self.instructions))[0]

    def instructions_for(self, dialect: str) -> str:
        return self.wording.get(dialect, (self.question, self.instructions))[1]


def load_questions(data_dir: Path = DEFAULT_DATA) -> list[Question]:
    data_dir = Path(data_dir)
    base = [json.loads(line) for line in (data_dir / "questions.jsonl").read_text().splitlines() if line.strip()]
    questions = [
        Question(
            id=q["id"],
            db=q["db"],
            category=q["category"],
            question=q["question"],
            instructions=q.get("instructions") or "",
            gold={"sqlite": list(q["gold_sql_alternatives"])},
            wording={"sqlite": (q["question"], q.get("instructions") or "")},
        )
        for q in base
    ]
    for dialect in ("postgres", "mysql"):
        path = data_dir / "raw" / f"questions_gen_{dialect}.csv"
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != len(questions):
            raise ValueError(f"{path}: {len(rows)} rows, questions.jsonl has {len(questions)}")
        for q, row in zip(questions, rows, strict=True):
            if row["db_name"] != q.db or row["query_category"] != q.category:
                raise ValueError(f"{path}: row {q.id} is {row['db_name']}/{row['query_category']}, "
                                 f"questions.jsonl has {q.db}/{q.category}")
            q.gold[dialect] = gold_alternatives(row["query"])
            q.wording[dialect] = (row["question"], row.get("instructions") or "")
    return questions


def select_questions(questions: Sequence[Question], limit: int | None = None, every: int | None = None,
                     categories: Iterable[str] | None = None) -> list[Question]:
    """A subset stratified by category, returned in id order.

    every=K: every K-th question of each category (its 1st, K+1-th, ...). limit=N: N questions,
    as equal a share per category as N allows, evenly spaced through each category (which spreads
    them over the databases, since ids are grouped by database). Both: `every`, then `limit`."""
    cats = list(categories) if categories else list(dict.fromkeys(q.category for q in questions))
    by_cat = {c: [q for q in questions if q.category == c] for c in cats}
    if every and every > 1:
        by_cat = {c: qs[::every] for c, qs in by_cat.items()}
    if limit is not None:
        share = {c: 0 for c in cats}
        left = limit
        while left > 0 and any(share[c] < len(by_cat[c]) for c in cats):
            for c in cats:
                if left > 0 and share[c] < len(by_cat[c]):
                    share[c] += 1
                    left -= 1
        for c in cats:
            qs, k = by_cat[c], share[c]
            by_cat[c] = [qs[(i * len(qs)) // k] for i in range(k)] if k else []
    return sorted((q for qs in by_cat.values() for q in qs), key=lambda q: q.id)


# ---------------------------------------------------------------------------------------------
# databases


def sqlite_path(db: str, data_dir: Path = DEFAULT_DATA) -> Path:
    return Path(data_dir) / "dbs" / f"{db}.sqlite"


def sqlite_url(db: str, data_dir: Path = DEFAULT_DATA) -> str:
    return "sqlite:///" + str(sqlite_path(db, data_dir).resolve())


def _server(base_url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    u = make_url(base_url)
    return {"host": u.host or "127.0.0.1", "port": u.port, "user": u.username, "password": u.password,
            "drivername": u.drivername}


def _with_db(base_url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(base_url).set(database=database).render_as_string(hide_password=False)


def _pg_connect(base_url: str, database: str, autocommit: bool = True) -> Any:
    import psycopg

    s = _server(base_url)
    return psycopg.connect(host=s["host"], port=s["port"] or 5432, user=s["user"] or "postgres",
                           password=s["password"], dbname=database, autocommit=autocommit, connect_timeout=10)


def _mysql_connect(base_url: str, database: str | None = None, **kw: Any) -> Any:
    import pymysql

    s = _server(base_url)
    return pymysql.connect(host=s["host"], port=s["port"] or 3306, user=s["user"] or "root",
                           password=s["password"] or "", database=database, charset="utf8mb4",
                           autocommit=True, **kw)


def _dump_digest(dump: Path) -> str:
    return hashlib.sha256(dump.read_bytes()).hexdigest()[:16]


def _marker(dump: Path) -> str:
    return f"{MARKER} {dump.name} sha256:{_dump_digest(dump)} loaded {dt.date.today().isoformat()}"


def _marker_ok(comment: str | None, dump: Path) -> bool:
    return bool(comment) and comment.startswith(f"{MARKER} {dump.name} sha256:{_dump_digest(dump)} ")


def dump_schemas(dump: Path) -> list[str]:
    return re.findall(r"CREATE SCHEMA IF NOT EXISTS (\w+)", dump.read_text(), re.I)


def ensure_postgres(db: str, data_dir: Path = DEFAULT_DATA, base_url: str = DEFAULT_PG,
                    reload: bool = False, log: Callable[[str], None] | None = None) -> str:
    """Database `t2s_<db>` holding dumps/<db>.sql; loads it unless a finished load is recorded. Returns its URL."""
    dump = Path(data_dir) / "dumps" / f"{db}.sql"
    name = DB_PREFIX + db
    s = _server(base_url)
    with _pg_connect(base_url, "postgres") as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row is not None and _marker_ok(row[0], dump) and not reload:
            return _with_db(base_url, name)
        if row is not None:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    if log:
        log(f"postgres: loading {dump.name} into {name}")
    cmd = ["psql", "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-h", s["host"], "-p", str(s["port"] or 5432),
           "-U", s["user"] or "postgres", "-d", name, "-f", str(dump)]
    env = None
    if s["password"]:
        import os

        env = {**os.environ, "PGPASSWORD": s["password"]}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"psql {dump.name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    with _pg_connect(base_url, "postgres") as conn:
        schemas = dump_schemas(dump)
        if schemas:
            path = ", ".join([*schemas, "public"])
            conn.execute(f'ALTER DATABASE "{name}" SET search_path = {path}')
        comment = _marker(dump).replace("'", "''")
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{comment}'")
    return _with_db(base_url, name)


@dataclass
class TableDef:
    name: str  # the dump's spelling, without schema (e.g. sbCustomer)
    schema: str | None  # consumer_div, or None for public
    columns: list[str]
    mysql_ddl: str
    mysql_foreign_keys: list[str] = field(default_factory=list)  # ALTER TABLE ... ADD FOREIGN KEY


_MYSQL_NO_KEY_TYPES = ("TEXT", "BLOB", "JSON")


def mysql_table_defs(dump: Path) -> list[TableDef]:
    """The dump's CREATE TABLE statements, translated to MySQL column definitions by sqlglot."""
    import sqlglot
    from sqlglot import exp

    text = dump.read_text()
    defs: list[TableDef] = []
    for stmt in split_statements(re.sub(r"--[^\n]*", "", text)):
        if not re.match(r"CREATE\s+TABLE", stmt, re.I):
            continue
        tree = sqlglot.parse_one(stmt, read="postgres")
        schema_node = tree.this  # exp.Schema: table + column defs
        table = schema_node.this
        tname, tschema = table.name, (table.db or None)
        cols: list[str] = []
        col_sql: list[str] = []
        pk: list[str] = []
        fks: list[tuple[list[str], Any]] = []  # (columns, referenced exp.Schema: table + columns)
        for cdef in schema_node.expressions:
            if isinstance(cdef, exp.ColumnDef):
                cname = cdef.name
                dtype = cdef.args.get("kind")
                tsql = dtype.sql("mysql") if dtype is not None else "TEXT"
                upper = tsql.upper()
                if upper in ("SERIAL", "INT AUTO_INCREMENT"):
                    tsql = "INT"
                elif upper == "BIGSERIAL":
                    tsql = "BIGINT"
                elif upper in ("DATETIME", "TIMESTAMP"):  # keep Postgres' microseconds
                    tsql = "DATETIME(6)"
                elif upper == "DECIMAL":  # Postgres NUMERIC without precision; MySQL's default is (10, 0)
                    tsql = "DECIMAL(38, 10)"
                not_null = False
                for c in cdef.args.get("constraints") or []:
                    kind = c.args.get("kind")
                    if isinstance(kind, exp.PrimaryKeyColumnConstraint):
                        pk.append(cname)
                    elif isinstance(kind, exp.NotNullColumnConstraint) and not kind.args.get("allow_null"):
                        not_null = True
                    elif isinstance(kind, exp.Reference):
                        fks.append(([cname], kind.this))
                cols.append(cname)
                col_sql.append(f"`{cname}` {tsql}" + (" NOT NULL" if not_null else ""))
            elif isinstance(cdef, exp.PrimaryKey):
                pk.extend(e.name for e in cdef.expressions)
            elif isinstance(cdef, exp.ForeignKey) and cdef.args.get("reference") is not None:
                fks.append(([e.name for e in cdef.expressions], cdef.args["reference"].this))
        types = {c: s.split(" ", 1)[1].upper() for c, s in zip(cols, col_sql, strict=True)}
        if pk and not any(types[c].startswith(_MYSQL_NO_KEY_TYPES) for c in pk if c in types):
            col_sql.append("PRIMARY KEY (" + ", ".join(f"`{c}`" for c in pk) + ")")
        fk_sql = [
            f"ALTER TABLE `{tname}` ADD FOREIGN KEY (" + ", ".join(f"`{c}`" for c in fk_cols) + ") REFERENCES "
            f"`{ref.this.name}` (" + ", ".join(f"`{e.name}`" for e in ref.expressions) + ")"
            for fk_cols, ref in fks
        ]
        ddl = f"CREATE TABLE `{tname}` (\n  " + ",\n  ".join(col_sql) + "\n) DEFAULT CHARSET=utf8mb4"
        defs.append(TableDef(tname, tschema, cols, ddl, fk_sql))
    return defs


def sqlite_row_counts(db: str, data_dir: Path = DEFAULT_DATA) -> dict[str, int]:
    con = sqlite3.connect(f"file:{sqlite_path(db, data_dir)}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {n: con.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        con.close()


def postgres_row_counts(db: str, data_dir: Path = DEFAULT_DATA, base_url: str = DEFAULT_PG) -> dict[str, int]:
    dump = Path(data_dir) / "dumps" / f"{db}.sql"
    out = {}
    with _pg_connect(base_url, DB_PREFIX + db) as conn:
        for t in mysql_table_defs(dump):
            q = f"{t.schema}.{t.name}" if t.schema else t.name
            out[t.name] = conn.execute(f"SELECT COUNT(*) FROM {q}").fetchone()[0]
    return out


def mysql_row_counts(db: str, base_url: str = DEFAULT_MYSQL) -> dict[str, int]:
    conn = _mysql_connect(base_url, DB_PREFIX + db)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            names = [r[0] for r in cur.fetchall()]
            out = {}
            for n in names:
                cur.execute(f"SELECT COUNT(*) FROM `{n}`")
                out[n] = cur.fetchone()[0]
            return out
    finally:
        conn.close()


def ensure_mariadb(db: str, data_dir: Path = DEFAULT_DATA, base_url: str = DEFAULT_MYSQL,
                   pg_base_url: str = DEFAULT_PG, reload: bool = False,
                   log: Callable[[str], None] | None = None) -> str:
    """Database `t2s_<db>` on MariaDB/MySQL with the dump's tables and rows (copied from PostgreSQL,
    which ensure_postgres loads first). Row counts must equal the SQLite DB's. Returns its URL."""
    dump = Path(data_dir) / "dumps" / f"{db}.sql"
    name = DB_PREFIX + db
    conn = _mysql_connect(base_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT SCHEMA_COMMENT FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
            row = cur.fetchone()
            if row is not None and _marker_ok(row[0], dump) and not reload:
                return _with_db(base_url, name)
    finally:
        conn.close()
    ensure_postgres(db, data_dir, pg_base_url, reload=reload, log=log)
    if log:
        log(f"mysql: building {name} from {dump.name} (DDL via sqlglot, rows from PostgreSQL)")
    defs = mysql_table_defs(dump)
    conn = _mysql_connect(base_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")  # server default collation, as sql-eval's MySQL
            cur.execute(f"USE `{name}`")
            cur.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_AUTO_VALUE_ON_ZERO'")
            cur.execute("SET SESSION foreign_key_checks = 0")  # tables and rows come in dump order
            with _pg_connect(pg_base_url, name) as pg:
                for t in defs:
                    cur.execute(t.mysql_ddl)
                    src = f"{t.schema}.{t.name}" if t.schema else t.name
                    rows = pg.execute(f"SELECT {', '.join(t.columns)} FROM {src}").fetchall()
                    if rows:
                        cols = ", ".join(f"`{c}`" for c in t.columns)
                        marks = ", ".join(["%s"] * len(t.columns))
                        cur.executemany(f"INSERT INTO `{t.name}` ({cols}) VALUES ({marks})", rows)
                for t in defs:  # InnoDB wants equal types on both sides (ewallet has INT -> BIGINT): skip those
                    for fk in t.mysql_foreign_keys:
                        try:
                            cur.execute(fk)
                        except Exception as e:
                            if log:
                                log(f"mysql: {name}: skipped {fk}: {e}")
        want = sqlite_row_counts(db, data_dir)
        got = mysql_row_counts(db, base_url)
        if want != got:
            raise RuntimeError(f"{name}: row counts differ from SQLite: sqlite {want} mysql {got}")
        with conn.cursor() as cur:
            comment = _marker(dump).replace("'", "''")
            cur.execute(f"ALTER DATABASE `{name}` COMMENT '{comment}'")
    finally:
        conn.close()
    return _with_db(base_url, name)


def load_dates(dbs: Iterable[str], pg_base_url: str = DEFAULT_PG, mysql_base_url: str = DEFAULT_MYSQL) -> dict[str, dict[str, str | None]]:
    """When each server database was loaded (from its marker comment), for the report."""
    out: dict[str, dict[str, str | None]] = {}
    for db in dbs:
        name = DB_PREFIX + db
        rec: dict[str, str | None] = {"postgres": None, "mysql": None}
        try:
            with _pg_connect(pg_base_url, "postgres") as conn:
                r = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                                 (name,)).fetchone()
                rec["postgres"] = r[0].rsplit(" ", 1)[-1] if r and r[0] else None
        except Exception:
            pass
        try:
            conn = _mysql_connect(mysql_base_url)
            with conn.cursor() as cur:
                cur.execute("SELECT SCHEMA_COMMENT FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
                r = cur.fetchone()
                rec["mysql"] = r[0].rsplit(" ", 1)[-1] if r and r[0] else None
            conn.close()
        except Exception:
            pass
        out[db] = rec
    return out


# ---------------------------------------------------------------------------------------------
# plain read-only execution (gold SQL, and predictions for comparison)


class QueryTimeout(RuntimeError):
    pass


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]


class ReadOnlyDB:
    """One plain read-only connection to one database, with a per-statement timeout.

    sqlite: `mode=ro` URI + a progress handler deadline; postgres: read-only session + statement_timeout;
    mysql/mariadb: `SET SESSION TRANSACTION READ ONLY` + max_statement_time (MariaDB) / max_execution_time."""

    def __init__(self, dialect: str, db: str, data_dir: Path = DEFAULT_DATA, pg_base_url: str = DEFAULT_PG,
                 mysql_base_url: str = DEFAULT_MYSQL, timeout_s: float = 20.0) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}")
        self.dialect, self.db, self.timeout_s = dialect, db, timeout_s
        self.data_dir, self.pg_base_url, self.mysql_base_url = data_dir, pg_base_url, mysql_base_url
        self._lock = threading.Lock()
        self._deadline = math.inf
        self.conn: Any = None
        self._open()

    def _open(self) -> None:
        if self.dialect == "sqlite":
            self.conn = sqlite3.connect(f"file:{sqlite_path(self.db, self.data_dir)}?mode=ro", uri=True,
                                        check_same_thread=False)
            self.conn.set_progress_handler(lambda: 1 if time.monotonic() > self._deadline else 0, 10_000)
        elif self.dialect == "postgres":
            self.conn = _pg_connect(self.pg_base_url, DB_PREFIX + self.db, autocommit=True)
            self.conn.execute("SET default_transaction_read_only = on")
            self.conn.execute(f"SET statement_timeout = {int(self.timeout_s * 1000)}")
        else:
            self.conn = _mysql_connect(self.mysql_base_url, DB_PREFIX + self.db, read_timeout=int(self.timeout_s) + 5)
            with self.conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION READ ONLY")
                try:
                    cur.execute(f"SET SESSION max_statement_time = {float(self.timeout_s)}")  # MariaDB
                except Exception:
                    cur.execute(f"SET SESSION max_execution_time = {int(self.timeout_s * 1000)}")  # MySQL

    def _alive(self) -> bool:
        if self.dialect == "postgres":
            return not self.conn.closed and not self.conn.broken
        if self.dialect == "mysql":
            return bool(self.conn.open)
        return True

    def run(self, sql: str) -> Result:
        with self._lock:
            if not self._alive():  # a timeout or a lost server connection: start a new one
                self.close()
                self._open()
            if self.dialect == "sqlite":
                self._deadline = time.monotonic() + self.timeout_s
                try:
                    cur = self.conn.execute(sql)
                    rows = cur.fetchall()
                except sqlite3.OperationalError as e:
                    if "interrupted" in str(e) and time.monotonic() > self._deadline:
                        raise QueryTimeout(f"timed out after {self.timeout_s}s") from e
                    raise
                finally:
                    self._deadline = math.inf
                cols = [d[0] for d in cur.description or []]
                return Result(cols, [tuple(r) for r in rows])
            if self.dialect == "postgres":
                with self.conn.cursor() as cur:
                    cur.execute(sql)  # no params: '%' in LIKE patterns is literal
                    cols = [d.name for d in cur.description or []]
                    return Result(cols, [tuple(r) for r in cur.fetchall()] if cur.description else [])
            with self.conn.cursor() as cur:
                cur.execute(sql)  # args=None: pymysql does no %-formatting
                cols = [d[0] for d in cur.description or []]
                return Result(cols, [tuple(r) for r in cur.fetchall()])

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def adapt_mysql_gold(sql: str, db: str) -> str:
    """sql-eval's MySQL golds, made to run on our MariaDB database `t2s_<db>` without changing their meaning:
    - the golds qualify some tables with sql-eval's database name (`FROM broker.sbCustomer`): the qualifier goes;
    - MariaDB (unlike MySQL 8) rejects a select alias of an aggregate inside an ORDER BY expression
      (`ORDER BY CASE WHEN total IS NULL THEN 1 ELSE 0 END DESC, total DESC`, error 1247): the alias
      is replaced by its aggregate expression there, which is what MySQL resolves it to."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="mysql")
    for t in tree.find_all(exp.Table):
        if t.args.get("db") is not None and t.db.lower() == db.lower():
            t.set("db", None)
    for select in list(tree.find_all(exp.Select)):
        order = select.args.get("order")
        if order is None:
            continue
        aliases = {e.alias: e.this for e in select.expressions if isinstance(e, exp.Alias)}
        for ordered in order.expressions:
            node = ordered.this
            if isinstance(node, exp.Column):
                continue
            for col in list(node.find_all(exp.Column)):
                target = aliases.get(col.name)
                if not col.table and target is not None and target.find(exp.AggFunc) is not None:
                    col.replace(target.copy())
    return re.sub(r"\bFROM `dual`", "FROM dual", tree.sql(dialect="mysql"), flags=re.I)  # sqlglot quotes DUAL


class GoldCache:
    """Runs every gold alternative once per (dialect, question id) and keeps the results (or errors)."""

    def __init__(self, connect: Callable[[str, str], ReadOnlyDB]) -> None:
        self._connect = connect
        self._dbs: dict[tuple[str, str], ReadOnlyDB] = {}
        self._gold: dict[tuple[str, int], list[tuple[str, Result | None, str | None]]] = {}
        self.adapted: dict[tuple[str, int], list[tuple[str, str]]] = {}  # (dialect, id) -> [(as written, as run)]

    def db(self, dialect: str, db: str) -> ReadOnlyDB:
        key = (dialect, db)
        if key not in self._dbs:
            self._dbs[key] = self._connect(dialect, db)
        return self._dbs[key]

    def gold(self, dialect: str, q: Question) -> list[tuple[str, Result | None, str | None]]:
        """[(sql, result or None, error or None)] for each gold alternative of q in this dialect (sql is
        the statement that ran: for MySQL a gold that fails as written is retried adapted to MariaDB)."""
        key = (dialect, q.id)
        if key not in self._gold:
            out = []
            for sql in q.gold[dialect]:
                try:
                    out.append((sql, self.db(dialect, q.db).run(sql), None))
                    continue
                except Exception as e:
                    err = f"{type(e).__name__}: {str(e).strip()[:300]}"
                if dialect == "mysql":  # written for MySQL 8 with databases named <db>
                    try:
                        fixed = adapt_mysql_gold(sql, q.db)
                        if fixed != sql:
                            out.append((fixed, self.db(dialect, q.db).run(fixed), None))
                            self.adapted.setdefault(key, []).append((sql, fixed))
                            continue
                    except Exception as e2:
                        err += f" (adapted: {type(e2).__name__}: {str(e2).strip()[:200]})"
                out.append((sql, None, err))
            self._gold[key] = out
        return self._gold[key]

    def close(self) -> None:
        for d in self._dbs.values():
            d.close()
        self._dbs.clear()


# ---------------------------------------------------------------------------------------------
# execution accuracy (sql-eval's compare_query_results)

FLOAT_DECIMALS = 4
_MIDNIGHT = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T]00:00:00(?:\.0+)?(?:\+00(?::?00)?)?$")


def normalize_value(v: Any) -> Any:
    """Hashable, type-unified cell value: Decimal/float -> float rounded to FLOAT_DECIMALS places (an
    integral one becomes int, so 3 == 3.0), bool -> int, date/time -> ISO text, bytes -> text. A timestamp
    at midnight (UTC or naive; also as text) becomes its date, so DATE_TRUNC's timestamp equals a date."""
    if v is None:
        return v
    if isinstance(v, str):
        m = _MIDNIGHT.match(v)
        return m.group(1) if m else v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float | decimal.Decimal):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        f = round(f, FLOAT_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
        return int(f) if f.is_integer() and abs(f) < 2**53 else f
    if isinstance(v, dt.datetime):
        if v.utcoffset() == dt.timedelta(0):
            v = v.replace(tzinfo=None)
        if v.tzinfo is None and v.time() == dt.time(0):
            return v.date().isoformat()
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return normalize_value(v.total_seconds())
    if isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return b.hex()
    return str(v)


def _parse(sql: str, dialect: str | None) -> Any:
    import sqlglot

    return sqlglot.parse_one(sql, read=dialect)


def has_top_level_order_by(sql: str, dialect: str | None = None) -> bool:
    """True if the statement's outermost query has ORDER BY (not one inside a subquery or window)."""
    try:
        return _parse(sql, dialect).args.get("order") is not None
    except Exception:
        # fallback: drop string literals and anything in parentheses, then look for ORDER BY
        s = re.sub(r"'(?:[^']|'')*'", "''", sql)
        prev = None
        while prev != s:
            prev, s = s, re.sub(r"\([^()]*\)", "()", s)
        return re.search(r"\bORDER\s+BY\b", s, re.I) is not None


def order_key_columns(sql: str, dialect: str | None, n_columns: int) -> list[int] | None:
    """Result columns the top-level ORDER BY sorts on (its terms are functions of them), or None if some
    term uses anything else (or the query selects *). Lets an ordered comparison ignore the order of ties."""
    from sqlglot import exp

    try:
        tree = _parse(sql, dialect)
    except Exception:
        return None
    order = tree.args.get("order")
    if order is None or not isinstance(tree, exp.Select):
        return None
    sel = tree.expressions
    if len(sel) != n_columns or any(isinstance(e, exp.Star) or e.find(exp.Star) is not None and
                                    not isinstance(e.unalias(), exp.Count) for e in sel):
        return None
    keys: list[int] = []

    def select_index(node: Any) -> int | None:
        for i, e in enumerate(sel):
            if node == e or node == e.unalias():
                return i
        if isinstance(node, exp.Column):
            for i, e in enumerate(sel):  # a select alias or a selected column of that name
                inner = e.unalias()
                if not node.table and e.alias_or_name == node.name:
                    return i
                if isinstance(inner, exp.Column) and inner.name == node.name and (
                        not node.table or not inner.table or inner.table == node.table):
                    return i
        return None

    for ordered in order.expressions:
        node = ordered.this
        if isinstance(node, exp.Literal) and node.is_int:
            k = int(node.this) - 1
            if not 0 <= k < n_columns:
                return None
            keys.append(k)
            continue
        k = select_index(node)
        if k is not None:
            keys.append(k)
            continue
        cols = list(node.find_all(exp.Column))
        if not cols:
            return None
        for c in cols:
            k = select_index(c)
            if k is None:
                return None
            keys.append(k)
    return list(dict.fromkeys(keys))


def _dedupe(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return list(dict.fromkeys(rows))


MAX_ASSIGNMENTS = 2000


def results_match(gold: Result, pred: Result, ordered: bool = False, order_keys: Sequence[int] | None = None,
                  dedupe: bool = True) -> bool:
    """sql-eval's `compare_df(gold, gen) or subset_df(gold, gen)`, on normalized values.

    Each gold column must be matched by a distinct prediction column holding the same values (the
    names do not matter; extra prediction columns are ignored); the prediction's matched columns,
    put in the gold's column order, must then hold the gold's rows (as a multiset). If `ordered`,
    the rows must also come in the gold's order: with `order_keys` (the gold columns its ORDER BY
    sorts on) only those columns' values must follow the gold's sequence, so tied rows may come in
    any order; without them the whole rows must. With `dedupe` (sql-eval's normalize_table)
    duplicate rows are dropped from both first (keeping the first occurrence). An empty gold matches
    only an empty prediction."""
    g_rows = [tuple(normalize_value(v) for v in r) for r in gold.rows]
    p_rows = [tuple(normalize_value(v) for v in r) for r in pred.rows]
    if not g_rows or not p_rows:
        return not g_rows and not p_rows
    ng, np_ = len(g_rows[0]), len(p_rows[0])
    if ng > np_:
        return False

    def column_key(rows: list[tuple[Any, ...]], j: int) -> Any:
        col = [r[j] for r in rows]
        return frozenset(col) if dedupe else Counter(col)

    gk = [column_key(g_rows, j) for j in range(ng)]
    pk = [column_key(p_rows, k) for k in range(np_)]
    candidates = [[k for k in range(np_) if pk[k] == gk[j]] for j in range(ng)]
    if any(not c for c in candidates):
        return False
    g_cmp = _dedupe(g_rows) if dedupe else g_rows
    g_counter = Counter(g_cmp)
    keys = [k for k in (order_keys or []) if 0 <= k < ng]
    g_seq = [tuple(r[k] for k in keys) for r in g_cmp] if keys else g_cmp
    tried = 0
    for assign in itertools.product(*candidates):
        if len(set(assign)) < ng:
            continue
        tried += 1
        if tried > MAX_ASSIGNMENTS:
            break
        proj = [tuple(r[k] for k in assign) for r in p_rows]
        if dedupe:
            proj = _dedupe(proj)
        if len(proj) != len(g_cmp) or Counter(proj) != g_counter:
            continue
        if not ordered:
            return True
        seq = [tuple(r[k] for k in keys) for r in proj] if keys else proj
        if seq == g_seq:
            return True
    return False


def is_correct(pred: Result, golds: Sequence[tuple[str, Result | None, str | None]], dialect: str | None = None,
               dedupe: bool = True) -> bool:
    """Correct if the prediction matches ANY gold alternative that ran (each alternative decides with
    its own top-level ORDER BY whether, and on which columns, row order counts)."""
    for sql, result, _err in golds:
        if result is None:
            continue
        ordered = has_top_level_order_by(sql, dialect)
        keys = order_key_columns(sql, dialect, len(result.columns)) if ordered else None
        if results_match(result, pred, ordered=ordered, order_keys=keys, dedupe=dedupe):
            return True
    return False
