#!/usr/bin/env python
"""Scale: RAM, build time, QPS (batch 1 and 64) and recall@10 vs exact float search, at --n vectors.

Data (--data):
  clustered  synthetic 384-d unit vectors (2,000 gaussian clusters, anisotropic per-dimension scales,
             so codes are not uniformly random); queries are fresh draws from the same mixture. Its
             spectrum is nearly flat (isotropic-ish noise in all 384 dims), which is hard for sign codes.
  spectrum   draws from one gaussian with the mean and full 384x384 covariance of the REAL
             all-MiniLM-L6-v2 embeddings of the SciFact corpus (5,183 docs), L2-normalized; queries
             from the gaussian fitted to the real SciFact test-query embeddings (300; covariance rank
             <= 299), or from the corpus gaussian if those are not cached. Embeddings come from (or are
             written to) the retrieval_quality.py cache. The spectrum decays like real embeddings'.
The participation ratio (sum l)^2 / sum l^2 of each dataset's covariance eigenvalues is printed
for context (effective dimension). Systems:
  float flat           faiss IndexFlatIP (exact; the ground truth and the baseline)
  binary flat+rescore  ragloom VectorIndex kind=flat: Hamming top k*oversample -> int8 rescoring
  binary IVF+rescore   ragloom VectorIndex kind=ivf (nlist<=1024, nprobe 32) -> int8 rescoring
RAM is the index's resident structures (float: n*d*4; binary: 48-B codes + int64 ids); the int8
rescoring rows are memory-mapped from disk and reported separately.

    python benchmarks/retrieval_scale.py --n 1000000 [--data clustered|spectrum] [--oversample 4]
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


class Gaussian:
    """N(mean, cov) fitted to rows of `v`, sampled via the eigendecomposition of cov (which, unlike a
    Cholesky factor, also works when cov is rank-deficient: 300 queries give rank <= 299)."""

    def __init__(self, v: np.ndarray) -> None:
        v = v.astype(np.float64)
        self.n = len(v)
        self.mean = v.mean(0)
        lam, vec = np.linalg.eigh(np.cov(v, rowvar=False))
        lam = np.clip(lam, 0.0, None)
        self.rank = int(np.sum(lam > lam.max() * 1e-10))
        self.eigenvalues = lam[::-1]
        self.factor = (vec * np.sqrt(lam)).T.astype(np.float32)  # z @ factor ~ N(0, cov)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, DIM), np.float32)
        mean = self.mean.astype(np.float32)
        for s in range(0, n, 100_000):
            m = min(100_000, n - s)
            v = rng.standard_normal((m, DIM), dtype=np.float32) @ self.factor + mean
            out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def real_embeddings(model: str) -> tuple[np.ndarray, np.ndarray | None]:
    """SciFact corpus and test-query embeddings from retrieval_quality.py's cache, embedding them
    there (Embedder) when missing and the dataset is present. Queries may come back None."""
    from retrieval_quality import CACHE, DATA, cached_embeddings, load_beir

    path = {name: CACHE / f"scifact-{model}-{name}.npy" for name in ("corpus", "queries-test")}
    got = {name: np.load(f) for name, f in path.items() if f.exists()}
    if len(got) < 2 and DATA.exists():
        corpus, queries, qrels = load_beir(DATA)
        got["corpus"] = cached_embeddings(
            "corpus", [(c.get("title", "") + " " + c["text"]).strip() for c in corpus], model)
        got["queries-test"] = cached_embeddings("queries-test", [queries[i] for i in qrels if i in queries], model)
    if "corpus" not in got:
        raise SystemExit(f"no SciFact corpus embeddings in {CACHE} and no dataset at {DATA} to embed")
    return got["corpus"], got.get("queries-test")


def participation_ratio(v: np.ndarray) -> float:
    """(sum l)^2 / sum l^2 over the covariance eigenvalues: the effective number of dimensions."""
    lam = np.clip(np.linalg.eigvalsh(np.cov(v.astype(np.float64), rowvar=False)), 0.0, None)
    return float(lam.sum() ** 2 / (lam**2).sum())


def cached_corpus(model: str) -> np.ndarray | None:
    """The real corpus embeddings if cached (no embedding run): for the clustered run's context line."""
    from retrieval_quality import CACHE

    path = CACHE / f"scifact-{model}-corpus.npy"
    return np.load(path) if path.exists() else None


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def timed(fn, reps: int) -> tuple[float, object]:  # noqa: ANN001
    out = fn()  # warm-up (page cache, lazy structures)
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    return (time.perf_counter() - t) / reps, out


