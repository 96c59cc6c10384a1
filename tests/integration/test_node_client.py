"""A client in another language against a live server: examples/node/client.mjs, whose
@grpc/grpc-js stubs @grpc/proto-loader builds at run time from proto/ragloom/v1/*.proto alone
(no generated code, no ragloom package), run by Node against an in-process server that serves
every service on the bundled model.

What this proves beyond the Python tests: the .proto files are the whole contract. A client that
knows only them can stream Generate over chat messages with enum roles, constrain to a JSON
Schema, upsert over a bidirectional stream with Struct metadata, search with a Struct filter, Ask,
register a connector and read typed Cells whose int64 survives exactly as a string, and decode a
failure's google.rpc.Status details (ErrorInfo reason, RequestInfo) from the trailer.

Node and npm are needed: without them the test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from background_loop import live_server
from conftest import in_ci
from google.protobuf import descriptor_pool, json_format, message_factory

from ragloom.config import Settings
from ragloom.retrieval.collections import CollectionManager
from ragloom.services._proto import generation_pb2, rag_pb2, retrieval_pb2, tables_pb2

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"
CLIENT = EXAMPLE / "client.mjs"
SHOP_DB = ROOT / "examples" / "shop.db"
README = ROOT / "README.md"
README_SECTION = "## Calling ragloom from other languages"
PACKAGES = ("@grpc/grpc-js", "@grpc/proto-loader")
STEPS = ["generate_stream", "generate_json", "retrieval", "ask", "tables", "error"]
# how the Generate and Ask streams may end here: ABORT would mean the server cut them short
ENDED = {"FINISH_REASON_STOP", "FINISH_REASON_LENGTH"}
assert ENDED <= set(generation_pb2.FinishReason.keys())


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so a missing toolchain is an error", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with examples/node's pinned packages installed (npm ci, once)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed to run examples/node/client.mjs (Node.js 18 or later)")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 18:
        _unavailable(f"examples/node/client.mjs needs Node.js 18 or later, found {version}")
    if not all((EXAMPLE / "node_modules" / p / "package.json").exists() for p in PACKAGES):
        cmd = [npm, "ci", "--prefix", str(EXAMPLE), "--no-audit", "--no-fund"]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            _unavailable("`npm ci --prefix examples/node` took longer than 300 s")
        if proc.returncode != 0:
            _unavailable(f"`npm ci --prefix examples/node` failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return node


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with Generation, Retrieval, Rag and Tables on the bundled model; its collections,
    connectors and chunk KV in a temporary folder (the model's conversion cache stays in the
    default data dir)."""
    tmp = tmp_path_factory.mktemp("node-client")
    manager = CollectionManager(tmp / "collections")
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp, chunk_kv_memory_bytes=64 << 20,
                        connector_roots=[tmp_path_factory.getbasetemp()])  # `steps` puts its shop.db there
    try:
        engine = Settings(device="cpu", kv_cache_tokens=8192, max_num_seqs=4)
        with live_server(settings, engine, collections=manager) as served:
            yield served.address
    finally:
        manager.close()


