"""The connector sandbox (connectors/sandbox.py): files under the roots after symlinks, database
hosts among the allowed patterns, PermissionDenied naming the rule otherwise; engine-level
defences under the guard (DuckDB's locked external access, SQLite's ATTACH limit); and the
guard's nesting pre-check, which comments and quotes can no longer fool."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ragloom.config import Settings
from ragloom.connectors.files import FileConnector
from ragloom.connectors.guard import MAX_NESTING, nesting_depth
from ragloom.connectors.registry import ConnectorRegistry, open_connector
from ragloom.connectors.sandbox import LOOPBACK_HOSTS, ConnectorSandbox, HostPattern
from ragloom.connectors.sql import SqlConnector
from ragloom.errors import ForbiddenQuery, NotFound, PermissionDenied, SqlError


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ (the sandbox) with a CSV and a SQLite file; outside/ beside it with the same."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root, outside):
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "orders.csv").write_text("id,total\n1,9.5\n2,3.0\n")
        with sqlite3.connect(folder / "shop.db") as conn:
            conn.execute("CREATE TABLE t (id INTEGER)")
            conn.execute("INSERT INTO t VALUES (1)")
    return {"root": root, "outside": outside}


@pytest.fixture
def sandbox(tree: dict[str, Path]) -> ConnectorSandbox:
    return ConnectorSandbox([tree["root"]])


def _denied(sandbox: ConnectorSandbox, url: str) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as info:
        open_connector("c", url, sandbox)
    assert type(info.value) is PermissionDenied  # not a ForbiddenQuery: not about SQL
    assert info.value.reason == "CONNECTOR_NOT_ALLOWED"
    return info.value


def test_etc_passwd_is_refused_naming_the_rule(sandbox: ConnectorSandbox, tree: dict[str, Path]) -> None:
    err = _denied(sandbox, "/etc/passwd")
    assert "/etc/passwd is outside the connector roots" in str(err)
    assert str(tree["root"].resolve()) in str(err) and "--connector-root" in str(err)
    assert err.metadata["rule"] == "connector_roots"
    _denied(sandbox, "file:///etc/passwd")
    _denied(sandbox, "sqlite:////etc/passwd")


def test_files_inside_the_root_open(sandbox: ConnectorSandbox, tree: dict[str, Path]) -> None:
    root = tree["root"]
    for url in (str(root / "data" / "orders.csv"), str(root / "data"), str(root / "shop.db"),
                f"sqlite:///{root / 'shop.db'}", f"file://{root / 'data'}"):
        connector = open_connector("c", url, sandbox)
        try:
            assert connector.schema().tables
        finally:
            connector.close()


def test_dot_dot_escapes_are_refused(sandbox: ConnectorSandbox, tree: dict[str, Path]) -> None:
    escape = tree["root"] / "data" / ".." / ".." / "outside" / "data" / "orders.csv"
    assert escape.exists()
    err = _denied(sandbox, str(escape))
    assert str(tree["outside"].resolve() / "data" / "orders.csv") in str(err)  # says where it leads
    _denied(sandbox, f"sqlite:///{tree['root']}/../outside/shop.db")
    _denied(sandbox, str(tree["root"] / ".." / "outside" / "data"))


def test_symlink_inside_the_root_pointing_out_is_refused(sandbox: ConnectorSandbox, tree: dict[str, Path]) -> None:
    link = tree["root"] / "link.csv"
    link.symlink_to(tree["outside"] / "data" / "orders.csv")
    err = _denied(sandbox, str(link))
    assert "resolves to" in str(err)
    db_link = tree["root"] / "link.db"
    db_link.symlink_to(tree["outside"] / "shop.db")
    _denied(sandbox, str(db_link))
    _denied(sandbox, f"sqlite:///{db_link}")
    passwd = tree["root"] / "passwd.csv"
    passwd.symlink_to("/etc/passwd")
    _denied(sandbox, str(passwd))


def test_folder_that_is_a_symlink_out_is_refused(sandbox: ConnectorSandbox, tree: dict[str, Path]) -> None:
    folder = tree["root"] / "elsewhere"
    folder.symlink_to(tree["outside"] / "data", target_is_directory=True)
    _denied(sandbox, str(folder))
    _denied(sandbox, str(folder / "orders.csv"))


def test_symlinked_file_inside_an_allowed_folder_is_refused_at_load(
    sandbox: ConnectorSandbox, tree: dict[str, Path]
) -> None:
    """The folder passes; one of its files is a symlink out, and DuckDB never reads it."""
    (tree["root"] / "data" / "secret.csv").symlink_to(tree["outside"] / "data" / "orders.csv")
    err = _denied(sandbox, str(tree["root"] / "data"))
    assert "secret.csv" in str(err)
    # without a sandbox (in-process, trusted use) the same folder loads both
    connector = open_connector("c", str(tree["root"] / "data"))
    assert sorted(t.name for t in connector.schema().tables) == ["orders", "secret"]
    connector.close()


def test_nothing_is_said_about_files_outside_the_roots(sandbox: ConnectorSandbox, tree: dict[str, Path]) -> None:
    """Missing and existing files outside the roots get the same refusal (no probing of the disk);
    a missing file inside the roots is NotFound as before."""
    _denied(sandbox, "/no/such/file.csv")
    _denied(sandbox, "sqlite:////no/such/file.db")
    with pytest.raises(NotFound):
        open_connector("c", str(tree["root"] / "missing.csv"), sandbox)
    with pytest.raises(NotFound):
        open_connector("c", f"sqlite:///{tree['root'] / 'missing.db'}", sandbox)


def test_relative_paths_resolve_in_the_working_directory(
    sandbox: ConnectorSandbox, tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree["root"] / "data")
    open_connector("c", "orders.csv", sandbox).close()
    _denied(sandbox, "../../outside/data/orders.csv")
    _denied(sandbox, "sqlite:///../../outside/shop.db")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@db.example.com/test",
        "postgresql://u@10.0.0.5:5432/test",
        "mysql://root@169.254.169.254:3306/test",
        "mariadb://root@[fd00::1]:3306/test",
        "postgresql://u@127.0.0.1,evil.example.com/test",  # a libpq host list
        "postgresql://u@127.0.0.1/test?host=evil.example.com",
        "postgresql://u@127.0.0.1/test?hostaddr=10.0.0.5",
        "postgresql://u@127.0.0.1/test?service=prod",
        "postgresql://u@127.0.0.1/test?sslkey=/etc/ssl/private/server.key",
        "mysql://root@127.0.0.1/test?unix_socket=/run/other.sock",
        "mysql://root@127.0.0.1/test?read_default_file=/etc/shadow",
        "mysql://root@127.0.0.1/test?local_infile=1",
    ],
)
def test_hosts_outside_the_list_are_refused(url: str) -> None:
    err = _denied(ConnectorSandbox([], LOOPBACK_HOSTS), url)  # refused before any connection is tried
    assert err.metadata["rule"] in ("connector_hosts", "connector_url_options")
    assert "pw" not in str(err)


def test_host_refusal_names_the_host_and_the_flag() -> None:
    err = _denied(ConnectorSandbox([], LOOPBACK_HOSTS), "postgresql://u:pw@db.example.com:6543/test")
    assert "db.example.com:6543 is not among the allowed connector hosts" in str(err)
    assert "--connector-host" in str(err) and "127.0.0.1" in str(err)
    assert err.metadata == {"rule": "connector_hosts", "host": "db.example.com", "port": "6543"}


def test_allowed_host_patterns() -> None:
    sandbox = ConnectorSandbox([], ["*.corp.example", "db1:5432", "10.0.0.*", "[fd00::1]:3306", "::1"])
    allowed = [
        ("postgresql://u@reports.corp.example/x", "postgres"),
        ("postgresql://u@REPORTS.Corp.Example:6000/x", "postgres"),  # host names are case-insensitive
        ("postgresql://u@db1/x", "postgres"),  # the default port, 5432
        ("postgresql://u@db1:5432/x?schema=sales&sslmode=require", "postgres"),
        ("mysql://root@10.0.0.7/x", "mysql"),
        ("mysql://root@[fd00::1]:3306/x?charset=utf8mb4", "mysql"),
        ("postgresql://u@[::1]:6543/x", "postgres"),
    ]
    for url, dialect in allowed:
        sandbox.check_url(url, dialect)
    for url, dialect in [("postgresql://u@db1:5433/x", "postgres"), ("mysql://root@db1/x", "mysql"),
                         ("mysql://root@[fd00::1]:3307/x", "mysql"), ("postgresql://u@corp.example/x", "postgres"),
                         ("postgresql://u@10.0.1.7/x", "postgres")]:
        with pytest.raises(PermissionDenied):
            sandbox.check_url(url, dialect)
    assert str(HostPattern.parse("[fd00::1]:3306")) == "[fd00::1]:3306"
    assert HostPattern.parse("::1") == HostPattern("::1", None)


def test_defaults_are_the_data_dir_the_working_directory_and_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sandbox = ConnectorSandbox.for_server(tmp_path / "data")
    assert sandbox.roots == ((tmp_path / "data").resolve(), tmp_path.resolve())
    assert [str(h) for h in sandbox.hosts] == ["127.0.0.1", "::1", "localhost"]
    for url in ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://u@localhost/x",
                "postgresql://u@/x", "mysql://root@[::1]:3306/test"):
        sandbox.check_url(url, "mysql" if url.startswith("mysql") else "postgres")
    configured = ConnectorSandbox.for_server(tmp_path / "data", [tmp_path / "only"], ["db.internal"])
    assert configured.roots == ((tmp_path / "only").resolve(),)
    assert [str(h) for h in configured.hosts] == ["db.internal"]


def test_settings_take_roots_and_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGLOOM_CONNECTOR_ROOTS", "/srv/a:/srv/b")
    monkeypatch.setenv("RAGLOOM_CONNECTOR_HOSTS", "db1:5432, *.corp.example")
    settings = Settings()
    assert settings.connector_roots == [Path("/srv/a"), Path("/srv/b")]
    assert settings.connector_hosts == ["db1:5432", "*.corp.example"]
    monkeypatch.setenv("RAGLOOM_CONNECTOR_ROOTS", '["/srv/c"]')
    assert Settings().connector_roots == [Path("/srv/c")]
    monkeypatch.delenv("RAGLOOM_CONNECTOR_ROOTS")
    monkeypatch.delenv("RAGLOOM_CONNECTOR_HOSTS")
    assert Settings().connector_roots == [] and Settings().connector_hosts == []


def test_cli_flags_reach_the_settings() -> None:
    from ragloom.cli import _parser

    args = _parser().parse_args(
        ["serve", "--connector-root", "/srv/a", "--connector-root", "/srv/b", "--connector-host", "db1:5432"]
    )
    assert args.connector_root == [Path("/srv/a"), Path("/srv/b")] and args.connector_host == ["db1:5432"]


def test_registration_the_sandbox_no_longer_allows(
    tree: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Registered under a wide sandbox, reopened under a narrow one: still listed (examples kept),
    logged at startup, every use refused naming the rule, and removable."""
    path = tree["root"].parent / "connectors.json"
    wide = ConnectorRegistry(path, ConnectorSandbox([tree["root"].parent]))
    wide.register("outside", str(tree["outside"] / "shop.db"))
    wide.register("inside", f"sqlite:///{tree['root'] / 'shop.db'}")
    wide.add_example("outside", "How many?", "SELECT count(*) FROM t")
    wide.close()
    narrow = ConnectorRegistry(path, ConnectorSandbox([tree["root"]]))
    try:
        assert [i.name for i in narrow.list()] == ["inside", "outside"]
        assert set(narrow.refused()) == {"outside"}
        assert any("'outside' is registered but not allowed" in r.getMessage() for r in caplog.records)
        with pytest.raises(PermissionDenied, match="outside the connector roots"):
            narrow.get("outside")
        assert narrow.examples("outside") == [{"question": "How many?", "sql": "SELECT count(*) FROM t"}]
        assert narrow.get("inside").execute("SELECT id FROM t").rows == [(1,)]
        with pytest.raises(PermissionDenied):
            narrow.register("outside", str(tree["outside"] / "shop.db"), replace=True)
        narrow.remove("outside")
        assert [i.name for i in narrow.list()] == ["inside"]
    finally:
        narrow.close()


