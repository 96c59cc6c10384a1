"""`make demo`: start `ragloom serve` on a free port, walk through the API with the SDK, stop it.

The walk-through is a list of steps (`STEPS`); later features append theirs (search, JSON,
RAG, SQL) without touching the server handling.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ragloom.client import Answer, Client
from ragloom.errors import NotFound, RagloomError

READY_TIMEOUT_S = float(os.environ.get("RAGLOOM_DEMO_READY_TIMEOUT", "600"))  # first run converts the model
STOP_TIMEOUT_S = 30.0
_READY_LINE = re.compile(r"^ragloom: serving (\S+) on (\S+)$")

# A tiny sample to talk about (kept inline so the demo needs no data files).
SAMPLE = (
    "Ragloom is a gRPC middleware that combines retrieval over quantized embedding indexes, "
    "cached chunk KV reuse for RAG, constrained decoding for JSON and SQL, and its own small "
    "PyTorch model runner with paged KV cache and continuous batching."
)


class DemoError(RuntimeError):
    pass


@dataclass
class Demo:
    client: Client
    address: str
    model: str
    notes: list[str] = field(default_factory=list)
    # a connector root of the server (--connector-root): its sandbox refuses files anywhere else
    files: Path | None = None


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[Demo], None]


def _health(demo: Demo) -> None:
    print(f"health: {demo.client.health()}  loads: {demo.client.loads().model_dump()}")


def _chat_stream(demo: Demo) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": f"In one sentence, what is Ragloom?\n\n{SAMPLE}"},
    ]
    print(f"user: In one sentence, what is Ragloom? [then, in the same message, the text to answer from: {SAMPLE!r}]")
    print("assistant: ", end="", flush=True)
    stream = demo.client.stream(messages=messages, max_tokens=48, temperature=0)
    with stream:
        for chunk in stream:
            print(chunk.text, end="", flush=True)
    print()
    usage = stream.usage
    assert usage is not None
    print(
        f"finish_reason={stream.finish_reason} prompt_tokens={usage.prompt_tokens} "
        f"completion_tokens={usage.completion_tokens} cached_tokens={usage.cached_tokens}"
    )


# The structured-output step: the answer is constrained token by token to JSON valid for this.
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
PERSON = "Marie is a 34-year-old chemist who lives in Lyon."


def _json_schema(demo: Demo) -> None:
    messages = [{"role": "user", "content": f"{PERSON}\nGive her name, age and city as JSON."}]
    print(f"user: {messages[0]['content']!r}")
    print(f"json_schema: {json.dumps(PERSON_SCHEMA)}")
    result = demo.client.generate(messages=messages, json_schema=PERSON_SCHEMA, max_tokens=60, temperature=0)
    print(f"assistant: {result.text}")
    print(
        f"finish_reason={result.finish_reason} completion_tokens={result.usage.completion_tokens} "
        f"parsed={result.parsed!r}"
    )
    if result.finish_reason == "stop" and not isinstance(result.parsed, dict):
        raise DemoError(f"the constrained answer did not parse as a JSON object: {result.text!r}")


# A handful of short documents for the search step (installed with the package).
SAMPLE_DOCS = Path(__file__).resolve().parent / "demo_data" / "sample.jsonl"
DEMO_COLLECTION = "ragloom-demo"


def _search(demo: Demo) -> None:
    docs = [json.loads(line) for line in SAMPLE_DOCS.read_text(encoding="utf-8").splitlines() if line.strip()]
    c = demo.client
    # the server keeps collections in its data dir: start from a clean one on every run
    try:
        c.delete_collection(DEMO_COLLECTION)
    except NotFound:
        pass
    info = c.create_collection(DEMO_COLLECTION)
    print(f"created collection {info.name!r} (index={info.index})")
    print("ingesting (the first use loads the embedding model) ...")
    result = c.upsert(DEMO_COLLECTION, docs)
    print(f"ingested {result.documents} documents as {result.chunks} chunks from {SAMPLE_DOCS.name}")
    for query, where in (
        ("How do I make vector search use less memory?", None),
        ("reuse cached passages to answer faster", {"lang": "en"}),
    ):
        shown = f" filter={json.dumps(where)}" if where else ""
        print(f"\nsearch: {query!r}{shown}")
        for rank, hit in enumerate(c.search(DEMO_COLLECTION, query, k=3, filter=where), 1):
            print(f"  {rank}. {hit.score:.3f} {hit.id} [{hit.metadata.get('topic')}]: {hit.text[:80]}...")
    info = next(i for i in c.list_collections() if i.name == DEMO_COLLECTION)
    print(f"\n{info.name}: {info.documents} documents, {info.chunks} chunks, dim {info.dim}, model {info.model}")
    # the collection stays for the Ask step, which deletes it


ASK_QUESTION = "Why cache each chunk's KV in retrieval-augmented generation?"


def _print_answer(label: str, answer: Answer) -> None:
    u = answer.usage
    tiers = ", ".join(f"{name} {n}" for name, n in sorted(u.tier_hits.items())) or "none"
    print(f"{label}: {answer.text.strip()}")
    print(
        f"  prompt_tokens={u.prompt_tokens} reused_tokens={u.reused_tokens} recomputed_tokens={u.recomputed_tokens}"
        f" chunks_computed={u.chunks_computed} tier_hits: {tiers}"
    )


def _ask(demo: Demo) -> None:
    c = demo.client
    try:
        print(f"ask: {ASK_QUESTION!r} (k=3, mode=blend)")
        first = c.ask(ASK_QUESTION, collection=DEMO_COLLECTION, k=3, max_tokens=40, temperature=0)
        for rank, p in enumerate(first.passages, 1):
            print(f"  [{rank}] {p.score:.3f} {p.id} (chunk KV: {p.kv_source})")
        _print_answer("answer", first)
        # the same question again: every passage's KV now comes from the server's memory tier
        second = c.ask(ASK_QUESTION, collection=DEMO_COLLECTION, k=3, max_tokens=40, temperature=0)
        _print_answer("again", second)
        if second.usage.tier_hits.get("memory", 0) != len(second.passages) or second.usage.reused_tokens == 0:
            raise DemoError(f"the second ask did not reuse the cached chunk KV: {second.usage}")
        stats = c.cache_stats()
        print("chunk-KV store: " + ", ".join(f"{t.name} {t.entries} entries/{t.hits} hits" for t in stats.tiers))
    finally:
        c.delete_collection(DEMO_COLLECTION)


# The text-to-SQL step: a tiny shop database built from the bundled script into a temp folder.
SHOP_SQL = Path(__file__).with_name("demo_data") / "shop.sql"
DEMO_CONNECTOR = "demo_shop"
SQL_QUESTION = "Which customers are from France?"


def _sql(demo: Demo) -> None:
    import sqlite3

    c = demo.client
    with tempfile.TemporaryDirectory(prefix="ragloom-demo-", dir=demo.files) as folder:
        db = Path(folder) / "shop.db"
        with sqlite3.connect(db) as conn:
            conn.executescript(SHOP_SQL.read_text())
        info = c.register_connector(DEMO_CONNECTOR, f"sqlite:///{db}", replace=True)
        try:
            print(f"connected {info.name!r}: {info.dialect}, {info.tables} tables (customers, products, orders)")
            print(f"question: {SQL_QUESTION!r}")
            print("(the bundled 135M model often writes the wrong query; the grammar and the guard make sure it is"
                  " one valid read-only SELECT over real columns, and a larger model plugs in with --model)")
            r = c.sql(DEMO_CONNECTOR, SQL_QUESTION)
            print(f"sql: {r.sql}  (linked tables: {', '.join(r.linked_tables)}; attempts: {r.attempts})")
            if r.error:
                print(f"the model's query failed: {r.error}")
            for row in r.rows[:10]:
                print(f"  {row}")
            # caller-written SQL goes through the same guard: reads run, writes are refused
            top = c.execute_sql(DEMO_CONNECTOR, "SELECT p.name, SUM(o.quantity) AS sold FROM orders o "
                                "JOIN products p ON p.id = o.product_id GROUP BY p.name ORDER BY sold DESC LIMIT 3")
            print(f"execute_sql (top sellers): {top.rows}")
            try:
                c.execute_sql(DEMO_CONNECTOR, "DROP TABLE orders")
                raise DemoError("the guard let DROP TABLE through")
            except RagloomError as exc:
                print(f"execute_sql('DROP TABLE orders') refused: {type(exc).__name__}: {exc}")
        finally:
            c.remove_connector(DEMO_CONNECTOR)


STEPS: list[Step] = [
    Step("health and load", _health),
    Step("streamed chat generation", _chat_stream),
    Step("JSON Schema constrained answer", _json_schema),
    Step("collections and semantic search", _search),
    Step("answers from cached chunk KV (RAG)", _ask),
    Step("text-to-SQL over a SQLite database", _sql),
]


# -- the server subprocess ---------------------------------------------------------------


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no stderr captured)"


def prepare_model() -> Path:
    """Convert the bundled model here, before the server starts, when its cache is empty or stale.

    The server's stderr goes to a file (kept for error reports), which would hide the conversion's
    progress bar on a first run; converting in the foreground shows it on this terminal, and the
    server then finds the cache ready. The server is started with the same environment, so the
    settings (model, data dir) resolve to the same folder."""
    from ragloom.config import load_settings
    from ragloom.models import resolve_model

    settings = load_settings()
    return resolve_model(settings.model, settings.data_dir)


def start_server(
    stderr_path: Path, timeout: float = READY_TIMEOUT_S, connector_root: Path | None = None
) -> tuple[subprocess.Popen[str], str, str]:
    """Start `ragloom serve --port 0` and wait for its ready line; returns (process, address, model)."""
    cmd = [sys.executable, "-m", "ragloom.cli", "serve", "--port", "0", "--device", "cpu"]
    if connector_root is not None:
        cmd += ["--connector-root", str(connector_root)]
    err = open(stderr_path, "w")  # noqa: SIM115 - the child owns it for its lifetime
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    err.close()
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            raise DemoError(f"server not ready after {timeout:.0f}s; its stderr ends with:\n{_tail(stderr_path)}")
        try:
            line = lines.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line is None:
            break
        match = _READY_LINE.match(line)
        if match:
            return proc, match.group(2), match.group(1)
    proc.wait()
    raise DemoError(f"server exited with code {proc.returncode}; its stderr ends with:\n{_tail(stderr_path)}")


def wait_serving(client: Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    status = "UNREACHABLE"
    while time.monotonic() < deadline:
        try:
            status = client.health(timeout=2.0)
            if status == "SERVING":
                return
        except RagloomError:
            pass
        time.sleep(0.2)
    raise DemoError(f"server health is {status} after {timeout:.0f}s")


def stop_server(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise DemoError(f"server ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s and was killed") from None


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ragloom-demo-") as tmp:
        stderr_path = Path(tmp) / "server.stderr"
        print("preparing the model (the first run converts the bundled model; this can take a minute) ...")
        try:
            prepare_model()
        except RagloomError as exc:
            print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print("starting `ragloom serve` ...")
        files = Path(tmp) / "files"  # the demo's SQLite database goes here, the server's connector root
        files.mkdir()
        try:
            proc, address, model = start_server(stderr_path, connector_root=files)
        except DemoError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        print(f"server: {model} on {address} (pid {proc.pid})")
        failed = False
        try:
            with Client(address, timeout=120) as client:
                wait_serving(client)
                demo = Demo(client=client, address=address, model=model, files=files)
                for i, step in enumerate(STEPS, 1):
                    print(f"\n== {i}. {step.title}")
                    step.run(demo)
        except (RagloomError, DemoError) as exc:
            print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"server stderr ends with:\n{_tail(stderr_path)}", file=sys.stderr)
            failed = True
        finally:
            try:
                code = stop_server(proc)
                print(f"\nserver stopped (SIGTERM, exit code {code})")
                failed = failed or code != 0
            except DemoError as exc:
                print(f"demo: {exc}", file=sys.stderr)
                failed = True
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