def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    scales = np.linspace(1.5, 0.3, DIM).astype(np.float32) / np.sqrt(DIM)
    centers = rng.standard_normal((2000, DIM)).astype(np.float32) * scales
    nq = max(args.queries, 64)  # the batch-64 run needs 64
    real_x, real_q = real_embeddings(args.model) if args.data == "spectrum" else (None, None)
    t = time.perf_counter()
    if args.data == "clustered":
        x = clustered(args.n, 1, centers, scales)
        q = clustered(nq, 2, centers, scales)
        data = "clustered synthetic unit vectors (2,000 anisotropic gaussian clusters), queries from the same mixture"
        fit = {}
    else:
        gx = Gaussian(real_x)
        gq = Gaussian(real_q) if real_q is not None else gx
        x = gx.sample(args.n, 1)
        q = gq.sample(nq, 2)
        qsrc = (f"queries from N(mean, cov) of the {gq.n:,} real SciFact test-query embeddings (cov rank {gq.rank})"
                if real_q is not None else "queries from the same corpus gaussian (query embeddings not cached)")
        data = (f"spectrum: unit vectors drawn from N(mean, full 384x384 cov) of the {gx.n:,} real {args.model} "
                f"SciFact corpus embeddings (cov rank {gx.rank}; eigendecomposition sampling, seed 1), "
                f"then L2-normalized; {qsrc}, seed 2, normalized")
        fit = {"corpus_n": gx.n, "corpus_cov_rank": gx.rank, "queries_n": gq.n if real_q is not None else None,
               "queries_cov_rank": gq.rank if real_q is not None else None,
               "queries_from": "scifact test queries" if real_q is not None else "corpus gaussian"}
    gen_s = time.perf_counter() - t
    # Effective dimension of each dataset (100k-row samples; the spectrum one needs the real embeddings).
    if real_x is None:
        real_x = cached_corpus(args.model)
    pr = {"clustered": participation_ratio(x[:100_000] if args.data == "clustered"
                                           else clustered(100_000, 1, centers, scales))}
    if real_x is not None:
        pr["spectrum"] = participation_ratio(x[:100_000] if args.data == "spectrum"
                                             else Gaussian(real_x).sample(100_000, 1))
        pr["real scifact corpus"] = participation_ratio(real_x)
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
        "data_kind": args.data, "data": data, **({"fit": fit} if fit else {}),
        "participation_ratio": pr, "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
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
    lines.append("participation ratio (effective dim, of 384): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in res["participation_ratio"].items()))
    lines.append("load average (1/5/15 min) before {:.2f}/{:.2f}/{:.2f}, after {:.2f}/{:.2f}/{:.2f}".format(
        *res["loadavg_before"], *res["loadavg_after"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=200, help="queries for recall")
    p.add_argument("--single", type=int, default=50, help="batch-1 queries timed")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of the batch-64 search")
    p.add_argument("--oversample", type=int, default=4)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--data", choices=("clustered", "spectrum"), default="clustered")
    p.add_argument("--model", default="all-minilm-l6-v2", help="embedding model of the cached SciFact vectors")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    res = run(args)
    print(table(res))
    suffix = f"-os{args.oversample}" if args.oversample != 4 else ""
    out = args.output or RESULTS / f"retrieval_scale-{args.n}-{args.data}{suffix}.json"
    write_results(out, res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
