#!/usr/bin/env python
"""Serving under open-loop load: ragloom's engine with each feature off, and llama-cpp-python's
server (simulated faithfully), on the same mixed workload (issue 17, deliverable 5).

Workload (seeded, real text, token ids built once with the model's chat template and fed to every
system):

- `chat`: short chats sharing one --system-tokens-token system prompt (1,000; SciFact abstracts
  as the assistant's reference notes) + a short distinct user question (Spec-Bench `qa`);
- `rag`: MuSiQue questions with their passages, cut to a length drawn from --long-tokens
  (1,500-4,000);
- `sql`: a text-to-SQL question over one of the sql-eval SQLite databases: every CREATE TABLE
  plus example rows per table (the schema alone is 70-1,250 tokens), cut to a length drawn from
  --long-tokens;
- --new-tokens new tokens each (128-256, drawn per request), greedy, EOS ignored.

--mix sets the shares (default 0.6 chat, 0.2 rag, 0.2 sql; counts are rounded, then shuffled).
Arrivals are Poisson: unit-rate exponential gaps drawn once, divided by each --rates value, so
every rate replays the same requests in the same order, only compressed in time.

Systems (--configs), each run once per rate on a fresh engine (no cache carried between runs):

- `all-on`: prefix caching and chunked prefill on (the defaults);
- `no-prefix-cache`: prefix caching off;
- `prefill-first`: chunked prefill off: whole prompts prefilled in steps of their own, decodes wait;
- `llamacpp`: llama-cpp-python's server, simulated: one `Llama` on the same GGUF, requests served
  one at a time in arrival order (its server holds a lock around each completion), streaming
  `create_completion`. Its server's default prompt handling is kept: no prompt cache
  (`--cache` is off by default; --llamacpp-cache ram turns on its LlamaRAMCache), and the
  context's KV is reused for the longest prefix shared with the previous request.

The driver: every request whose arrival time has passed is added, one `step()` runs, and every
output token is timestamped. While a system has no work, the clock jumps to the next arrival
instead of sleeping (nothing runs while idle, so the timeline is the one a real-time run would
have; the wall time is the busy time only).

Reported per system and rate: TTFT p50/p99 (first token - arrival, queueing included),
inter-token latency p50/p99 (gaps between a request's successive tokens), throughput (generated
tokens / makespan), chat TTFT p50 and the share of chats whose system prompt was a prefix-cache
hit, KV bytes per token and how many sequences of the workload's mean length fit in 1 GiB of KV.
A probe on the idle engine (before the first run of each system) measures warm-prefix TTFT
against cold: a chat whose ~1,000-token system prompt is new, then another chat with the same
system prompt.

Targets (issue 17): warm-prefix TTFT >= 5x lower than cold; inter-token p99 under mixed load
>= 3x lower than prefill-first scheduling.

    python benchmarks/serving.py                       # full run, SmolLM2, ~20 min on 2 cores
    python benchmarks/serving.py --quick               # smoke test, ~2-3 min
    python benchmarks/serving.py --configs all-on,prefill-first --rates 0.2
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sqlite3
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from generate import (
    WEIGHTS,
    _version,
    busy_cores,
    describe_engine,
    hardware_info,
    llamacpp_skip_reason,
    model_slug,
    resolve_gguf,
    software_info,
)
from results_io import write_results

# One entry per ragloom system: EngineSettings overrides on top of the common settings. Adding a
# configuration is one line here.
CONFIGS: dict[str, dict[str, Any]] = {
    "all-on": {"prefix_caching": True, "chunked_prefill": True},
    "no-prefix-cache": {"prefix_caching": False, "chunked_prefill": True},
    "prefill-first": {"prefix_caching": True, "chunked_prefill": False},
    "kv-int8": {"prefix_caching": True, "chunked_prefill": True, "kv_dtype": "int8"},
    "kv-int4": {"prefix_caching": True, "chunked_prefill": True, "kv_dtype": "int4"},
}
PEER = "llamacpp"
BASELINE = "all-on"  # the configuration the targets are checked on
# Issue 17 targets.
TARGET_WARM_TTFT = 5.0  # cold TTFT / warm-prefix TTFT
TARGET_ITL_P99 = 3.0  # prefill-first ITL p99 / chunked ITL p99
GIB = 1 << 30

_REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _shared(rel: str) -> Path:
    """The shared data folder beside the checkout (../shared), or the checkout's own shared/."""
    candidates = (_REPO / "shared" / "data" / rel, _REPO.parent / "shared" / "data" / rel)
    return next((p for p in candidates if p.exists()), candidates[1])


SCIFACT = _shared("scifact/corpus.jsonl")
SPEC_BENCH = _shared("spec-bench/question.jsonl")
MUSIQUE = _shared("musique/musique_s.json")
TEXT2SQL = _shared("text2sql")

DEFAULTS: dict[str, Any] = {
    "requests": 16,
    "rates": [0.05, 0.2],
    "system_tokens": 1000,
    "long_tokens": (1500, 4000),
    "new_tokens": (128, 256),
    "probes": 2,
}
QUICK: dict[str, Any] = {
    "requests": 6,
    "rates": [0.5, 2.0],
    "system_tokens": 256,
    "long_tokens": (300, 600),
    "new_tokens": (16, 32),
    "probes": 1,
}
SYSTEM_INSTRUCTION = (
    "You are the help desk assistant of a biomedical research library. Answer the user's question "
    "briefly. Where the library's reference notes below apply, cite them by title.\n\nReference notes:\n\n"
)
RAG_INSTRUCTION = "Answer the question using only the numbered passages. Cite the passages you use, e.g. [2]."
SQL_INSTRUCTION = "You write one SQLite query that answers the user's question. Reply with the SQL only."


# --------------------------------------------------------------------------- workload


