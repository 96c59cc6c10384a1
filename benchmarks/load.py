#!/usr/bin/env python
"""Open-loop load on a real `ragloom serve`: generate, search, ask and execute_sql at 0.5x, 1x and
2x each workload's measured capacity (issue 21, deliverable 6).

The server runs as a subprocess on the bundled model with the admission limits an operator would
set for it (--max-queued for the engine's waiting queue, max_concurrent_rpcs for gRPC,
--max-sql-running and --max-sql-queued for ExecuteSql), a
collection of real text and the bundled SQLite shop database. Per workload:

1. capacity: a closed loop of --workers concurrent callers for --capacity-s seconds; completed
   calls per second is the capacity;
2. for each factor in --factors: Poisson arrivals (seeded) at factor x capacity for --phase-s
   seconds, each call started on time whatever the earlier ones are doing (open loop), with a
   --deadline-s deadline. The server's resident memory is sampled every 0.2 s.

Reported per workload and factor: offered and completed rates, p50/p99 latency of the calls that
succeeded, the status codes seen, and the server's peak RSS. The checks of the issue: at 2x the
excess is refused with RESOURCE_EXHAUSTED, the admitted calls' p99 stays within 2x of their p99 at
1x, memory stays bounded, and the server is alive at the end. There is no peer here: this measures
ragloom against its own capacity.

    python benchmarks/load.py                 # ~6 min on 2 cores
    python benchmarks/load.py --quick         # ~2 min smoke run
    python benchmarks/load.py --workloads search,execute_sql --factors 1,2
    python benchmarks/load.py --replicas 2 --workloads search,ask   # through nginx over 2 replicas

With --replicas N the load goes through nginx (deploy/nginx-proxy.sh) to N replicas sharing a
throw-away PostgreSQL database and a Redis chunk-KV tier, as in tests/integration/test_replicas.py.
On 2 cores, N replicas share the same CPUs: compare 1 and 2 replicas for what the proxy and the
shared store cost, not for scaling (benchmarks/README.md models scaling to N machines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil
from prometheus_client.parser import text_string_to_metric_families
from results_io import REPO, RESULTS, write_results

from ragloom.client import Client
from ragloom.services._proto import generation_pb2 as gen
from ragloom.services._proto import generation_pb2_grpc as gen_grpc
from ragloom.services._proto import rag_pb2 as rag
from ragloom.services._proto import rag_pb2_grpc as rag_grpc
from ragloom.services._proto import retrieval_pb2 as ret
from ragloom.services._proto import retrieval_pb2_grpc as ret_grpc
from ragloom.services._proto import tables_pb2 as tab
from ragloom.services._proto import tables_pb2_grpc as tab_grpc

SHOP_DB = REPO / "examples" / "shop.db"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
QUESTIONS = ("What do rivers carry to the sea?", "Which city has the tallest tower?", "How do vaccines work?",
             "What is the capital of France?", "Why is the sky blue?", "What causes tides?")
QUERIES = ("protein folding in cells", "vaccine immune response", "climate and ocean currents", "gene expression",
           "tallest building", "river delta sediment")
SQL = ("SELECT count(*) FROM orders", "SELECT country, count(*) FROM customers GROUP BY country",
       "SELECT p.name, sum(o.quantity) FROM orders o JOIN products p ON p.id = o.product_id GROUP BY p.name")


def documents(limit: int) -> list[dict[str, Any]]:
    """SciFact abstracts when the shared data is there, else short generated texts."""
    corpus = SCIFACT / "corpus.jsonl"
    if corpus.exists():
        out = []
        with corpus.open() as f:
            for line in f:
                row = json.loads(line)
                out.append({"id": str(row["_id"]), "text": f"{row.get('title', '')}. {row.get('text', '')}"[:2000]})
                if len(out) == limit:
                    break
        return out
    topics = ("rivers", "cities", "vaccines", "oceans", "genes", "towers")
    return [{"id": f"doc{i}", "text": f"Document {i} is about {topics[i % 6]} and how they change over time."}
            for i in range(limit)]


@dataclass
class Phase:
    workload: str
    factor: float  # of capacity; 0 = the capacity run itself (closed loop)
    offered_per_s: float
    seconds: float
    statuses: dict[str, int]
    completed_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    peak_rss_mb: float
    # as the server counted them (its /metrics, this phase's difference): the status codes of the
    # calls its handlers ran (grpc's own max_concurrent_rpcs refusals never reach a handler), their
    # mean duration, and the p99 read off the duration histogram's buckets (coarse)
    server_statuses: dict[str, int] = field(default_factory=dict)
    server_mean_ms: float | None = None
    server_p99_ms: float | None = None
    # how late the load generator's own event loop ran (p99 of its 0.2 s wake-ups): when this is
    # large, calls were late leaving the generator, and the callers' latencies include that
    client_lag_p99_ms: float | None = None


@dataclass
class Sampler:
    pids: list[int]  # the servers' processes: their resident memory together
    peak: float = 0.0
    samples: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)  # this (client) loop's lateness per wake-up

    async def run(self, stop: asyncio.Event) -> None:
        procs = [psutil.Process(pid) for pid in self.pids]
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            rss = sum(p.memory_info().rss for p in procs) / 2**20
            self.peak = max(self.peak, rss)
            self.samples.append(rss)
            due = loop.time() + 0.2
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                self.lags_ms.append(max(0.0, loop.time() - due) * 1000)
                pass


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


Call = Callable[[int], Awaitable[None]]


def calls(channel: grpc.aio.Channel, deadline_s: float, max_tokens: int) -> dict[str, Call]:
    g, r, a, t = (gen_grpc.GenerationServiceStub(channel), ret_grpc.RetrievalServiceStub(channel),
                  rag_grpc.RagServiceStub(channel), tab_grpc.TablesServiceStub(channel))
    sampling = gen.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def generate(i: int) -> None:
        msg = gen.ChatMessage(role=gen.ROLE_USER, content=QUESTIONS[i % len(QUESTIONS)] + f" ({i})")
        async for _ in g.Generate(gen.GenerateRequest(messages=[msg], sampling=sampling), timeout=deadline_s):
            pass

    async def search(i: int) -> None:
        await r.Search(ret.SearchRequest(collection="load", query=QUERIES[i % len(QUERIES)], k=5), timeout=deadline_s)

    async def ask(i: int) -> None:
        req = rag.AskRequest(question=QUESTIONS[i % len(QUESTIONS)], collection="load", k=3, sampling=sampling)
        async for _ in a.Ask(req, timeout=deadline_s):
            pass

    async def execute_sql(i: int) -> None:
        async for _ in t.ExecuteSql(tab.ExecuteSqlRequest(connector="shop", sql=SQL[i % len(SQL)]), timeout=deadline_s):
            pass

    return {"generate": generate, "search": search, "ask": ask, "execute_sql": execute_sql}


ERRORS: defaultdict[str, list[str]] = defaultdict(list)  # the first details of each failure code the callers saw


async def _timed(call: Call, i: int, statuses: Counter[str], latencies: list[float]) -> None:
    start = time.perf_counter()
    try:
        await call(i)
    except grpc.aio.AioRpcError as exc:
        statuses[exc.code().name] += 1
        if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED and len(ERRORS[exc.code().name]) < 3:
            ERRORS[exc.code().name].append(exc.details() or "")
        return
    statuses["OK"] += 1
    latencies.append((time.perf_counter() - start) * 1000)


async def closed_loop(call: Call, workers: int, seconds: float) -> tuple[Counter[str], list[float], float]:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < end:
            await _timed(call, next(counter), statuses, latencies)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses, latencies, time.perf_counter() - start


async def open_loop(call: Call, rate: float, seconds: float, seed: int) -> tuple[Counter[str], list[float], float]:
    rng = random.Random(seed)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    at, i = 0.0, 0
    while True:
        at += rng.expovariate(rate)
        if at > seconds:
            break
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(call, i, statuses, latencies)))
        i += 1
    await asyncio.gather(*tasks)
    return statuses, latencies, time.perf_counter() - start


METHODS = {"generate": "Generate", "search": "Search", "ask": "Ask", "execute_sql": "ExecuteSql"}


@dataclass
class Scrape:
    statuses: Counter[str]
    seconds: float  # the duration histogram's sum
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count)


def scrape(ports: list[int], method: str) -> Scrape:
    """The servers' request counters and duration histogram of one method, added up."""
    statuses: Counter[str] = Counter()
    seconds, buckets = 0.0, Counter[float]()
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("method") != method:
                    continue
                if sample.name == "ragloom_requests_total":
                    statuses[sample.labels["code"]] += int(sample.value)
                elif sample.name == "ragloom_request_duration_seconds_sum":
                    seconds += sample.value
                elif sample.name == "ragloom_request_duration_seconds_bucket":
                    buckets[float(sample.labels["le"])] += sample.value
    return Scrape(statuses, seconds, sorted(buckets.items()))


