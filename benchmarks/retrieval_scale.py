#!/usr/bin/env python
"""Scale: RAM, build time, QPS (batch 1 and 64) and recall@10 vs exact float search, at --n vectors,
plus a sweep of oversample x nprobe (recall vs QPS), all in one run.

Data (--data):
  perturbed  (the realistic one) REAL all-MiniLM-L6-v2 embeddings with small anisotropic noise:
             1. base set B = the embeddings of the 5,183 SciFact corpus documents (title + " " + text)
                and of the distinct MuSiQue passages in ../shared/data/musique/musique_s.json (1,500
                listed; the MuSiQue part is skipped with --no-musique or when the file is absent),
                embedded by retrieval_quality.py's cache (~/.cache/ragloom/bench, or
                $RAGLOOM_BENCH_CACHE; computed once, ~7 min on 2 shared CPU cores). All are unit vectors.
             2. noise model N(0, C), C = the full 384x384 covariance of B (so the noise follows the
                directions real embeddings vary in, not isotropic; sampled as z @ F with
                F = (V sqrt(L))^T from C's eigendecomposition C = V L V^T).
             3. corpus: vector i = normalize(b_j + s * z_i), z_i ~ N(0, C), j = the i-th entry of a
                seeded permutation of 0..n-1 taken modulo |B| (so every base vector has n/|B| ~ 150
                perturbed copies at 1M), s = --noise (default NOISE below), seed 1.
             4. queries: the 300 real SciFact test-query embeddings, perturbed the same way
                normalize(q + s * z), z ~ N(0, C) with the corpus's C, seed 2 (cycled with fresh
                noise if --queries > 300).
             At s = 0.5 (NOISE) a perturbed copy has mean cosine 0.90 to its source and 0.82 to a
             sibling copy (the noise covariance has trace 0.91). The run prints the mean top-1 /
             top-10 cosine of the queries in the synthetic corpus next to the same figures for the
             real (unperturbed) queries in the real SciFact corpus, and the same for documents (each
             one's top-1 / top-10 other document), so the reader can judge the neighbourhoods:
                                            queries top-1 / top-10    documents top-1 / top-10
               real SciFact (5,183 docs)    0.62 / 0.50               0.67 / 0.58
               synthetic 1M, s = 0.5        0.59 / 0.57               0.87 / 0.86
             s = 0.5 was chosen with `--calibrate` (grid 0.3, 0.5, 0.7, 1.0; results/
             retrieval_scale-1000000-perturbed-calibrate.json) as the largest grid value at which the
             perturbed queries' mean top-1 cosine in the 1M set stays within 0.03 of the real
             SciFact one (a corpus 190x larger should not have much *less* similar best matches;
             s = 0.7 gives 0.55, s = 1.0 gives 0.50).
             Caveat: every real vector has ~155 copies, so a query's top-10 are near-ties (top-1
             minus 10th cosine 0.03, real SciFact 0.17) and documents sit in tight sibling groups;
             exact top-10 recall is therefore a demanding, probably pessimistic, figure. The run
             also reports recall on the real (unperturbed) 6.4k vectors with the real queries.
  clustered  synthetic 384-d unit vectors (2,000 gaussian clusters, anisotropic per-dimension scales);
             queries are fresh draws from the same mixture. Nearly flat spectrum and no genuine near
             neighbours (binary+rescore recall@10 was 0.30 at oversample 4 on it).
  spectrum   draws from one gaussian with the mean and full covariance of the real SciFact corpus
             embeddings, L2-normalized; queries from the gaussian of the real test-query embeddings.
             A realistic spectrum but, again, no local structure: every point is an independent draw.
The participation ratio (sum l)^2 / sum l^2 of each dataset's covariance eigenvalues is printed
for context (effective dimension).

Systems:
  float flat           faiss IndexFlatIP (exact; the ground truth and the baseline)
  binary flat+rescore  ragloom VectorIndex kind=flat: Hamming top k*oversample -> int8 rescoring
  binary IVF+rescore   ragloom VectorIndex kind=ivf (nlist<=1024) -> int8 rescoring
The two binary rows use ragloom's defaults for a collection of n vectors (search.default_oversample,
index.default_nprobe) unless --oversample / --nprobe are given; the sweep then runs every
--sweep-oversample value on the flat index and every (--sweep-nprobe, --sweep-oversample) pair on
the IVF index. RAM is the index's resident structures (float: n*d*4; binary: 48-B codes + int64
ids); the int8 rescoring rows are memory-mapped from disk and reported separately. QPS b1 = one
query per call; QPS b64 = 64 queries per binary-search call, each rescored separately.

    python benchmarks/retrieval_scale.py --n 1000000 --data perturbed
    python benchmarks/retrieval_scale.py --n 1000000 --data perturbed --calibrate --noise-grid 0.3,0.5,0.7
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from results_io import write_results

from ragloom.retrieval.index import VectorIndex, default_nprobe
from ragloom.retrieval.quantize import binarize
from ragloom.retrieval.search import default_oversample
from ragloom.retrieval.search import search as two_stage

RESULTS = Path(__file__).resolve().parent / "results"
MUSIQUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "musique" / "musique_s.json"
DIM = 384
K = 10
NOISE = 0.5  # chosen with --calibrate; see the module docstring and benchmarks/README.md
SWEEP_OVERSAMPLE = (2, 4, 10, 25, 50, 100)
SWEEP_NPROBE = (8, 32, 64, 128, 256)


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

    def noise(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """m draws of N(0, cov)."""
        return rng.standard_normal((m, DIM), dtype=np.float32) @ self.factor

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, DIM), np.float32)
        mean = self.mean.astype(np.float32)
        for s in range(0, n, 100_000):
            m = min(100_000, n - s)
            v = self.noise(rng, m) + mean
            out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def perturb(base: np.ndarray, n: int, noise: Gaussian, scale: float, seed: int) -> np.ndarray:
    """n unit vectors normalize(base[j] + scale * z), z ~ N(0, noise cov); j cycles through a
    seeded permutation so every base row gets n/len(base) copies (+-1)."""
    rng = np.random.default_rng(seed)
    src = rng.permutation(n) % len(base)
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        v = base[src[s : s + m]] + scale * noise.noise(rng, m)
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


def musique_embeddings(model: str) -> np.ndarray | None:
    """Embeddings of the distinct MuSiQue passages (cached like SciFact's), or None without the file."""
    from retrieval_quality import cached_embeddings

    if not MUSIQUE.exists():
        return None
    records = json.loads(MUSIQUE.read_text())
    texts = list(dict.fromkeys(c["text"] for r in records for c in r["ctxs"]))  # distinct, in order
    return cached_embeddings("passages", texts, model, dataset="musique")


def participation_ratio(v: np.ndarray) -> float:
    """(sum l)^2 / sum l^2 over the covariance eigenvalues: the effective number of dimensions."""
    lam = np.clip(np.linalg.eigvalsh(np.cov(v.astype(np.float64), rowvar=False)), 0.0, None)
    return float(lam.sum() ** 2 / (lam**2).sum())


def cached_corpus(model: str) -> np.ndarray | None:
    """The real corpus embeddings if cached (no embedding run): for the clustered run's context line."""
    from retrieval_quality import CACHE

    path = CACHE / f"scifact-{model}-corpus.npy"
    return np.load(path) if path.exists() else None


# ---------------------------------------------------------------------- realism of neighbourhoods


def topk_cosines(corpus: np.ndarray | faiss.Index, queries: np.ndarray, k: int, skip_self: bool = False) -> np.ndarray:
    """(nq, k) cosines of each query's k nearest corpus rows (a query that is a corpus row skips itself)."""
    index = topk_index(corpus) if isinstance(corpus, np.ndarray) else corpus
    d, _ = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + int(skip_self))
    return d[:, 1:] if skip_self else d