@dataclass
class Req:
    rid: str
    kind: str  # "chat" | "rag" | "sql"
    prompt: list[int]
    new_tokens: int
    unit_arrival: float  # arrival time at rate 1 request/s
    source: str  # where the text came from


@dataclass
class Probe:
    """Warm vs cold prefix on an idle system: two chats sharing a system prompt no one has seen."""

    cold: list[int]
    warm: list[int]
    shared_tokens: int  # leading tokens the two prompts have in common


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _need(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"error: shared data not found: {path} (see ../shared/data/README.md)")
    return path


class PromptBuilder:
    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer

    def chat(self, system: str, user: str) -> list[int]:
        ids = self.tok.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            add_generation_prompt=True,
            tokenize=True,
        )
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def fit(self, build: Callable[[int], list[int]], units: int, target: int) -> list[int]:
        """build(k) for the largest k in [0, units] whose prompt has at most `target` tokens
        (prompt length grows with k); build(0) if even that is longer."""
        lo, hi = 0, units
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(build(mid)) <= target:
                lo = mid
            else:
                hi = mid - 1
        return build(lo)


def scifact_notes(offset: int, words_needed: int) -> str:
    docs = []
    words = 0
    for doc in _jsonl(_need(SCIFACT))[offset:]:
        text = f"{doc['title']}\n{doc['text']}"
        docs.append(text)
        words += len(text.split())
        if words >= words_needed:
            break
    return "\n\n".join(docs)


def system_prompt(pb: PromptBuilder, offset: int, tokens: int, lead: str = "") -> str:
    """`lead`, the instruction and SciFact abstracts from `offset` on, cut (at a word) to `tokens` tokens."""
    head = lead + SYSTEM_INSTRUCTION
    words = scifact_notes(offset, tokens).split(" ")
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if pb.count(head + " ".join(words[:mid])) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return head + " ".join(words[:lo])


def qa_questions() -> list[str]:
    return [q["turns"][0] for q in _jsonl(_need(SPEC_BENCH)) if q.get("category") == "qa"]


def rag_prompt(pb: PromptBuilder, data: list[dict[str, Any]], index: int, target: int) -> tuple[list[int], str]:
    item = data[index % len(data)]
    passages: list[str] = []
    j = index
    # The question's own passages first; a later question's only if they are too short.
    while sum(len(p.split()) for p in passages) < target * 1.2 and j < index + len(data):
        for ctx in data[j % len(data)]["ctxs"]:
            title = f"{ctx['title']}\n" if ctx.get("title") else ""
            passages.append(f"[{len(passages) + 1}] {title}{ctx['text']}")
        j += 1
    words = "\n\n".join(passages).split(" ")
    question = item["question"]

    def build(k: int) -> list[int]:
        return pb.chat(RAG_INSTRUCTION, " ".join(words[:k]) + f"\n\nQuestion: {question}")

    return pb.fit(build, len(words), target), f"musique[{index % len(data)}]"


@dataclass
class Database:
    name: str
    tables: list[tuple[str, str, list[str], list[tuple[Any, ...]]]]  # name, CREATE, columns, rows

    @property
    def total_rows(self) -> int:
        return sum(len(t[3]) for t in self.tables)

    def render(self, k: int) -> str:
        """Every CREATE TABLE, and k example rows dealt round-robin over the tables (the
        CREATE TABLE + SELECT rows prompt format of text-to-SQL papers)."""
        counts = [0] * len(self.tables)
        left = k
        while left > 0:
            progressed = False
            for i, table in enumerate(self.tables):
                if left > 0 and counts[i] < len(table[3]):
                    counts[i] += 1
                    left -= 1
                    progressed = True
            if not progressed:
                break
        parts = []
        for (name, create, columns, rows), n in zip(self.tables, counts, strict=True):
            block = create.strip() + ";"
            if n:
                shown = "\n".join("\t".join(_cell(v) for v in row) for row in rows[:n])
                block += f"\n/*\n{n} example rows:\nSELECT * FROM {name} LIMIT {n};\n" + "\t".join(columns)
                block += f"\n{shown}\n*/"
            parts.append(block)
        return "\n\n".join(parts)


def _cell(value: Any) -> str:
    text = str(value).replace("\n", " ").replace("\t", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def load_databases() -> dict[str, Database]:
    dbs = {}
    for path in sorted(_need(TEXT2SQL / "dbs").glob("*.sqlite")):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = []
            for name, create in con.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL ORDER BY name"
            ):
                cur = con.execute(f'SELECT * FROM "{name}" LIMIT 200')
                columns = [d[0] for d in cur.description]
                tables.append((name, create, columns, cur.fetchall()))
        finally:
            con.close()
        dbs[path.stem] = Database(path.stem, tables)
    return dbs