def server_side(before: Scrape, after: Scrape) -> tuple[dict[str, int], float | None, float | None]:
    """A phase's server-side status counts, mean duration (ms) and bucket-estimated p99 (ms)."""
    statuses = {k: v - before.statuses.get(k, 0) for k, v in after.statuses.items() if v - before.statuses.get(k, 0)}
    total = sum(statuses.values())
    if not total:
        return statuses, None, None
    mean = (after.seconds - before.seconds) / total * 1000
    old = dict(before.buckets)
    counts = [(le, cum - old.get(le, 0.0)) for le, cum in after.buckets]
    lower, p99 = 0.0, None
    for le, cum in counts:  # linear within the first bucket that holds the 99th percentile
        if cum >= 0.99 * total:
            below = next((c for b, c in reversed(counts) if b < le), 0.0)
            inside = cum - below
            frac = (0.99 * total - below) / inside if inside else 1.0
            p99 = (lower + frac * (le - lower)) * 1000 if le != float("inf") else lower * 1000
            break
        lower = le
    return statuses, mean, p99


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Deployment:
    """Where the load goes (one server, or a proxy over replicas) and what to watch."""

    address: str
    pids: list[int]
    metrics_ports: list[int]
    alive: Callable[[], bool]
    describe: str


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """The admission limits an operator sets (see the module's docstring)."""
    env = {"RAGLOOM_MAX_CONCURRENT_RPCS": str(args.max_rpcs), "RAGLOOM_MAX_QUEUED": str(args.max_queued),
           "RAGLOOM_MAX_NUM_SEQS": str(args.max_num_seqs), "RAGLOOM_MAX_SQL_RUNNING": str(args.max_sql_running),
           "RAGLOOM_MAX_SQL_QUEUED": str(args.max_sql_queued)}
    if args.max_loop_lag_s:
        env["RAGLOOM_MAX_LOOP_LAG_S"] = str(args.max_loop_lag_s)
    return env