def nn_summary(cos: np.ndarray) -> dict[str, float]:
    """Mean top-1, mean top-10 (mean over ranks 1..10), mean 10th, and mean top-1 minus 10th."""
    return {"top1": float(cos[:, 0].mean()), "top10": float(cos[:, :K].mean()),
            "tenth": float(cos[:, K - 1].mean()), "gap_1_10": float((cos[:, 0] - cos[:, K - 1]).mean())}


def realism(real_x: np.ndarray, real_q: np.ndarray | None, synth: faiss.Index | np.ndarray,
            synth_x: np.ndarray, synth_q: np.ndarray, doc_sample: int) -> dict[str, dict[str, float]]:
    """Neighbour-similarity figures of the synthetic set next to the real SciFact ones."""
    rng = np.random.default_rng(3)
    out = {}
    if real_q is not None:
        out["real queries in real SciFact corpus"] = nn_summary(topk_cosines(real_x, real_q, K))
    out["synthetic queries in synthetic corpus"] = nn_summary(topk_cosines(synth, synth_q, K))
    pick = rng.choice(len(real_x), min(doc_sample, len(real_x)), replace=False)
    out["real docs in real SciFact corpus"] = nn_summary(topk_cosines(real_x, real_x[pick], K, skip_self=True))
    pick = rng.choice(len(synth_x), min(doc_sample, len(synth_x)), replace=False)
    out["synthetic docs in synthetic corpus"] = nn_summary(topk_cosines(synth, synth_x[pick], K, skip_self=True))
    return out


