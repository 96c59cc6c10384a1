#!/usr/bin/env python
"""Scale: RAM, build time, QPS (batch 1 and 64) and recall@10 vs exact float search, at --n vectors.

Data: clustered synthetic 384-d unit vectors (2,000 gaussian clusters, anisotropic per-dimension
scales, so codes are not uniformly random); queries are fresh draws from the same mixture. Systems:
  float flat           faiss IndexFlatIP (exact; the ground truth and the baseline)
  binary flat+rescore  ragloom VectorIndex kind=flat: Hamming top k*oversample -> int8 rescoring
  binary IVF+rescore   ragloom VectorIndex kind=ivf (nlist<=1024, nprobe 32) -> int8 rescoring
RAM is the index's resident structures (float: n*d*4; binary: 48-B codes + int64 ids); the int8
rescoring rows are memory-mapped from disk and reported separately.

    python benchmarks/retrieval_scale.py --n 1000000
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
from results_io import write_results

from ragloom.retrieval.index import VectorIndex
from ragloom.retrieval.quantize import binarize
from ragloom.retrieval.search import search as two_stage

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 384
K = 10


def clustered(n: int, seed: int, centers: np.ndarray, scales: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        c = centers[rng.integers(0, len(centers), m)]
        v = c + rng.standard_normal((m, DIM), dtype=np.float32) * scales * 0.6
        out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def timed(fn, reps: int) -> tuple[float, object]:  # noqa: ANN001
    out = fn()  # warm-up (page cache, lazy structures)
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    return (time.perf_counter() - t) / reps, out


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    scales = np.linspace(1.5, 0.3, DIM).astype(np.float32) / np.sqrt(DIM)
    centers = rng.standard_normal((2000, DIM)).astype(np.float32) * scales
    t = time.perf_counter()
    x = clustered(args.n, 1, centers, scales)
    q = clustered(max(args.queries, 64), 2, centers, scales)  # the batch-64 run needs 64
    gen_s = time.perf_counter() - t
    rows = []

    # ---- float flat: ground truth + baseline
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    build = time.perf_counter() - t
    truth = flat.search(q, K)[1]
    t1, _ = timed(lambda: [flat.search(q[i : i + 1], K) for i in range(args.single)], 1)
    t64, _ = timed(lambda: flat.search(q[:64], K), args.reps)
    rows.append({"system": "float flat", "ram_bytes": args.n * DIM * 4, "disk_rescore_bytes": 0, "build_s": build,
                 "qps_b1": args.single / t1, "qps_b64": 64 / t64, "recall@10": 1.0})
    flat.reset()  # free the 1.5 GB before the binary builds

    tmp = tempfile.mkdtemp(prefix="ragloom-scale-")
    for kind in ("flat", "ivf"):
        t = time.perf_counter()
        ix = VectorIndex(Path(tmp) / kind, DIM, kind)
        ix.build(np.arange(args.n), x)
        build = time.perf_counter() - t
        if kind == "ivf":
            ix.binary.nprobe = args.nprobe

        def one(i: int, ix: VectorIndex = ix) -> list[int]:
            return [h.slot for h in two_stage(ix, q[i], K, args.oversample)]

        def batch64(ix: VectorIndex = ix) -> np.ndarray:
            # Batched Hamming stage (the expensive part), then per-query int8 rescoring.
            _, cand = ix.binary_search(binarize(q[:64]), K * args.oversample)
            out = np.empty((64, K), np.int64)
            for i in range(64):
                c = cand[i][cand[i] >= 0]
                s = ix.rescore(q[i], c)
                out[i] = c[np.argsort(-s)[:K]]
            return out

        t1, _ = timed(lambda ix=ix, one=one: [one(i) for i in range(args.single)], 1)
        t64, _ = timed(batch64, args.reps)
        found = np.array([one(i) for i in range(len(q))])
        rows.append({
            "system": f"binary {kind}+rescore", "ram_bytes": ix.memory_bytes(),
            "disk_rescore_bytes": args.n * DIM, "build_s": build, "qps_b1": args.single / t1,
            "qps_b64": 64 / t64, "recall@10": recall(found, truth),
            **({"nlist": int(ix.binary.nlist), "nprobe": int(ix.binary.nprobe)} if kind == "ivf" else {}),
        })
        ix.close()
        del ix
    base = rows[0]
    for r in rows:
        r["ram_x_less"] = base["ram_bytes"] / r["ram_bytes"]
        r["qps_b1_x"] = r["qps_b1"] / base["qps_b1"]
        r["qps_b64_x"] = r["qps_b64"] / base["qps_b64"]
    return {
        "benchmark": "retrieval_scale", "n": args.n, "dim": DIM, "k": K, "oversample": args.oversample,
        "data": "clustered synthetic unit vectors (2,000 anisotropic gaussian clusters), queries from the same mixture",
        "queries": args.queries, "generate_s": gen_s, "faiss_threads": faiss.omp_get_max_threads(),
        "targets": ">= 24x less RAM than float, >= 20x QPS of float flat", "rows": rows,
        "when": datetime.now(UTC).isoformat(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {p: importlib.metadata.version(p) for p in ("faiss-cpu", "numpy")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def table(res: dict) -> str:
    lines = [f"n={res['n']:,} x {res['dim']}  ({res['data']}); k={res['k']}, oversample {res['oversample']}, "
             f"faiss threads {res['faiss_threads']}",
             f"{'system':<22} {'RAM MB':>8} {'x less':>7} {'build s':>8} {'QPS b1':>8} {'x':>6} "
             f"{'QPS b64':>8} {'x':>6} {'R@10':>6}"]
    for r in res["rows"]:
        lines.append(f"{r['system']:<22} {r['ram_bytes'] / 1e6:>8.1f} {r['ram_x_less']:>7.1f} {r['build_s']:>8.1f} "
                     f"{r['qps_b1']:>8.1f} {r['qps_b1_x']:>6.1f} {r['qps_b64']:>8.1f} {r['qps_b64_x']:>6.1f} "
                     f"{r['recall@10']:>6.3f}")
    lines.append(f"targets: {res['targets']}; int8 rescoring rows on disk (memory-mapped): {res['n'] * res['dim'] / 1e6:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200, help="queries for recall")
    p.add_argument("--single", type=int, default=50, help="batch-1 queries timed")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of the batch-64 search")
    p.add_argument("--oversample", type=int, default=4)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    res = run(args)
    print(table(res))
    out = args.output or RESULTS / f"retrieval_scale-{args.n}.json"
    write_results(out, res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