@contextlib.contextmanager
def one_server(args: argparse.Namespace, data_dir: Path) -> Iterator[Deployment]:
    """One `ragloom serve` on its own SQLite store, called directly."""
    metrics_port = free_port()
    cmd = [sys.executable, "-m", "ragloom.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
           "--connector-root", str(data_dir), "--log-level", "WARNING", "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **server_env(args)})
    assert proc.stdout is not None
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"server exited with {proc.wait()} before serving")
            if "serving" in line and " on " in line:
                address = line.rsplit(" on ", 1)[1].strip()
                # keep reading its output, so that it never blocks on a full pipe
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                break
        else:
            raise SystemExit("server did not start within 300 s")
        yield Deployment(address, [proc.pid], [metrics_port], lambda: proc.poll() is None, "one server, SQLite store")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def replicas_behind_proxy(args: argparse.Namespace, root: Path) -> Iterator[Deployment]:
    """--replicas N: N `ragloom serve` sharing a throw-away PostgreSQL database and Redis prefix,
    behind nginx (deploy/nginx-proxy.sh): the helpers of tests/integration/test_replicas.py."""
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from replicas import Proxy, Replica, nginx_available, shared_state, wait_serving

    if (why := nginx_available()) is not None:
        raise SystemExit(f"--replicas needs nginx: {why}")
    with shared_state(root) as shared:
        replicas = [Replica(f"r{i}", shared, env=server_env(args)) for i in range(args.replicas)]
        proxy = Proxy([r.address for r in replicas], root / "nginx")
        try:
            for r in replicas:
                r.start(wait=False)
            for r in replicas:
                wait_serving(r.address)
            proxy.start()
            alive = lambda: all(r.proc is not None and r.proc.poll() is None for r in replicas)  # noqa: E731
            yield Deployment(proxy.address, [r.proc.pid for r in replicas if r.proc], [r.metrics_port for r in replicas],
                             alive, f"{args.replicas} replica(s) over PostgreSQL + Redis behind nginx")
        finally:
            proxy.stop()
            for r in replicas:
                r.stop()