# ---------------------------------------------------------------------- measurement


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


def timed(fn: Callable[[], Any], min_s: float = 0.0, reps: int = 1) -> float:
    """Seconds per call: one warm-up call (page cache, lazy structures), then `reps` calls, more
    until at least `min_s` has passed (short calls are otherwise dominated by timer noise)."""
    fn()
    calls = 0
    t = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t
        if calls >= reps and elapsed >= min_s:
            return elapsed / calls


def measure_binary(ix: VectorIndex, q: np.ndarray, truth: np.ndarray, oversample: int, args: argparse.Namespace,
                   nprobe: int | None = None) -> dict:
    """QPS b1 / b64 and recall@10 of ragloom's two-stage search at this oversample (and nprobe)."""
    if nprobe is not None:
        ix.binary.nprobe = nprobe
    single = q[: args.single]

    def b1() -> None:
        for v in single:
            two_stage(ix, v, K, oversample)

    def b64() -> np.ndarray:
        # Batched Hamming stage (the expensive part), then per-query int8 rescoring.
        _, cand = ix.binary_search(binarize(q[:64]), K * oversample)
        out = np.full((64, K), -1, np.int64)
        for i in range(64):
            c = cand[i][cand[i] >= 0]
            top = c[np.argsort(-ix.rescore(q[i], c), kind="stable")[:K]]
            out[i, : len(top)] = top
        return out

    t1 = timed(b1, args.min_time)
    t64 = timed(b64, args.min_time, args.reps)
    found = np.array([[h.slot for h in two_stage(ix, v, K, oversample)] for v in q])
    return {"oversample": oversample, **({"nprobe": nprobe} if nprobe is not None else {}),
            "qps_b1": len(single) / t1, "qps_b64": 64 / t64, "recall@10": recall(found, truth)}


def real_anchor(base: np.ndarray, real_q: np.ndarray, oversamples: list[int]) -> dict:
    """Recall@10 of ragloom's flat two-stage search over the REAL (unperturbed) base vectors with the
    real queries, per oversample: the small-n end of the picture, no synthetic data involved."""
    truth = topk_index(base).search(real_q, K)[1]
    with tempfile.TemporaryDirectory() as tmp:
        ix = VectorIndex(Path(tmp) / "real", DIM, "flat")
        ix.build(np.arange(len(base)), base)
        out = {"n": len(base), "default_oversample": default_oversample(len(base)), "recall@10": {}}
        for o in sorted({*oversamples, out["default_oversample"]}):
            found = np.array([[h.slot for h in two_stage(ix, v, K, o)] for v in real_q])
            out["recall@10"][str(o)] = recall(found, truth)
        ix.close()
    return out