def sql_prompt(
    pb: PromptBuilder, dbs: dict[str, Database], capacity: dict[str, int], questions: list[dict[str, Any]],
    index: int, target: int,
) -> tuple[list[int], str]:
    """A question of a database whose CREATE TABLEs fit in `target` tokens and whose CREATE TABLEs
    with all rows reach it (the nearest one if none does), rows left out to fit `target`."""
    lo_hi = {name: (pb.count(db.render(0)), capacity[name]) for name, db in dbs.items()}
    fitting = sorted(name for name, (lo, hi) in lo_hi.items() if lo <= target <= hi) or [
        min(lo_hi, key=lambda n: max(lo_hi[n][0] - target, target - lo_hi[n][1]))
    ]
    db = dbs[fitting[index % len(fitting)]]
    of_db = [q for q in questions if q["db"] == db.name]
    q = of_db[(index // len(fitting)) % len(of_db)]
    user_q = q["question"] + (f"\n{q['instructions']}" if q.get("instructions") else "")

    def build(k: int) -> list[int]:
        return pb.chat(SQL_INSTRUCTION, f"Database schema:\n\n{db.render(k)}\n\nQuestion: {user_q}\nSQL:")

    return pb.fit(build, db.total_rows, target), f"text2sql[{q['id']}]@{db.name}"


def build_workload(
    tokenizer: Any, args: argparse.Namespace
) -> tuple[list[Req], list[Probe], list[int], dict[str, Any]]:
    pb = PromptBuilder(tokenizer)
    rng = random.Random(args.seed)
    n = args.requests
    shares = dict(zip(("chat", "rag", "sql"), args.mix, strict=True))
    counts = {k: int(round(n * s)) for k, s in shares.items()}
    counts["chat"] += n - sum(counts.values())  # rounding leftovers go to the chats
    kinds = [k for k, c in counts.items() for _ in range(max(c, 0))]
    rng.shuffle(kinds)

    questions = qa_questions()
    chat_system = system_prompt(pb, 0, args.system_tokens)
    musique = json.loads(_need(MUSIQUE).read_text()) if "rag" in kinds else []
    dbs: dict[str, Database] = {}
    capacity: dict[str, int] = {}
    sql_questions: list[dict[str, Any]] = []
    if "sql" in kinds:
        dbs = load_databases()
        capacity = {name: pb.count(db.render(db.total_rows)) for name, db in dbs.items()}
        sql_questions = _jsonl(_need(TEXT2SQL / "questions.jsonl"))

    lo, hi = args.long_tokens
    reqs: list[Req] = []
    t = 0.0
    seen = {"chat": 0, "rag": 0, "sql": 0}
    for i, kind in enumerate(kinds):
        if i:
            t += rng.expovariate(1.0)
        k = seen[kind]
        seen[kind] += 1
        target = rng.randint(lo, hi)
        new = rng.randint(*args.new_tokens)
        if kind == "chat":
            prompt, source = pb.chat(chat_system, questions[k % len(questions)]), f"spec-bench qa[{k}]"
        elif kind == "rag":
            prompt, source = rag_prompt(pb, musique, rng.randrange(len(musique)), target)
        else:
            prompt, source = sql_prompt(pb, dbs, capacity, sql_questions, rng.randrange(10_000), target)
        reqs.append(Req(f"{kind}-{i}", kind, prompt, new, t, source))

    # Probes: system prompts that share no KV block with the trace's (another first sentence, other
    # SciFact abstracts), questions from the end of the qa list (the trace takes them from the start).
    probes = []
    for p in range(args.probes):
        system = system_prompt(pb, 200 + 40 * p, args.system_tokens, lead=f"Probe session {p + 1}. ")
        cold = pb.chat(system, questions[-1 - 2 * p])
        warm = pb.chat(system, questions[-2 - 2 * p])
        shared = next((i for i, (a, b) in enumerate(zip(cold, warm, strict=False)) if a != b), min(len(cold), len(warm)))
        probes.append(Probe(cold, warm, shared))
    # Warms up every system before its run (allocator, thread pools); shares no block with the trace.
    warmup = pb.chat("Warmup.", questions[len(questions) // 2])

    lengths = {kind: [len(r.prompt) for r in reqs if r.kind == kind] for kind in ("chat", "rag", "sql")}
    info = {
        "requests": n,
        "counts": counts,
        "seed": args.seed,
        "system_prompt_tokens": pb.count(chat_system),
        "chat_prompt_tokens_shared": min(
            (next((i for i, (a, b) in enumerate(zip(x.prompt, y.prompt, strict=False)) if a != b), 0)
             for x in reqs for y in reqs if x.kind == y.kind == "chat" and x is not y),
            default=None,
        ),
        "prompt_tokens": {k: {"min": min(v), "mean": statistics.fmean(v), "max": max(v)} for k, v in lengths.items() if v},
        "new_tokens_range": list(args.new_tokens),
        "mean_sequence_tokens": statistics.fmean(len(r.prompt) + r.new_tokens for r in reqs),
        "total_prompt_tokens": sum(len(r.prompt) for r in reqs),
        "total_new_tokens": sum(r.new_tokens for r in reqs),
        "unit_arrivals_s": [round(r.unit_arrival, 4) for r in reqs],
        "sources": {r.rid: r.source for r in reqs},
        "data": {"scifact": str(SCIFACT), "spec_bench": str(SPEC_BENCH), "musique": str(MUSIQUE), "text2sql": str(TEXT2SQL)},
    }
    return reqs, probes, warmup, info


# --------------------------------------------------------------------------- measurements


@dataclass
class Trace:
    """What one request saw: arrival and one timestamp per token, in seconds of the run's clock."""

    rid: str
    kind: str
    prompt_tokens: int
    new_tokens: int
    arrival: float
    times: list[float] = field(default_factory=list)
    cached_tokens: int = 0
    error: str | None = None


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linear between the closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class RunResult:
    system: str
    rate: float
    requests: int
    completed: int
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_ms: float
    itl_p99_ms: float
    itl_max_ms: float
    throughput_tok_s: float
    makespan_s: float
    wall_s: float  # busy time: the clock's idle jumps excluded
    chat_ttft_p50_s: float
    chat_warm_ttft_p50_s: float | None  # chats whose prompt was a prefix-cache hit
    chat_cold_ttft_p50_s: float | None
    chat_hits: int
    chats: int
    ttft_p50_by_kind_s: dict[str, float]
    kv_bytes_per_token: float | None
    kv_capacity_tokens: int | None
    seqs_fit_capacity: float | None  # KV capacity tokens / mean sequence length
    seqs_fit_per_gib: float | None  # sequences of the mean length whose KV fits in 1 GiB
    extra: dict[str, Any] = field(default_factory=dict)
    per_request: list[dict[str, Any]] = field(default_factory=list)


def summarize(system: str, rate: float, traces: list[Trace], wall_s: float, kv_bpt: float | None,
              kv_capacity: int | None, mean_len: float, extra: dict[str, Any]) -> RunResult:
    done = [t for t in traces if t.error is None and len(t.times) == t.new_tokens]
    ttft = [t.times[0] - t.arrival for t in done]
    gaps = [b - a for t in done for a, b in zip(t.times, t.times[1:], strict=False)]
    end = max((t.times[-1] for t in done), default=0.0)
    start = min((t.arrival for t in traces), default=0.0)
    makespan = end - start
    chats = [t for t in done if t.kind == "chat"]
    warm = [t.times[0] - t.arrival for t in chats if t.cached_tokens > 0]
    cold = [t.times[0] - t.arrival for t in chats if t.cached_tokens == 0]
    by_kind = {k: pct([t.times[0] - t.arrival for t in done if t.kind == k], 50)
               for k in ("chat", "rag", "sql") if any(t.kind == k for t in done)}
    per_request = [
        {
            "rid": t.rid, "kind": t.kind, "prompt_tokens": t.prompt_tokens, "new_tokens": t.new_tokens,
            "arrival_s": round(t.arrival, 4), "tokens": len(t.times), "cached_tokens": t.cached_tokens,
            "ttft_s": round(t.times[0] - t.arrival, 4) if t.times else None,
            "finish_s": round(t.times[-1], 4) if t.times else None,
            "itl_max_ms": round(1000 * max((b - a for a, b in zip(t.times, t.times[1:], strict=False)), default=0.0), 2),
            "error": t.error,
        }
        for t in traces
    ]
    return RunResult(
        system=system, rate=rate, requests=len(traces), completed=len(done),
        ttft_p50_s=pct(ttft, 50), ttft_p99_s=pct(ttft, 99),
        itl_p50_ms=1000 * pct(gaps, 50), itl_p99_ms=1000 * pct(gaps, 99), itl_max_ms=1000 * max(gaps, default=float("nan")),
        throughput_tok_s=sum(len(t.times) for t in done) / makespan if makespan > 0 else float("nan"),
        makespan_s=makespan, wall_s=wall_s,
        chat_ttft_p50_s=pct([t.times[0] - t.arrival for t in chats], 50),
        chat_warm_ttft_p50_s=pct(warm, 50) if warm else None,
        chat_cold_ttft_p50_s=pct(cold, 50) if cold else None,
        chat_hits=len(warm), chats=len(chats), ttft_p50_by_kind_s=by_kind,
        kv_bytes_per_token=kv_bpt, kv_capacity_tokens=kv_capacity,
        seqs_fit_capacity=kv_capacity / mean_len if kv_capacity else None,
        seqs_fit_per_gib=GIB / (kv_bpt * mean_len) if kv_bpt else None,
        extra=extra, per_request=per_request,
    )


class Clock:
    """Seconds since start, plus the idle time skipped: a system with nothing to do jumps to the
    next arrival instead of sleeping."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.perf_counter() - self.t0 + self.skipped

    def idle_until(self, t: float) -> None:
        self.skipped += max(0.0, t - self())

    def busy(self) -> float:
        return time.perf_counter() - self.t0


# --------------------------------------------------------------------------- systems


class RagloomSystem:
    def __init__(self, name: str, args: argparse.Namespace) -> None:
        from ragloom.config import EngineSettings
        from ragloom.generation.runner.engine import LLMEngine

        self.name = name
        extra: dict[str, Any] = {"data_dir": args.data_dir} if args.data_dir is not None else {}
        self.settings = EngineSettings(
            model=args.model,
            **extra,
            device=args.device,
            dtype=args.dtype,
            weights=args.weights,
            kv_cache_tokens=args.kv_tokens,
            max_num_batched_tokens=args.budget,
            speculative="off",  # the scheduler's features, as llama.cpp's server (no drafting) serves
            **CONFIGS[name],
        )
        self.engine = LLMEngine(self.settings)
        kv = self.engine.kv
        self.kv_capacity = kv.num_blocks * kv.block_size
        self.kv_bpt = kv.bytes / self.kv_capacity
        self.info = {
            **describe_engine(self.engine),
            "settings": {k: v for k, v in self.settings.model_dump().items() if k != "data_dir"},
            "kv_bytes": kv.bytes,
            "kv_blocks": kv.num_blocks,
            "kv_block_size": kv.block_size,
        }

    def _params(self, n: int) -> Any:
        from ragloom.generation.runner.params import SamplingParams

        return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)

    def ttft(self, prompt: list[int], rid: str) -> float:
        """Seconds from add_request to the first token on the idle engine (2 tokens generated)."""
        from ragloom.generation.runner.engine import Request

        t0 = time.perf_counter()
        first = None
        self.engine.add_request(Request(rid, list(prompt), self._params(2)))
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.token_ids and first is None:
                    first = time.perf_counter() - t0
        assert first is not None
        return first

    def run(self, reqs: list[Req], rate: float) -> tuple[list[Trace], float, dict[str, Any]]:
        from ragloom.generation.runner.engine import Request

        eng = self.engine
        traces = {r.rid: Trace(r.rid, r.kind, len(r.prompt), r.new_tokens, r.unit_arrival / rate) for r in reqs}
        order = sorted(reqs, key=lambda r: r.unit_arrival)
        clock = Clock()
        i = 0
        peak_running = peak_kv = 0
        empty_steps = 0
        steps, step_max = 0, 0.0
        preempt0 = eng.scheduler.num_preemptions
        loads0 = eng.loads()
        while i < len(order) or eng.has_unfinished():
            now = clock()
            while i < len(order) and traces[order[i].rid].arrival <= now:
                r = order[i]
                i += 1
                try:
                    eng.add_request(Request(r.rid, list(r.prompt), self._params(r.new_tokens)))
                except Exception as exc:  # rejected (e.g. does not fit the KV cache): recorded, not fatal
                    traces[r.rid].error = f"{type(exc).__name__}: {exc}"
            if not eng.has_unfinished():
                if i < len(order):
                    clock.idle_until(traces[order[i].rid].arrival)
                continue
            before = clock()
            outs = eng.step()
            now = clock()
            steps += 1
            step_max = max(step_max, now - before)
            loads = eng.loads()
            peak_running = max(peak_running, loads.running)
            peak_kv = max(peak_kv, loads.kv_blocks_used)
            empty_steps = 0 if outs else empty_steps + 1
            if empty_steps > 100_000:
                raise RuntimeError("the engine made no progress in 100,000 steps")
            for out in outs:
                t = traces.get(out.request_id)
                if t is None:
                    continue
                t.times.extend([now] * len(out.token_ids))
                t.cached_tokens = out.cached_tokens
            for rid, failure in list(eng.failures.items()):
                if rid in traces and traces[rid].error is None:
                    traces[rid].error = f"{type(failure).__name__}: {failure}"
        loads = eng.loads()
        extra = {
            "steps": steps,
            "step_max_s": step_max,
            "peak_running": peak_running,
            "peak_kv_blocks_used": peak_kv,
            "preemptions": eng.scheduler.num_preemptions - preempt0,
            "prefix_cache_queried_tokens": loads.prefix_cache_queried_tokens - loads0.prefix_cache_queried_tokens,
            "prefix_cache_hit_tokens": loads.prefix_cache_hit_tokens - loads0.prefix_cache_hit_tokens,
        }
        return list(traces.values()), clock.busy(), extra

    def close(self) -> None:
        close = getattr(self.engine, "close", None) or getattr(self.engine, "shutdown", None)
        if callable(close):
            close()
        del self.engine


class LlamaCppServerSystem:
    """llama-cpp-python's OpenAI-compatible server, minus HTTP: one Llama, one request at a time in
    arrival order (the server serializes completions behind a lock), streaming create_completion.

    Settings follow the server's defaults except where noted: n_batch/n_ubatch 512, no prompt
    cache unless --llamacpp-cache, n_threads = n_threads_batch = --threads (the server's default is
    half the cores for decode), n_ctx large enough for the longest request (the server's 2,048 is
    too small), logits_all False (the server's default True computes full-vocabulary logits for
    every prompt token, which nobody serving completions needs). EOS is masked by a logits
    processor (the API's logit_bias does the same through a processor) so every request runs to
    max_tokens like ragloom's ignore_eos; the same processor timestamps each token.
    """

    name = PEER

    def __init__(self, args: argparse.Namespace, n_ctx: int) -> None:
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(args.gguf),
            n_ctx=n_ctx,
            n_batch=512,
            n_ubatch=512,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            n_gpu_layers=-1 if args.device == "cuda" else 0,
            logits_all=False,
            verbose=False,
        )
        if args.llamacpp_cache == "ram":
            self.llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=2 << 30))  # the server's default size
        model, vocab = self.llm._model.model, self.llm._model.vocab
        self.eog = [t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        n_layer = llama_cpp.llama_model_n_layer(model)
        n_head = llama_cpp.llama_model_n_head(model)
        n_head_kv = llama_cpp.llama_model_n_head_kv(model)
        head_dim = llama_cpp.llama_model_n_embd(model) // n_head
        # K and V in f16 (the context's default type_k / type_v), per layer and KV head.
        self.kv_bpt = float(2 * n_layer * n_head_kv * head_dim * 2)
        self.kv_capacity = self.llm.n_ctx()
        self.info = {
            "llama_cpp_python": _version("llama_cpp_python"),
            "gguf": str(args.gguf),
            "n_ctx": self.llm.n_ctx(),
            "n_batch": 512,
            "n_ubatch": 512,
            "n_threads": args.threads,
            "logits_all": False,
            "prompt_cache": args.llamacpp_cache,
            "eog_tokens_masked": self.eog,
            "kv_type": "f16",
            "serial": True,
        }

    def _complete(self, prompt: list[int], n: int, clock: Callable[[], float]) -> list[float]:
        import numpy as np

        times: list[float] = []
        eog = np.array(self.eog, dtype=np.int64)

        def processor(input_ids: Any, scores: Any) -> Any:
            times.append(clock())  # logits of the next token are ready; it is sampled right after
            scores[eog] = -np.inf
            return scores

        from llama_cpp import LogitsProcessorList

        stream = self.llm.create_completion(
            prompt=list(prompt), max_tokens=n, temperature=0.0, stream=True,
            logits_processor=LogitsProcessorList([processor]),
        )
        for _chunk in stream:
            pass
        return times[:n]

    def ttft(self, prompt: list[int], rid: str) -> float:
        t0 = time.perf_counter()
        times = self._complete(prompt, 2, lambda: time.perf_counter() - t0)
        return times[0]

    def run(self, reqs: list[Req], rate: float) -> tuple[list[Trace], float, dict[str, Any]]:
        traces = [Trace(r.rid, r.kind, len(r.prompt), r.new_tokens, r.unit_arrival / rate)
                  for r in sorted(reqs, key=lambda r: r.unit_arrival)]
        by_id = {r.rid: r for r in reqs}
        clock = Clock()
        reused = 0
        previous: list[int] = []
        for t in traces:
            clock.idle_until(t.arrival)  # FIFO: the next request starts when it has arrived and the last is done
            prompt = by_id[t.rid].prompt
            # What the context's own prefix reuse can keep (llama-cpp-python recomputes at least one token).
            shared = next((k for k, (a, b) in enumerate(zip(previous, prompt, strict=False)) if a != b),
                          min(len(previous), len(prompt)))
            t.cached_tokens = min(shared, len(prompt) - 1)
            reused += t.cached_tokens
            try:
                t.times = self._complete(prompt, t.new_tokens, clock)
            except Exception as exc:
                t.error = f"{type(exc).__name__}: {exc}"
            previous = prompt
        extra = {"prefix_reused_tokens_estimate": reused, "peak_running": 1}
        return traces, clock.busy(), extra

    def close(self) -> None:
        self.llm.close()


def make_system(name: str, args: argparse.Namespace, reqs: list[Req]) -> RagloomSystem | LlamaCppServerSystem:
    if name == PEER:
        longest = max(len(r.prompt) + r.new_tokens for r in reqs)
        return LlamaCppServerSystem(args, n_ctx=256 * -(-(longest + 16) // 256))
    return RagloomSystem(name, args)


# --------------------------------------------------------------------------- report


def targets(results: list[RunResult], probes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    p = probes.get(BASELINE)
    if p and p.get("warm_ms"):
        ratio = p["cold_ms"] / p["warm_ms"]
        checks.append({
            "target": "warm-prefix TTFT vs cold (idle probe)", "system": BASELINE, "rate": None,
            "ratio": ratio, "needed": TARGET_WARM_TTFT, "met": ratio >= TARGET_WARM_TTFT,
            "detail": f"cold {p['cold_ms']:.0f} ms / warm {p['warm_ms']:.0f} ms",
        })
    by = {(r.system, r.rate): r for r in results}
    for (system, rate), r in sorted(by.items()):
        if system != BASELINE:
            continue
        off = by.get(("no-prefix-cache", rate))
        if off is not None and r.chat_warm_ttft_p50_s:
            ratio = off.chat_ttft_p50_s / r.chat_warm_ttft_p50_s
            checks.append({
                "target": "warm-prefix chat TTFT p50 under load vs prefix caching off", "system": BASELINE,
                "rate": rate, "ratio": ratio, "needed": TARGET_WARM_TTFT, "met": ratio >= TARGET_WARM_TTFT,
                "detail": f"off {off.chat_ttft_p50_s:.2f} s / warm {r.chat_warm_ttft_p50_s:.2f} s "
                f"({r.chat_hits}/{r.chats} chats hit)",
            })
        pf = by.get(("prefill-first", rate))
        if pf is not None and r.itl_p99_ms > 0:
            ratio = pf.itl_p99_ms / r.itl_p99_ms
            checks.append({
                "target": "inter-token p99 under mixed load vs prefill-first", "system": BASELINE, "rate": rate,
                "ratio": ratio, "needed": TARGET_ITL_P99, "met": ratio >= TARGET_ITL_P99,
                "detail": f"prefill-first {pf.itl_p99_ms:.0f} ms / chunked {r.itl_p99_ms:.0f} ms",
            })
    return checks


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_table(results: list[RunResult], order: list[str]) -> str:
    head = ["system", "rate/s", "done", "TTFT p50 s", "TTFT p99 s", "ITL p50 ms", "ITL p99 ms", "tok/s",
            "chat TTFT p50 s", "chat hits", "KV B/tok", "seqs/GiB", "seqs fit"]
    rows = [head]
    for r in sorted(results, key=lambda r: (order.index(r.system) if r.system in order else 99, r.rate)):
        rows.append([
            r.system, f"{r.rate:g}", f"{r.completed}/{r.requests}",
            _f(r.ttft_p50_s, ".2f"), _f(r.ttft_p99_s, ".2f"), _f(r.itl_p50_ms, ".0f"), _f(r.itl_p99_ms, ".0f"),
            _f(r.throughput_tok_s, ".1f"), _f(r.chat_ttft_p50_s, ".2f"), f"{r.chat_hits}/{r.chats}",
            _f(r.kv_bytes_per_token, ".0f"), _f(r.seqs_fit_per_gib, ".1f"), _f(r.seqs_fit_capacity, ".1f"),
        ])
    return _render(rows)


def format_probes(probes: dict[str, dict[str, Any]]) -> str:
    rows = [["system", "cold TTFT ms", "warm TTFT ms", "cold/warm", "shared prefix tokens"]]
    for name, p in probes.items():
        rows.append([name, _f(p.get("cold_ms"), ".0f"), _f(p.get("warm_ms"), ".0f"),
                     _f(p["cold_ms"] / p["warm_ms"] if p.get("warm_ms") else None, ".1f"), str(p.get("shared_tokens", "-"))])
    return _render(rows)


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _csv_floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def _range(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.replace("-", ",").split(",") if v.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or parts[0] < 1 or parts[0] > parts[1]:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (or one number), got {text!r}")
    return parts[0], parts[1]


def _mix(text: str) -> tuple[float, float, float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected CHAT,RAG,SQL shares, got {text!r}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def _configs(text: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    allowed = [*CONFIGS, PEER]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown config(s) {bad}; choose from {', '.join(allowed)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Open-loop serving benchmark (issue 17): a seeded mix of short chats sharing a system prompt, long RAG "
            "(MuSiQue) and text-to-SQL (schema + example rows) prompts, Poisson arrivals at each --rates value, "
            "against ragloom's engine with each feature off ("
            + "; ".join(f"{k}: " + " ".join(f"{f}={v}" for f, v in c.items()) for k, c in CONFIGS.items())
            + ") and llama-cpp-python's server (serial FIFO, streaming). Reports TTFT p50/p99, inter-token latency "
            "p50/p99, throughput, chat TTFT and prefix-cache hits, KV bytes per token and sequences that fit, plus "
            "an idle probe of warm vs cold prefix TTFT; checks the targets warm TTFT >= 5x lower than cold and "
            "ITL p99 >= 3x lower than prefill-first. Writes JSON to benchmarks/results/serving-<device>-<model>.json "
            "(-quick.json with --quick)."
        ),
    )
    p.add_argument("--configs", type=_configs, default=",".join([*CONFIGS, PEER]),
                   help=f"systems, comma-separated, from {', '.join([*CONFIGS, PEER])}; default: all")
    p.add_argument("--rates", type=_csv_floats, default=None,
                   help=f"arrival rates in requests/s, one run each; default: {','.join(map(str, DEFAULTS['rates']))}")
    p.add_argument("--requests", type=int, default=None, help=f"requests per run; default: {DEFAULTS['requests']}")
    p.add_argument("--mix", type=_mix, default="0.6,0.2,0.2", help="shares of chat,rag,sql requests; default: 0.6,0.2,0.2")
    p.add_argument("--system-tokens", type=int, default=None,
                   help=f"tokens of the chats' shared system prompt; default: {DEFAULTS['system_tokens']}")
    p.add_argument("--long-tokens", type=_range, default=None,
                   help="MIN,MAX prompt tokens of rag and sql requests (uniform); default: "
                   + ",".join(map(str, DEFAULTS["long_tokens"])))
    p.add_argument("--new-tokens", type=_range, default=None,
                   help="MIN,MAX new tokens per request (uniform), EOS ignored; default: "
                   + ",".join(map(str, DEFAULTS["new_tokens"])))
    p.add_argument("--probes", type=int, default=None,
                   help=f"cold/warm chat pairs of the idle TTFT probe (median reported); default: {DEFAULTS['probes']}")
    p.add_argument("--seed", type=int, default=17, help="workload seed (request mix, lengths, arrivals); default: 17")
    p.add_argument("--budget", type=int, default=512,
                   help="ragloom's max_num_batched_tokens (tokens per step: decodes, then prompt chunks); default: 512")
    p.add_argument("--kv-tokens", type=int, default=16384, help="ragloom's kv_cache_tokens; default: 16384")
    p.add_argument("--model", default=None, help="model name or HF folder, as generate.py (default: the bundled SmolLM2-135M)")
    p.add_argument("--weights", choices=WEIGHTS, default="auto", help="ragloom's weights setting; default: auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="ragloom's activation (and KV) dtype setting; default: auto")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: all usable cores)")
    p.add_argument("--gguf", type=Path, default=None, help="GGUF for llama.cpp (default: the model's own GGUF)")
    p.add_argument("--llamacpp-cache", choices=["none", "ram"], default="none",
                   help="llama.cpp's prompt cache (its server's --cache, off by default there); default: none")
    p.add_argument("--data-dir", type=Path, default=None, help="ragloom data dir (default: RAGLOOM_DATA_DIR or ~/.cache/ragloom)")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON path (default: benchmarks/results/serving-<device>-<model>[-quick].json)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes (about 2-3 minutes on 2 cores), overriding the size flags: "
                   + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULTS
    for key, value in sizes.items():
        if args.quick or getattr(args, key) is None:
            setattr(args, key, value)
    if args.requests < 1 or args.system_tokens < 16 or args.probes < 0 or args.budget < 16:
        p.error("--requests must be >= 1, --system-tokens >= 16, --probes >= 0, --budget >= 16")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    from ragloom.config import EngineSettings

    fields = EngineSettings.model_fields
    for name in args.configs:
        missing = [k for k in CONFIGS.get(name, {}) if k not in fields]
        if missing:
            # EngineSettings ignores unknown fields: the row would run with the feature's default under
            # a label that says otherwise.
            p.error(f"config {name!r} needs EngineSettings field(s) {missing}, which this checkout does not have")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = busy_cores()
    from transformers import AutoTokenizer

    from ragloom.config import BUNDLED_LLM, default_data_dir
    from ragloom.models import resolve_model

    args.model = args.model or BUNDLED_LLM
    data_dir = args.data_dir or default_data_dir()
    if args.gguf is None and PEER in args.configs:
        args.gguf = resolve_gguf(args.model, data_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model, data_dir))
    reqs, probe_prompts, warmup, workload = build_workload(tokenizer, args)
    mean_len = workload["mean_sequence_tokens"]
    print(
        f"workload: {workload['counts']}, prompt tokens {json.dumps(workload['prompt_tokens'])}, "
        f"{workload['total_prompt_tokens']} prompt + {workload['total_new_tokens']} new tokens per run",
        file=sys.stderr, flush=True,
    )
    output = args.output or RESULTS_DIR / (
        f"serving-{args.device}-{model_slug(args.model)}{'-quick' if args.quick else ''}.json"
    )

    results: list[RunResult] = []
    probes: dict[str, dict[str, Any]] = {}
    engines: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    started = time.perf_counter()

    def report(complete: bool) -> dict[str, Any]:
        checks = targets(results, probes)
        notes = [
            "TTFT: first token time - arrival time (queueing included); ITL: gaps between successive tokens of a "
            "request, pooled over all requests; tok/s: generated tokens / (last token time - first arrival).",
            "chat TTFT p50: chats only; chat hits: chats whose prompt found cached KV (ragloom: Output.cached_tokens "
            "> 0; llamacpp: a prefix shared with the previous request, which its context keeps).",
            f"KV B/tok: KV cache bytes per token; seqs/GiB: sequences of the workload's mean length ({mean_len:.0f} "
            "tokens) whose KV fits in 1 GiB; seqs fit: the system's own KV capacity (ragloom kv_cache_tokens, "
            "llama.cpp n_ctx) / that length (llama-cpp-python's server still runs one at a time).",
            "Open loop: requests arrive on a Poisson trace whatever the system's state; idle time is skipped by "
            "jumping the clock to the next arrival (nothing runs while idle).",
            f"ragloom: max_num_batched_tokens {args.budget}, kv_cache_tokens {args.kv_tokens}, weights {args.weights}; "
            "each (system, rate) on a fresh engine; the probe and a warmup request run before the first rate only "
            "(probe) or every rate (warmup), with prompts the trace does not share.",
        ]
        for c in checks:
            rate = "" if c["rate"] is None else f" at {c['rate']:g} req/s"
            notes.append(f"target {c['target']}{rate} >= {c['needed']:g}x: {'MET' if c['met'] else 'NOT MET'} "
                         f"({c['ratio']:.2f}x; {c['detail']})")
        if load_before is not None and load_before > 0.5:
            notes.append(
                f"WARNING: 1-minute load average was {load_before:.2f} before the run: other processes were using "
                "the CPU, so these timings are skewed (thread pools stall when cores are shared)."
            )
        return {
            "benchmark": "serving",
            "complete": complete,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": [sys.executable, *sys.argv],
            "hardware": {**hardware_info(args.device, args.threads), "load_avg_1m_before": load_before,
                         "load_avg_1m_after": busy_cores()},
            "software": software_info(),
            "settings": {
                "configs": {n: CONFIGS.get(n, "llama-cpp-python server (simulated)") for n in args.configs},
                "rates": args.rates, "requests": args.requests, "mix": args.mix, "system_tokens": args.system_tokens,
                "long_tokens": list(args.long_tokens), "new_tokens": list(args.new_tokens), "probes": args.probes,
                "seed": args.seed, "budget": args.budget, "kv_tokens": args.kv_tokens, "model": args.model,
                "weights": args.weights, "dtype": args.dtype, "device": args.device, "threads": args.threads,
                "gguf": str(args.gguf) if args.gguf else None, "llamacpp_cache": args.llamacpp_cache,
                "quick": args.quick, "greedy": True, "ignore_eos": True,
            },
            "workload": workload,
            "engines": engines,
            "probes": probes,
            "results": [asdict(r) for r in results],
            "targets": checks,
            "skipped": skipped,
            "failed": failed,
            "elapsed_s": time.perf_counter() - started,
            "notes": notes,
        }

    if PEER in args.configs and (reason := llamacpp_skip_reason(args)):
        skipped[PEER] = reason
        print(f"skipping {PEER}: {reason}", file=sys.stderr)
    # Rate by rate, every system at one rate before the next: the rows compared against each other
    # run close together in time.
    for k, rate in enumerate(args.rates):
        for name in [n for n in args.configs if n not in skipped]:
            print(f"{name} @ {rate:g} req/s: loading", file=sys.stderr, flush=True)
            system = None
            try:
                system = make_system(name, args, reqs)
                engines[name] = system.info
                if k == 0 and probe_prompts:
                    system.ttft(warmup, f"warmup-{name}")
                    cold, warm = [], []
                    for j, pp in enumerate(probe_prompts):  # each warm chat right after its cold one
                        cold.append(system.ttft(pp.cold, f"probe-cold-{j}"))
                        warm.append(system.ttft(pp.warm, f"probe-warm-{j}"))
                    probes[name] = {
                        "cold_ms": 1000 * statistics.median(cold), "warm_ms": 1000 * statistics.median(warm),
                        "cold_all_ms": [1000 * c for c in cold], "warm_all_ms": [1000 * w for w in warm],
                        "shared_tokens": probe_prompts[0].shared_tokens, "prompt_tokens": len(probe_prompts[0].cold),
                    }
                    print(f"  probe: cold {probes[name]['cold_ms']:.0f} ms, warm {probes[name]['warm_ms']:.0f} ms",
                          file=sys.stderr, flush=True)
                else:
                    system.ttft(warmup, f"warmup-{name}")
                traces, wall, extra = system.run(reqs, rate)
                r = summarize(name, rate, traces, wall, system.kv_bpt, system.kv_capacity, mean_len, extra)
                results.append(r)
                print(
                    f"  {r.completed}/{r.requests} done in {r.makespan_s:.1f} s (busy {wall:.1f} s): TTFT p50 "
                    f"{r.ttft_p50_s:.2f} s p99 {r.ttft_p99_s:.2f} s, ITL p50 {r.itl_p50_ms:.0f} ms p99 "
                    f"{r.itl_p99_ms:.0f} ms, {r.throughput_tok_s:.1f} tok/s",
                    file=sys.stderr, flush=True,
                )
                bad = [t.rid for t in traces if t.error is None and len(t.times) != t.new_tokens]
                if bad:
                    raise RuntimeError(f"{name} produced the wrong number of tokens for {bad}")
            except Exception as exc:
                failed[f"{name}@{rate:g}"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            finally:
                if system is not None:
                    system.close()
                del system
                gc.collect()
            write_results(output, report(complete=False))

    data = report(complete=True)
    write_results(output, data)
    print(
        f"\nserving benchmark: {args.model} on {args.device}, {args.threads} threads, {args.requests} requests per run "
        f"({', '.join(f'{v} {k}' for k, v in workload['counts'].items())}), prompt tokens "
        + ", ".join(f"{k} {v['min']}-{v['max']}" for k, v in workload["prompt_tokens"].items())
        + f", new tokens {args.new_tokens[0]}-{args.new_tokens[1]}, budget {args.budget}"
    )
    order = [*CONFIGS, PEER]
    print(format_table(results, order))
    if probes:
        print("\nidle probe: a chat with a new system prompt (cold), then another chat with the same one (warm)")
        print(format_probes(probes))
    for name, reason in {**skipped, **failed}.items():
        print(f"{name}: {'skipped' if name in skipped else 'FAILED'}: {reason}")
    for note in data["notes"]:
        print(f"- {note}")
    print(f"JSON: {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