async def run(args: argparse.Namespace, target: Deployment) -> list[Phase]:
    phases: list[Phase] = []
    async with grpc.aio.insecure_channel(target.address) as channel:
        table = calls(channel, args.deadline_s, args.max_tokens)
        for name in args.workloads:
            call = table[name]
            await closed_loop(call, 1, 2.0)  # warm-up
            stop = asyncio.Event()
            sampler = Sampler(target.pids)
            sampling = asyncio.create_task(sampler.run(stop))
            statuses, latencies, took = await closed_loop(call, args.workers, args.capacity_s)
            stop.set()
            await sampling
            capacity = statuses["OK"] / took
            phases.append(Phase(name, 0.0, 0.0, took, dict(statuses), capacity, _pct(latencies, 0.5),
                                _pct(latencies, 0.99), sampler.peak))
            print(f"{name}: capacity {capacity:.2f}/s with {args.workers} callers", flush=True)
            for k, factor in enumerate(args.factors):
                stop = asyncio.Event()
                sampler = Sampler(target.pids)
                sampling = asyncio.create_task(sampler.run(stop))
                before = await asyncio.to_thread(scrape, target.metrics_ports, METHODS[name])
                statuses, latencies, took = await open_loop(call, factor * capacity, args.phase_s, seed=k)
                stop.set()
                await sampling
                await asyncio.sleep(0.5)  # the interceptor counts a call just after its last message
                after = await asyncio.to_thread(scrape, target.metrics_ports, METHODS[name])
                phases.append(Phase(name, factor, factor * capacity, took, dict(statuses), statuses["OK"] / took,
                                    _pct(latencies, 0.5), _pct(latencies, 0.99), sampler.peak,
                                    *server_side(before, after), _pct(sampler.lags_ms, 0.99)))
                print(f"  {factor:g}x: {dict(statuses)} p99 {phases[-1].p99_ms}; server: {phases[-1].server_statuses}"
                      f" p99 {phases[-1].server_p99_ms}; generator loop lag p99 {phases[-1].client_lag_p99_ms}",
                      flush=True)
    return phases