@pytest.fixture(scope="module")
def steps(node: str, address: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Runs the Node client once and returns its JSON lines by step, failing with its whole output
    if it exits non-zero (it checks the stream shapes itself and exits 1 on any failed step)."""
    db = tmp_path_factory.mktemp("node-sqlite") / "shop.db"
    shutil.copy(SHOP_DB, db)
    cmd = [node, str(CLIENT), "--address", address, "--sqlite", str(db), "--timeout", "120"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    out = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, out
    assert [line["step"] for line in lines] == STEPS, out
    assert all(line["ok"] for line in lines), out
    return {line["step"]: line for line in lines}


def test_generate_streams_chat_chunks_then_complete(steps: dict[str, dict[str, Any]]) -> None:
    s = steps["generate_stream"]
    assert s["text"].strip() and s["chunks"] >= 1
    assert s["finish_reason"] in ENDED
    assert s["usage"]["completion_tokens"] >= 1 and s["usage"]["prompt_tokens"] > 1
    # the id the client chose comes back in the Complete and in the x-request-id header
    assert s["request_id"].startswith("node-gen-")
    assert s["x_request_id"] == s["request_id"]


def test_generate_json_schema_output_parses(steps: dict[str, dict[str, Any]]) -> None:
    s = steps["generate_json"]
    value = json.loads(s["text"])
    assert value == s["value"]
    assert set(value) == {"name", "age", "city"}
    assert isinstance(value["age"], int) and isinstance(value["name"], str) and isinstance(value["city"], str)
    assert s["finish_reason"] == "FINISH_REASON_STOP"


def test_upsert_and_grouped_search_with_struct_metadata(steps: dict[str, dict[str, Any]]) -> None:
    s = steps["retrieval"]
    assert s["upserted"] == "4"  # int64 arrives as a decimal string (longs: String)
    ids = [h["id"] for h in s["hits"]]
    assert ids and len(ids) == len(set(ids)), ids  # group_by_document: distinct documents
    assert ids[0] == "danube"
    # toStruct's Struct reached the server: the metadata comes back with the hits, typed
    by_id = {h["id"]: h["metadata"] for h in s["hits"]}
    assert by_id["danube"] == {"topic": "nature", "reviewed": True}
    # ... and a Struct filter selects by it
    assert s["filtered"] == ["colosseum", "eiffel"]


def test_ask_streams_passages_then_answer(steps: dict[str, dict[str, Any]]) -> None:
    s = steps["ask"]
    assert s["passages"] and {p["id"] for p in s["passages"]} <= {"eiffel", "everest", "danube", "colosseum"}
    assert s["passages"][0]["id"] == "eiffel"
    sources = set(rag_pb2.KvSource.keys()) - {"KV_SOURCE_UNSPECIFIED"}
    assert all(p["kv_source"] in sources and p["tokens"] > 0 for p in s["passages"])
    assert s["answer"].strip() and s["chunks"] >= 1
    assert s["finish_reason"] in ENDED
    assert s["mode"] in set(rag_pb2.AskMode.keys()) - {"ASK_MODE_UNSPECIFIED"}


def test_execute_sql_typed_cells_keep_int64_exact(steps: dict[str, dict[str, Any]]) -> None:
    s = steps["tables"]
    with sqlite3.connect(SHOP_DB) as conn:
        (orders,) = conn.execute("SELECT count(*) FROM orders").fetchone()
    assert s["count"] == str(orders)
    assert s["columns"] == [{"name": "n", "kind": "CELL_KIND_INT"}, {"name": "big", "kind": "CELL_KIND_INT"}]
    assert s["big"] == str(2**53 + 1)
    assert s["big_as_number"] != 2**53 + 1  # a JS number would have lost it
    assert s["row_count"] == "1"
    # the bundled 135M model may write wrong SQL: only the shape of the answer is checked
    q = s["query"]
    assert q["sql"] and isinstance(q["valid"], bool) and isinstance(q["error"], str)
    assert q["error"] or q["row_count"] == str(q["rows_received"])


def test_error_details_decode_in_node(steps: dict[str, dict[str, Any]]) -> None:
    s = steps["error"]
    assert s["code"] == "NOT_FOUND"
    assert s["reason"] == "COLLECTION_NOT_FOUND"
    assert s["domain"] == "ragloom.dev"
    assert s["metadata"] == {"collection": s["collection"]}
    assert s["request_id"] == s["sent_request_id"]
    assert "google.rpc.ErrorInfo" in s["details"] and "google.rpc.RequestInfo" in s["details"]


def _readme_grpcurl_commands() -> list[list[str]]:
    """The grpcurl commands of README's section on other languages, each as its arguments."""
    text = README.read_text()
    section = text[text.index(README_SECTION) :]
    section = section[: section.index("\n## ", len(README_SECTION))]
    script = "\n".join(re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)).replace("\\\n", " ")
    words = shlex.split(script, comments=True)  # newlines are blanks here: split at each "grpcurl"
    starts = [i for i, w in enumerate(words) if w == "grpcurl"]
    return [words[a + 1 : b] for a, b in zip(starts, [*starts[1:], len(words)], strict=True)]


def test_readme_grpcurl_bodies_match_the_protos() -> None:
    """grpcurl is not installed where the tests run; what it would be sent is checked instead: each
    -d body parses as proto3 JSON into its method's request message (field names, enum names,
    Struct objects, int64 strings), and each described symbol exists."""
    pool = descriptor_pool.Default()
    assert all(m.DESCRIPTOR.package == "ragloom.v1" for m in (generation_pb2, rag_pb2, retrieval_pb2, tables_pb2))
    commands = _readme_grpcurl_commands()
    methods: list[str] = []
    for args in commands:
        if "describe" in args:
            symbol = args[-1]
            try:
                pool.FindMethodByName(symbol)
            except KeyError:
                pool.FindMessageTypeByName(symbol)  # raises KeyError for a name the protos lack
            continue
        if "list" in args:
            continue
        service, method = args[-1].rsplit("/", 1)
        desc = pool.FindMethodByName(f"{service}.{method}")
        methods.append(desc.full_name)
        body = args[args.index("-d") + 1].strip()
        messages = []
        decoder = json.JSONDecoder()
        while body:
            obj, end = decoder.raw_decode(body)
            messages.append(json_format.ParseDict(obj, message_factory.GetMessageClass(desc.input_type)()))
            body = body[end:].strip()
        assert len(messages) == 1 or desc.client_streaming, (desc.full_name, len(messages))
        for m in messages:
            assert m.ByteSize() > 0 or m.DESCRIPTOR.name == "UpsertRequest"
    assert {
        "ragloom.v1.GenerationService.Generate",
        "ragloom.v1.RetrievalService.Upsert",
        "ragloom.v1.RetrievalService.Search",
        "ragloom.v1.RagService.Ask",
        "ragloom.v1.TablesService.ExecuteSql",
    } <= set(methods), methods