# ---- under the guard: the engines themselves refuse to reach other files ----

DUCKDB_FILE_READS = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('/etc/*')",
    "COPY orders TO '{out}'",
    "ATTACH '{out}.db' AS evil",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
]


@pytest.mark.parametrize("sql", DUCKDB_FILE_READS)
def test_duckdb_cannot_reach_files_even_without_the_guard(sql: str, tmp_path: Path) -> None:
    (tmp_path / "orders.csv").write_text("id,total\n1,9.5\n")
    connector = FileConnector("files", tmp_path / "orders.csv")
    out = tmp_path / "stolen.csv"
    try:
        with pytest.raises(SqlError):
            connector._run(sql.format(out=out), 10, 10.0)  # the engine alone, no guard in front
        with pytest.raises((ForbiddenQuery, SqlError)):
            connector.execute(sql.format(out=out))  # and the guard in front refuses it first
        assert not out.exists() and not Path(f"{out}.db").exists()
        assert connector._run("SELECT count(*) FROM orders", 10, 10.0).rows == [(1,)]
    finally:
        connector.close()


def test_sqlite_cannot_attach_or_load_extensions_even_without_the_guard(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER)")
    connector = SqlConnector("shop", f"sqlite:///{db}")
    try:
        for sql in (f"ATTACH DATABASE '{tmp_path / 'evil.db'}' AS evil", "SELECT load_extension('/tmp/evil.so')"):
            with pytest.raises(SqlError):
                connector._run(sql, 10, 10.0)
            with pytest.raises((ForbiddenQuery, SqlError)):
                connector.execute(sql)
        assert not (tmp_path / "evil.db").exists()
    finally:
        connector.close()