def topk_index(x: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(DIM)
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    return index


def make_data(args: argparse.Namespace, nq: int) -> dict[str, Any]:
    """Corpus x, queries q, a description, and what realism/participation figures need."""
    out: dict[str, Any] = {"fit": {}, "real_x": None, "real_q": None}
    if args.data == "clustered":
        rng = np.random.default_rng(0)
        scales = np.linspace(1.5, 0.3, DIM).astype(np.float32) / np.sqrt(DIM)
        centers = rng.standard_normal((2000, DIM)).astype(np.float32) * scales
        out["x"] = clustered(args.n, 1, centers, scales)
        out["q"] = clustered(nq, 2, centers, scales)
        out["data"] = "clustered synthetic unit vectors (2,000 anisotropic gaussian clusters), queries from the same mixture"
        out["real_x"] = cached_corpus(args.model)
        return out
    real_x, real_q = real_embeddings(args.model)
    out["real_x"], out["real_q"] = real_x, real_q
    if args.data == "spectrum":
        gx = Gaussian(real_x)
        gq = Gaussian(real_q) if real_q is not None else gx
        out["x"] = gx.sample(args.n, 1)
        out["q"] = gq.sample(nq, 2)
        qsrc = (f"queries from N(mean, cov) of the {gq.n:,} real SciFact test-query embeddings (cov rank {gq.rank})"
                if real_q is not None else "queries from the same corpus gaussian (query embeddings not cached)")
        out["data"] = (f"spectrum: unit vectors drawn from N(mean, full 384x384 cov) of the {gx.n:,} real {args.model} "
                       f"SciFact corpus embeddings (cov rank {gx.rank}; eigendecomposition sampling, seed 1), "
                       f"then L2-normalized; {qsrc}, seed 2, normalized")
        out["fit"] = {"corpus_n": gx.n, "corpus_cov_rank": gx.rank, "queries_n": gq.n if real_q is not None else None,
                      "queries_cov_rank": gq.rank if real_q is not None else None,
                      "queries_from": "scifact test queries" if real_q is not None else "corpus gaussian"}
        return out
    # perturbed
    if real_q is None:
        raise SystemExit("--data perturbed needs the SciFact test-query embeddings (run retrieval_quality.py once)")
    mus = None if args.no_musique else musique_embeddings(args.model)
    base = real_x if mus is None else np.concatenate([real_x, mus])
    noise = Gaussian(base)
    out["x"] = perturb(base, args.n, noise, args.noise, 1)
    reps = -(-nq // len(real_q))
    out["q"] = np.concatenate([perturb(real_q, len(real_q), noise, args.noise, 2 + r) for r in range(reps)])[:nq]
    # cosine of a copy to its source and between two copies of one source, on a sample
    rng = np.random.default_rng(4)
    b = base[rng.integers(0, len(base), 2000)]
    c1 = b + args.noise * noise.noise(rng, len(b))
    c2 = b + args.noise * noise.noise(rng, len(b))
    c1 /= np.linalg.norm(c1, axis=1, keepdims=True)
    c2 /= np.linalg.norm(c2, axis=1, keepdims=True)
    out["data"] = (f"perturbed: normalize(real + {args.noise} * z), z ~ N(0, full 384x384 cov of the {len(base):,} real "
                   f"{args.model} embeddings: {len(real_x):,} SciFact corpus docs"
                   + (f" + {len(mus):,} distinct MuSiQue passages" if mus is not None else "")
                   + f"), ~{args.n / len(base):.0f} copies per real vector, seed 1; queries: the {len(real_q)} real "
                   f"SciFact test-query embeddings perturbed the same way, seed 2")
    out["fit"] = {"base_n": len(base), "scifact_corpus_n": len(real_x), "musique_passages_n": 0 if mus is None else len(mus),
                  "noise_scale": args.noise, "noise_cov_trace": float(np.trace(np.cov(base.astype(np.float64), rowvar=False))),
                  "copies_per_base": args.n / len(base), "queries_from": f"{len(real_q)} scifact test queries, perturbed",
                  "cos_copy_to_source": float(np.mean(np.sum(c1 * b, axis=1))),
                  "cos_copy_to_sibling": float(np.mean(np.sum(c1 * c2, axis=1)))}
    out["base"], out["noise"] = base, noise
    return out


def calibrate(args: argparse.Namespace) -> dict:
    """Neighbour-similarity figures for each noise scale in --noise-grid (perturbed data, no indexes)."""
    nq = max(args.queries, 64)
    rows = []
    for s in args.noise_grid:
        args.noise = s
        d = make_data(args, nq)
        flat = faiss.IndexFlatIP(DIM)
        flat.add(d["x"])
        fig = realism(d["real_x"], d["real_q"], flat, d["x"], d["q"], args.doc_sample)
        rows.append({"noise": s, "fit": d["fit"], "realism": fig})
        print(f"noise {s}: " + "; ".join(f"{k}: top1 {v['top1']:.3f} top10 {v['top10']:.3f}" for k, v in fig.items()),
              flush=True)
        del flat, d
    return {"benchmark": "retrieval_scale-calibrate", "n": args.n, "rows": rows, "when": datetime.now(UTC).isoformat(),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    nq = max(args.queries, 64)  # the batch-64 run needs 64
    t = time.perf_counter()
    d = make_data(args, nq)
    x, q = d["x"], d["q"]
    gen_s = time.perf_counter() - t
    print(f"data ({gen_s:.0f} s): {d['data']}", flush=True)
    pr = {args.data: participation_ratio(x[:100_000])}
    if d["real_x"] is not None:
        pr["real scifact corpus"] = participation_ratio(d["real_x"])
    rows: list[dict] = []

    # ---- float flat: ground truth + baseline
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    build = time.perf_counter() - t
    truth = flat.search(q, K)[1]
    single = q[: args.single]
    t1 = timed(lambda: [flat.search(v[None], K) for v in single], 0.0)
    t64 = timed(lambda: flat.search(q[:64], K), 0.0, args.reps)
    rows.append({"system": "float flat", "ram_bytes": args.n * DIM * 4, "disk_rescore_bytes": 0, "build_s": build,
                 "qps_b1": len(single) / t1, "qps_b64": 64 / t64, "recall@10": 1.0})
    fig = anchor = None
    if args.data == "perturbed":
        fig = realism(d["real_x"], d["real_q"], flat, x, q, args.doc_sample)
        for k, v in fig.items():
            print(f"  {k:<40} top1 {v['top1']:.3f}  top10 {v['top10']:.3f}  10th {v['tenth']:.3f}", flush=True)
        anchor = real_anchor(d["base"], d["real_q"], args.sweep_oversample)
        print(f"  real base set ({anchor['n']:,} vectors, real queries): recall@10 by oversample {anchor['recall@10']}",
              flush=True)
    flat.reset()  # free the 1.5 GB before the binary builds
    print(f"float flat: {rows[-1]['qps_b1']:.1f} / {rows[-1]['qps_b64']:.1f} QPS", flush=True)

    sweep: list[dict] = []
    tmp = tempfile.mkdtemp(prefix="ragloom-scale-")
    for kind in ("flat", "ivf"):
        t = time.perf_counter()
        ix = VectorIndex(Path(tmp) / kind, DIM, kind)
        ix.build(np.arange(args.n), x)
        build = time.perf_counter() - t
        os_default = args.oversample or default_oversample(ix.ntotal)
        extra: dict[str, Any] = {}
        nprobe = None
        if kind == "ivf":
            nprobe = args.nprobe or default_nprobe(int(ix.binary.nlist), ix.ntotal)
            extra = {"nlist": int(ix.binary.nlist), "nprobe": nprobe, "nprobe_default": ix.binary.nprobe}
        m = measure_binary(ix, q, truth, os_default, args, nprobe)
        rows.append({"system": f"binary {kind}+rescore", "ram_bytes": ix.memory_bytes(),
                     "disk_rescore_bytes": args.n * DIM, "build_s": build, "qps_b1": m["qps_b1"],
                     "qps_b64": m["qps_b64"], "recall@10": m["recall@10"], "oversample": os_default, **extra})
        print(f"{rows[-1]['system']}: built in {build:.1f} s; {m}", flush=True)
        for probe in (args.sweep_nprobe if kind == "ivf" else [None]):
            for o in args.sweep_oversample:
                m = measure_binary(ix, q, truth, o, args, probe)
                sweep.append({"system": f"binary {kind}+rescore", **m})
                print(f"  sweep {kind}: {m}", flush=True)
        ix.close()
        del ix
    base = rows[0]
    for r in rows + sweep:
        if "ram_bytes" in r:
            r["ram_x_less"] = base["ram_bytes"] / r["ram_bytes"]
        r["qps_b1_x"] = r["qps_b1"] / base["qps_b1"]
        r["qps_b64_x"] = r["qps_b64"] / base["qps_b64"]
    return {
        "benchmark": "retrieval_scale", "n": args.n, "dim": DIM, "k": K,
        "oversample": rows[1]["oversample"], "nprobe": rows[2].get("nprobe"),
        "defaults": {"oversample": default_oversample(args.n), "nprobe": rows[2].get("nprobe_default")},
        "data_kind": args.data, "data": d["data"], **({"fit": d["fit"]} if d["fit"] else {}),
        **({"realism": fig} if fig else {}), **({"real_anchor": anchor} if anchor else {}),
        "participation_ratio": pr, "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "queries": nq, "single": args.single, "generate_s": gen_s, "faiss_threads": faiss.omp_get_max_threads(),
        "targets": ">= 24x less RAM than float, >= 20x QPS of float flat, recall@10 >= ~0.9", "rows": rows,
        "sweep": sweep,
        "when": datetime.now(UTC).isoformat(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu": _cpu_name(),
                 "python": platform.python_version()},
        "versions": {p: importlib.metadata.version(p) for p in ("faiss-cpu", "numpy")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(res: dict) -> str:
    lines = [f"n={res['n']:,} x {res['dim']}  ({res['data']}); k={res['k']}, faiss threads {res['faiss_threads']}, "
             f"{res['queries']} queries",
             f"{'system':<22} {'os':>3} {'nprobe':>6} {'RAM MB':>8} {'x less':>7} {'build s':>8} {'QPS b1':>8} "
             f"{'x':>6} {'QPS b64':>8} {'x':>6} {'R@10':>6}"]
    for r in res["rows"]:
        lines.append(f"{r['system']:<22} {r.get('oversample', ''):>3} {r.get('nprobe', ''):>6} "
                     f"{r['ram_bytes'] / 1e6:>8.1f} {r['ram_x_less']:>7.1f} {r['build_s']:>8.1f} "
                     f"{r['qps_b1']:>8.1f} {r['qps_b1_x']:>6.1f} {r['qps_b64']:>8.1f} {r['qps_b64_x']:>6.1f} "
                     f"{r['recall@10']:>6.3f}")
    if res["sweep"]:
        lines.append("sweep (x = vs float flat at the same batch size):")
        lines.append(f"{'system':<22} {'os':>3} {'nprobe':>6} {'QPS b1':>8} {'x':>6} {'QPS b64':>8} {'x':>6} {'R@10':>6}")
        for r in res["sweep"]:
            lines.append(f"{r['system']:<22} {r['oversample']:>3} {r.get('nprobe', ''):>6} {r['qps_b1']:>8.1f} "
                         f"{r['qps_b1_x']:>6.1f} {r['qps_b64']:>8.1f} {r['qps_b64_x']:>6.1f} {r['recall@10']:>6.3f}")
    lines.append(f"targets: {res['targets']}; int8 rescoring rows on disk (memory-mapped): {res['n'] * res['dim'] / 1e6:.0f} MB")
    if "realism" in res:
        lines.append("neighbour cosines (mean top-1 / mean of top-10 / mean 10th):")
        for k, v in res["realism"].items():
            lines.append(f"  {k:<40} {v['top1']:.3f} / {v['top10']:.3f} / {v['tenth']:.3f}")
    if "real_anchor" in res:
        a = res["real_anchor"]
        lines.append(f"real (unperturbed) base set, {a['n']:,} vectors, real queries, binary flat+rescore recall@10 by "
                     "oversample: " + ", ".join(f"{o}: {r:.3f}" for o, r in a["recall@10"].items())
                     + f" (default there: {a['default_oversample']})")
    lines.append("participation ratio (effective dim, of 384): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in res["participation_ratio"].items()))
    lines.append("load average (1/5/15 min) before {:.2f}/{:.2f}/{:.2f}, after {:.2f}/{:.2f}/{:.2f}".format(
        *res["loadavg_before"], *res["loadavg_after"]))
    return "\n".join(lines)


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=300, help="queries for recall (perturbed: 300 real ones)")
    p.add_argument("--single", type=int, default=50, help="batch-1 queries per timed pass")
    p.add_argument("--reps", type=int, default=3, help="least timed repetitions of the batch-64 search")
    p.add_argument("--min-time", type=float, default=1.0, help="least seconds per binary timing (repeats passes)")
    p.add_argument("--oversample", type=int, default=None, help="main rows (default: ragloom's for n)")
    p.add_argument("--nprobe", type=int, default=None, help="main IVF row (default: ragloom's for n)")
    p.add_argument("--sweep-oversample", type=_ints, default=list(SWEEP_OVERSAMPLE))
    p.add_argument("--sweep-nprobe", type=_ints, default=list(SWEEP_NPROBE))
    p.add_argument("--data", choices=("clustered", "spectrum", "perturbed"), default="perturbed")
    p.add_argument("--noise", type=float, default=NOISE, help="perturbed: noise scale s")
    p.add_argument("--no-musique", action="store_true", help="perturbed: SciFact corpus only as the base set")
    p.add_argument("--doc-sample", type=int, default=1000, help="documents whose neighbours are summarized")
    p.add_argument("--calibrate", action="store_true", help="perturbed: only the neighbour figures per --noise-grid")
    p.add_argument("--noise-grid", type=lambda s: [float(v) for v in s.split(",")], default=[0.3, 0.5, 0.7])
    p.add_argument("--model", default="all-minilm-l6-v2", help="embedding model of the cached SciFact vectors")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: faiss' own)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.calibrate:
        args.data = "perturbed"
        res = calibrate(args)
        out = args.output or RESULTS / f"retrieval_scale-{args.n}-perturbed-calibrate.json"
    else:
        res = run(args)
        print(table(res))
        out = args.output or RESULTS / f"retrieval_scale-{args.n}-{args.data}.json"
    write_results(out, res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
