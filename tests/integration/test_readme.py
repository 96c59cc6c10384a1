"""README.md runs: every fenced ```python and ```bash block is executed against a live server.

The harness starts `ragloom serve --port 0` (the venv's console script) with a temporary data
dir whose `models/` points at the usual conversion cache, so nothing is converted twice. Then it
runs the README's blocks in order, with the repository root as the current directory:
- bash blocks through `bash -e -o pipefail`, the venv's `ragloom` first on PATH;
- python blocks in one long-lived interpreter with a shared namespace (readme_worker.py), the
  way a reader pasting them one after another would.
`RAGLOOM_ADDRESS` points the SDK and CLI at the live server, and the literal default address
`127.0.0.1:50051` in a block is replaced by it. A failing block fails its test, which names the
block's line in README.md (python tracebacks carry README.md's own line numbers).

The server runs in another directory than the blocks, so a relative path in an example must be
resolved by the client, as it would be for a server started elsewhere.

Directives are HTML comments (invisible on GitHub) on the lines right above a block's fence:
- `<!-- readme-test: skip (why) -->`: not run; the reason is required. Kept to a few.
- `<!-- readme-test: needs postgres mariadb -->`: the harness first loads the shop sample
  (ragloom/demo_data/shop.sql) into a `shop` database on the local PostgreSQL / MariaDB
  servers (the ones tests/integration/sql_databases.py uses), and drops it afterwards.
- `<!-- readme-test: check EXPR -->` (python blocks): EXPR is evaluated in the block's namespace
  after it ran and must be true, so that what the README says the example prints holds.
Any other fenced block (toml, output samples) must be marked skip.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
WORKER = Path(__file__).with_name("readme_worker.py")
SHOP_SQL = ROOT / "ragloom" / "demo_data" / "shop.sql"
EXAMPLES = ROOT / "examples"
DEFAULT_ADDRESS = "127.0.0.1:50051"
READY = re.compile(r"^ragloom: serving (\S+) on (\S+)$")
READY_TIMEOUT_S = 600.0  # a first run on a fresh machine converts the bundled model
BLOCK_TIMEOUT_S = 300.0
MAX_SKIPPED = 6  # skipping is for what cannot run in a test: keep it rare
FENCE = re.compile(r"^```(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip\s*\((.+)\)$")
NEEDS = re.compile(r"^needs\s+(.+)$")
CHECK = re.compile(r"^check\s+(.+)$")
DATABASES = ("postgres", "mariadb")
SHOP_DB_NAME = "shop"


@dataclass
class Block:
    line: int  # the line of the opening fence in README.md (1-based)
    lang: str
    code: str
    skip: str | None = None
    needs: tuple[str, ...] = ()
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def first_code_line(self) -> int:
        return self.line + 1

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.lang or 'untagged'} block)"


def parse_readme(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        block = Block(line=start + 1, lang=m.group(1), code="\n".join(lines[start + 1 : j]) + "\n")
        if j == len(lines):
            block.problems.append("the fence is never closed")
        k = start - 1
        directives = []
        while k >= 0 and DIRECTIVE.match(lines[k]):
            directives.append(DIRECTIVE.match(lines[k]).group(1))  # type: ignore[union-attr]
            k -= 1
        for d in reversed(directives):
            if m_skip := SKIP.match(d):
                block.skip = m_skip.group(1).strip()
            elif m_needs := NEEDS.match(d):
                block.needs = tuple(re.split(r"[\s,]+", m_needs.group(1).strip()))
                unknown = set(block.needs) - set(DATABASES)
                if unknown:
                    block.problems.append(f"needs unknown databases {sorted(unknown)}; known: {DATABASES}")
            elif m_check := CHECK.match(d):
                block.checks.append(m_check.group(1))
            else:
                block.problems.append(f"unknown readme-test directive {d!r}")
        if block.checks and block.lang != "python":
            block.problems.append("check directives apply to python blocks only")
        blocks.append(block)
        i = j + 1
    return blocks


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))
RUN = [b for b in BLOCKS if b.skip is None]


# -- the README's shape, and the example files it names (cheap, no server) ----------------------


def test_every_block_runs_or_says_why_not() -> None:
    problems = [f"{b}: {p}" for b in BLOCKS for p in b.problems]
    for b in RUN:
        if b.lang not in ("python", "bash"):
            problems.append(f"{b}: only python and bash blocks can run; mark it `<!-- readme-test: skip (why) -->`")
    assert not problems, "\n".join(problems)
    skipped = [b for b in BLOCKS if b.skip is not None]
    assert len(skipped) <= MAX_SKIPPED, f"{len(skipped)} README blocks are skipped: " + "; ".join(
        f"line {b.line}: {b.skip}" for b in skipped
    )
    # the parser saw the README's examples (a broken parser must not pass by running nothing)
    assert sum(b.lang == "python" for b in RUN) >= 4 and sum(b.lang == "bash" for b in RUN) >= 4, [str(b) for b in RUN]


def test_parser_reads_directives() -> None:
    text = (
        "intro\n<!-- readme-test: skip (an output sample) -->\n```\nout\n```\n"
        "<!-- readme-test: needs postgres mariadb -->\n<!-- readme-test: check x == 1 -->\n"
        "```python\nx = 1\n```\n<!-- readme-test: frobnicate -->\n```bash\necho hi\n```\n"
    )
    skipped, python, bash = parse_readme(text)
    assert (skipped.line, skipped.skip, skipped.lang) == (3, "an output sample", "")
    assert (python.line, python.lang, python.code, python.needs, python.checks) == (
        8, "python", "x = 1\n", ("postgres", "mariadb"), ["x == 1"]
    )
    assert python.skip is None and not python.problems
    assert bash.problems == ["unknown readme-test directive 'frobnicate'"]


def _shop_rows() -> dict[str, list[tuple[str, ...]]]:
    with sqlite3.connect(":memory:") as conn:
        conn.executescript(SHOP_SQL.read_text(encoding="utf-8"))
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: [tuple(map(str, r)) for r in conn.execute(f"SELECT * FROM {t} ORDER BY id")] for t in tables}


def test_example_shop_files_match_the_bundled_sample() -> None:
    """examples/shop.db and examples/shop_csv/ hold ragloom/demo_data/shop.sql's data, no more, no less."""
    import csv

    expected = _shop_rows()
    assert set(expected) == {"customers", "products", "orders"}
    with sqlite3.connect(f"file:{EXAMPLES / 'shop.db'}?mode=ro", uri=True) as conn:
        names = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
        assert names == sorted(expected)
        for table, rows in expected.items():
            got = [tuple(map(str, r)) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
            assert got == rows, table
    assert sorted(p.name for p in (EXAMPLES / "shop_csv").iterdir()) == sorted(f"{t}.csv" for t in expected)
    for table, rows in expected.items():
        with open(EXAMPLES / "shop_csv" / f"{table}.csv", newline="", encoding="utf-8") as f:
            got = [tuple(r) for r in list(csv.reader(f))[1:]]
        assert got == rows, table


# -- the live server and the python worker ---------------------------------------------------


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(nothing captured)"


@dataclass
class Live:
    address: str
    env: dict[str, str]
    server_log: Path
    worker: subprocess.Popen[str]
    replies: queue.Queue[str | None]
    worker_log: Path

    def run_python(self, block: Block, code: str) -> tuple[bool, str]:
        assert self.worker.stdin is not None
        request = {"code": code, "line": block.first_code_line, "checks": block.checks}
        self.worker.stdin.write(json.dumps(request) + "\n")
        self.worker.stdin.flush()
        try:
            raw = self.replies.get(timeout=BLOCK_TIMEOUT_S)
        except queue.Empty:
            self.worker.kill()
            return False, f"no answer after {BLOCK_TIMEOUT_S:.0f}s (the python worker was killed)"
        if raw is None:
            return False, f"the python worker exited; its stderr ends with:\n{_tail(self.worker_log)}"
        reply = json.loads(raw)
        if reply["ok"]:
            return True, reply["output"]
        return False, f"{reply['error']}\n--- what the block printed ---\n{reply['output']}"

    def run_bash(self, block: Block, code: str) -> tuple[bool, str]:
        # one header line, then padding, so that $LINENO is README.md's own line number
        header = "trap 'echo \"README.md line $LINENO: exit status $?\" >&2' ERR"
        script = header + "\n" * (block.first_code_line - 1) + code
        try:
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            return False, f"timed out after {BLOCK_TIMEOUT_S:.0f}s; output so far:\n{exc.stdout or ''}{exc.stderr or ''}"
        output = f"--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}"
        return done.returncode == 0, output


def _start_server(env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    ragloom = Path(env["PATH"].split(os.pathsep)[0]) / "ragloom"
    cmd = [str(ragloom), "serve", "--port", "0", "--device", "cpu", "--log-level", "WARNING"]
    cmd += ["--connector-root", str(ROOT)]  # the examples' files; the server runs in another directory
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        if m := READY.match(line):
            return proc, m.group(2)
    proc.kill()
    proc.wait()
    pytest.fail(f"`ragloom serve` did not get ready (exit code {proc.returncode}); stderr ends with:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from ragloom.client import Client
    from ragloom.config import default_data_dir

    tmp = tmp_path_factory.mktemp("readme")
    data_dir = tmp / "data"
    data_dir.mkdir()
    models = default_data_dir() / "models"  # the usual conversion cache, shared with the other tests
    models.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(models, target_is_directory=True)
    server_cwd = tmp / "elsewhere"
    server_cwd.mkdir()

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLOOM_") or k.startswith("RAGLOOM_TEST_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAGLOOM_DATA_DIR"] = str(data_dir)
    env["RAGLOOM_KV_CACHE_TOKENS"] = "4096"  # the examples are short; the default 16k tokens is 720 MB
    env["PYTHONUNBUFFERED"] = "1"

    server_log = tmp / "server.stderr"
    server, address = _start_server(env, server_cwd, server_log)
    env["RAGLOOM_ADDRESS"] = address
    worker_log = tmp / "worker.stderr"
    worker = None
    try:
        with Client(address, timeout=10) as c:
            deadline = time.monotonic() + 60
            while c.health() != "SERVING":
                assert time.monotonic() < deadline, "server never reported SERVING"
                time.sleep(0.2)
        with open(worker_log, "w") as err:
            worker = subprocess.Popen(
                [sys.executable, str(WORKER), str(README)],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            )
        replies: queue.Queue[str | None] = queue.Queue()
        assert worker.stdout is not None
        threading.Thread(target=_pump, args=(worker.stdout, replies), daemon=True).start()
        yield Live(address, env, server_log, worker, replies, worker_log)
    finally:
        if worker is not None:
            if worker.stdin is not None:
                worker.stdin.close()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        _stop(server)


def _admin_url(kind: str) -> str:
    from sql_databases import MYSQL_URL, PG_URL

    return PG_URL if kind == "postgres" else MYSQL_URL


def _shop_statements() -> list[str]:
    text = "\n".join(ln for ln in SHOP_SQL.read_text(encoding="utf-8").splitlines() if not ln.startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


@pytest.fixture(scope="module")
def shop_databases() -> Iterator[dict[str, str]]:
    """A `shop` database with the sample on each local server (replaced if a crashed run left one)."""
    import sqlalchemy as sa
    from sql_databases import reachable
    from sqlalchemy.engine import make_url

    made: list[tuple[sa.Engine, str]] = []
    urls: dict[str, str] = {}
    try:
        for kind in DATABASES:
            admin = reachable(_admin_url(kind)).execution_options(isolation_level="AUTOCOMMIT")
            force = " WITH (FORCE)" if kind == "postgres" else ""
            with admin.connect() as c:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {SHOP_DB_NAME}{force}"))
                c.execute(sa.text(f"CREATE DATABASE {SHOP_DB_NAME}"))
            made.append((admin, force))
            url = make_url(_admin_url(kind)).set(database=SHOP_DB_NAME)
            eng = sa.create_engine(url)
            with eng.begin() as c:
                for stmt in _shop_statements():
                    c.execute(sa.text(stmt))
            eng.dispose()
            urls[kind] = url.render_as_string(hide_password=False)
        yield urls
    finally:
        for admin, force in made:
            with admin.connect() as c:
                c.execute(sa.text(f"DROP DATABASE IF EXISTS {SHOP_DB_NAME}{force}"))
            admin.dispose()


@pytest.mark.parametrize("block", RUN, ids=[f"line{b.line}-{b.lang}" for b in RUN])
def test_readme_block(block: Block, live: Live, request: pytest.FixtureRequest) -> None:
    if block.problems or block.lang not in ("python", "bash"):
        pytest.fail(f"{block} cannot run: see test_every_block_runs_or_says_why_not")
    if block.needs:
        request.getfixturevalue("shop_databases")
    code = block.code.replace(DEFAULT_ADDRESS, live.address)
    ok, output = live.run_python(block, code) if block.lang == "python" else live.run_bash(block, code)
    if not ok:
        pytest.fail(
            f"{block} failed:\n{output}\n--- server stderr ends with ---\n{_tail(live.server_log)}", pytrace=False
        )