# ---- the guard's nesting pre-check ----

# `-- '` opened a "string" for the old character scan, which then skipped all the nesting after it
# and let sqlglot backtrack on the nested date() calls: 2 s at 15, 9 s at 17, x2 per level, so
# about 20 minutes at 24.
BYPASS = "SELECT 1 -- '\n, " + "date(" * 24 + "1" + ")" * 24 + " FROM t"


def test_comment_quote_bypass_is_refused_quickly() -> None:
    """Runs in a child process with a deadline only a backtracking parse could reach; no timing."""
    code = (
        "from ragloom.connectors.base import Column, Schema, Table\n"
        "from ragloom.connectors.guard import guard\n"
        "from ragloom.errors import SqlError\n"
        "import sys\n"
        "schema = Schema('s', 'sqlite', [Table('t', [Column('a', 'INT')])])\n"
        "for dialect in ('sqlite', 'postgres', 'mysql', 'duckdb'):\n"
        "    try:\n"
        "        guard(sys.argv[1], dialect, schema, 10)\n"
        "    except SqlError as e:\n"
        "        assert 'nests parentheses' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('not refused')\n"
        "print('refused')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, BYPASS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "refused", proc.stderr


@pytest.mark.parametrize(
    ("sql", "depth"),
    [
        (BYPASS, 24),
        ("SELECT 1 /* ' */ , " + "(" * 12 + "1" + ")" * 12, 12),
        ("SELECT 1 -- \"\n, " + "(" * 12 + "1" + ")" * 12, 12),
        ("SELECT 'it''s ((((((((((((' , (1)", 1),  # '' escapes stay inside the string
        ("SELECT \"a(((((((((((((\" FROM t", 0),  # a quoted identifier
        ("SELECT `a((((((((((((` FROM t", 0),
        ("SELECT 1 -- ((((((((((((((\n", 0),
        ("SELECT /* (((((((((((((( */ 1", 0),
        ("SELECT [[[[[[[[[[[[1]]]]]]]]]]]]", 12),  # DuckDB lists nest in the parser too
    ],
)
def test_nesting_depth_sees_what_the_parser_sees(sql: str, depth: int) -> None:
    dialect = "mysql" if "`" in sql else "duckdb"
    assert nesting_depth(sql, dialect) == depth


def test_dollar_quoted_strings_hide_their_parentheses_only_where_the_dialect_has_them() -> None:
    sql = "SELECT $$ ((((((((((((( $$"
    assert nesting_depth(sql, "postgres") == 0
    assert nesting_depth(sql, "sqlite") == 13  # no dollar quoting in SQLite: the parser sees them


def test_parentheses_inside_strings_and_comments_still_pass() -> None:
    from ragloom.connectors.base import Column, Schema, Table
    from ragloom.connectors.guard import guard

    schema = Schema("s", "postgres", [Table("t", [Column("a", "TEXT")])])
    noisy = "(" * (MAX_NESTING + 5)
    sql = (f"SELECT a, '{noisy}' AS x /* {noisy} ' */ FROM t -- {noisy} \"\n"
           f"WHERE a <> 'it''s {noisy}' AND a <> $${noisy}$$")
    checked = guard(sql, "postgres", schema, 5)
    assert checked.tables == ["t"] and checked.sql.endswith("LIMIT 5")


def test_a_path_the_filesystem_refuses_is_invalid_argument(tmp_path: Path) -> None:
    """Found by the RPC fuzzer: a 70,000-character path raised OSError (ENAMETOOLONG) -> INTERNAL."""
    from ragloom.connectors.registry import open_connector
    from ragloom.connectors.sandbox import ConnectorSandbox
    from ragloom.errors import InvalidArgument

    for bad in ("a" * 70_000, str(tmp_path / ("b" * 300)), "nul\x00byte.csv"):
        with pytest.raises(InvalidArgument) as info:
            open_connector("x", bad, ConnectorSandbox([tmp_path, Path.cwd()]))
        assert info.value.reason == "CONNECTOR_URL_INVALID" and info.value.field == "url"