def checks(phases: list[Phase]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(p.workload for p in phases):
        at = {p.factor: p for p in phases if p.workload == name}
        one, two = at.get(1.0), at.get(2.0)
        if one is None or two is None:
            continue
        total = sum(two.statuses.values())
        refused = two.statuses.get("RESOURCE_EXHAUSTED", 0)
        undefined = sum(v for k, v in two.statuses.items() if k not in ("OK", "RESOURCE_EXHAUSTED"))
        ratio = (two.p99_ms / one.p99_ms) if one.p99_ms and two.p99_ms else None
        server_ratio = (two.server_p99_ms / one.server_p99_ms) if one.server_p99_ms and two.server_p99_ms else None
        out[name] = {
            "server_failures_at_2x": sum(v for k, v in two.server_statuses.items() if k not in ("OK", "RESOURCE_EXHAUSTED")),
            "server_p99_ratio_2x_over_1x": server_ratio,
            "refused_share_at_2x": refused / total if total else 0.0,
            "other_failures_at_2x": undefined,
            "p99_ratio_2x_over_1x": ratio,
            "p99_within_2x": ratio is not None and ratio <= 2.0,
            "peak_rss_mb": max(p.peak_rss_mb for p in phases if p.workload == name),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="generate,search,ask,execute_sql")
    parser.add_argument("--factors", default="0.5,1,2")
    parser.add_argument("--workers", type=int, default=4, help="closed-loop callers measuring capacity")
    parser.add_argument("--capacity-s", type=float, default=15.0)
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--deadline-s", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=24, help="generate/ask tokens per call")
    parser.add_argument("--max-queued", type=int, default=4, help="the server's engine waiting-queue bound")
    parser.add_argument("--max-rpcs", type=int, default=16, help="the server's max_concurrent_rpcs")
    parser.add_argument("--max-num-seqs", type=int, default=4,
                        help="the server's running-sequence bound (beyond it requests wait in the queue)")
    parser.add_argument("--max-sql-running", type=int, default=2, help="the server's ExecuteSql running slots")
    parser.add_argument("--max-sql-queued", type=int, default=8, help="the server's ExecuteSql waiting calls")
    parser.add_argument("--max-loop-lag-s", type=float, default=0.0,
                        help="the server's --max-loop-lag-s (0: off): shed calls while its event loop runs late")
    parser.add_argument("--replicas", type=int, default=0,
                        help="N > 0: N replicas over PostgreSQL and Redis behind nginx (deploy/nginx-proxy.sh); "
                             "0: one server on SQLite, called directly")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="short phases (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "load-cpu.json")
    args = parser.parse_args()
    args.workloads = args.workloads.split(",")
    args.factors = [float(f) for f in args.factors.split(",")]
    if args.quick:
        args.capacity_s, args.phase_s, args.docs = 6.0, 8.0, 50

    tmp = Path(tempfile.mkdtemp(prefix="ragloom-load-"))
    shutil.copy(SHOP_DB, tmp / "shop.db")
    deploy = replicas_behind_proxy(args, tmp) if args.replicas else one_server(args, tmp)
    try:
        with deploy as target:
            print(f"load on {target.describe} at {target.address}", flush=True)
            with Client(target.address, timeout=600) as c:
                c.create_collection("load")
                c.upsert("load", documents(args.docs))
                c.register_connector("shop", f"sqlite:///{tmp / 'shop.db'}")
            rss_start = sum(psutil.Process(pid).memory_info().rss for pid in target.pids) / 2**20
            phases = asyncio.run(run(args, target))
            alive = target.alive()
            with Client(target.address, timeout=30) as c:
                c.search("load", "still serving", k=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'workload':<12} {'load':>5} {'offered/s':>9} {'done/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'srv p99':>8} "
          f"{'RSS MB':>7}  statuses (callers | server)")
    for p in phases:
        load = "cap" if p.factor == 0 else f"{p.factor:g}x"
        fmt = (lambda v: f"{v:8.0f}" if v is not None else "       -")  # noqa: E731
        print(f"{p.workload:<12} {load:>5} {p.offered_per_s:9.2f} {p.completed_per_s:7.2f} {fmt(p.p50_ms)} "
              f"{fmt(p.p99_ms)} {fmt(p.server_p99_ms)} {p.peak_rss_mb:7.0f}  {p.statuses} | {p.server_statuses}")
    verdict = checks(phases)
    print("\nchecks at 2x:", json.dumps(verdict, indent=1))
    print(f"server alive at the end: {alive}; RSS at start {rss_start:.0f} MB")
    if ERRORS:
        print("other failures, first details:", dict(ERRORS))
    write_results(args.out, {
        "benchmark": "load", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": {"cpus": os.cpu_count(), "machine": os.uname().machine},
        "command": " ".join(sys.argv), "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "phases": [asdict(p) for p in phases], "checks": verdict, "alive": alive, "rss_start_mb": rss_start,
    })
    print(f"wrote {args.out}")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
