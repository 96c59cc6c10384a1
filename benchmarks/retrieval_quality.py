#!/usr/bin/env python
"""Retrieval quality of quantized search on BEIR SciFact: nDCG@10 and Recall@100 per method.

Methods (all over the same all-MiniLM-L6-v2 embeddings, embedded once and cached as .npy):
  float flat            faiss IndexFlatIP, exact cosine (the reference; published nDCG@10 ~0.645)
  int8                  brute force, float query . per-dimension int8 corpus (no binary stage)
  binary                faiss IndexBinaryFlat, Hamming only
  binary+rescore        ragloom: VectorIndex binary top k*oversample -> int8 rescoring (our path)
  binary-centered       sign(x - mean), Hamming only
  binary-itq(+rescore)  ITQ rotation fitted on the corpus
  residual2(+rescore)   2-level residual binary (weighted Hamming 2*h0+h1, 1152 bits)
  st-peer               sentence-transformers quantize_embeddings("ubinary") + semantic_search_faiss
                        (rescore=True: float query . unpacked bits, rescore_multiplier = oversample)

    python benchmarks/retrieval_quality.py [--oversample 4] [--output PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
from results_io import write_results

from ragloom.retrieval.index import VectorIndex
from ragloom.retrieval.quantize import Int8Quantizer, ItqRotation, ResidualBinarizer, binarize
from ragloom.retrieval.search import search as two_stage

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
CACHE = Path(os.environ.get("RAGLOOM_BENCH_CACHE", Path.home() / ".cache" / "ragloom" / "bench"))
RESULTS = Path(__file__).resolve().parent / "results"
TOP = 100
TARGET = 0.98  # binary + rescore >= 98% of float nDCG@10


def load_beir(folder: Path) -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]:
    corpus = [json.loads(line) for line in open(folder / "corpus.jsonl")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(folder / "queries.jsonl"))}
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    return corpus, queries, qrels


def cached_embeddings(name: str, texts: list[str], model: str, dataset: str = "scifact") -> np.ndarray:
    """Embeddings of `texts`, cached as CACHE/<dataset>-<model>-<name>.npy (recomputed if the count differs)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{dataset}-{model}-{name}.npy"
    if path.exists():
        v = np.load(path)
        if v.shape[0] == len(texts):
            return v
    from ragloom.retrieval.embed import Embedder

    v = Embedder(model).encode(texts, show_progress=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, v)
    os.replace(tmp, path)
    return v


def ndcg_at(ranked: list[str], rel: dict[str, int], k: int = 10) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], rel: dict[str, int], k: int = 100) -> float:
    pos = {d for d, r in rel.items() if r > 0}
    return len(pos & set(ranked[:k])) / len(pos) if pos else 0.0


def rescore_int8(q8: Int8Quantizer, codes8: np.ndarray, q: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(q), k), -1, np.int64)
    for i in range(len(q)):
        c = cand[i][cand[i] >= 0]
        s = q8.scores(q[i], codes8[c])[0]
        top = c[np.argsort(-s, kind="stable")[:k]]
        out[i, : len(top)] = top
    return out


def hamming_top(codes: np.ndarray, qcodes: np.ndarray, n: int) -> np.ndarray:
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    return index.search(qcodes, n)[1]


def run(args: argparse.Namespace) -> dict:
    corpus, queries, qrels = load_beir(DATA)
    doc_ids = [c["_id"] for c in corpus]
    qids = [q for q in qrels if q in queries]
    x = cached_embeddings("corpus", [(c.get("title", "") + " " + c["text"]).strip() for c in corpus], args.model)
    q = cached_embeddings("queries-test", [queries[i] for i in qids], args.model)
    n_cand = TOP * args.oversample
    q8 = Int8Quantizer.fit(x)
    x8 = q8.encode(x)
    methods: dict[str, Callable[[], np.ndarray]] = {}

    def float_flat() -> np.ndarray:
        ix = faiss.IndexFlatIP(x.shape[1])
        ix.add(x)
        return ix.search(q, TOP)[1]

    def int8_only() -> np.ndarray:
        return np.argsort(-q8.scores(q, x8), axis=1, kind="stable")[:, :TOP]

    def ragloom_binary_rescore() -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            ix = VectorIndex(Path(tmp), x.shape[1], "flat")
            ix.build(np.arange(len(x)), x)
            return np.array([[h.slot for h in two_stage(ix, qq, TOP, args.oversample)] for qq in q])

    itq = ItqRotation.fit(x)
    rb = ResidualBinarizer.fit(x, levels=2)
    mean = x.mean(axis=0)
    methods = {
        "float flat": float_flat,
        "int8": int8_only,
        "binary": lambda: hamming_top(binarize(x), binarize(q), TOP),
        "binary+rescore (ragloom)": ragloom_binary_rescore,
        "binary-centered": lambda: hamming_top(binarize(x - mean), binarize(q - mean), TOP),
        "binary-centered+rescore": lambda: rescore_int8(
            q8, x8, q, hamming_top(binarize(x - mean), binarize(q - mean), n_cand), TOP
        ),
        "binary-itq": lambda: hamming_top(binarize(itq.apply(x)), binarize(itq.apply(q)), TOP),
        "binary-itq+rescore": lambda: rescore_int8(
            q8, x8, q, hamming_top(binarize(itq.apply(x)), binarize(itq.apply(q)), n_cand), TOP
        ),
        "residual2": lambda: hamming_top(rb.encode(x), rb.encode(q), TOP),
        "residual2+rescore": lambda: rescore_int8(q8, x8, q, hamming_top(rb.encode(x), rb.encode(q), n_cand), TOP),
        "st-peer binary+rescore": lambda: st_peer(x, q, args.oversample),
    }
    bytes_per_vec = {
        "float flat": 4 * x.shape[1], "int8": x.shape[1], "residual2": 3 * x.shape[1] // 8,
        "residual2+rescore": 3 * x.shape[1] // 8,
    }
    rows = []
    for name, fn in methods.items():
        if args.methods and name not in args.methods:
            continue
        t = time.perf_counter()
        ranked_idx = fn()
        secs = time.perf_counter() - t
        nd, rc = [], []
        for i, qid in enumerate(qids):
            ranked = [doc_ids[j] for j in ranked_idx[i] if j >= 0]
            nd.append(ndcg_at(ranked, qrels[qid]))
            rc.append(recall_at(ranked, qrels[qid]))
        rows.append({
            "method": name, "ndcg@10": float(np.mean(nd)), "recall@100": float(np.mean(rc)),
            "ram_bytes_per_vector": bytes_per_vec.get(name, x.shape[1] // 8), "seconds": secs,
        })
    base = next(r for r in rows if r["method"] == "float flat")["ndcg@10"]
    for r in rows:
        r["ndcg_vs_float"] = r["ndcg@10"] / base
    ours = next((r for r in rows if r["method"] == "binary+rescore (ragloom)"), None)
    return {
        "benchmark": "retrieval_quality",
        "dataset": f"BEIR SciFact test (5,183 docs, {len(qids)} queries)",
        "model": args.model,
        "oversample": args.oversample,
        "top": TOP,
        "target": f"binary+rescore >= {TARGET:.0%} of float nDCG@10",
        "target_met": bool(ours and ours["ndcg_vs_float"] >= TARGET),
        "rows": rows,
        "when": datetime.now(UTC).isoformat(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {p: importlib.metadata.version(p) for p in ("faiss-cpu", "sentence-transformers", "numpy")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def st_peer(x: np.ndarray, q: np.ndarray, oversample: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss
        except ImportError:
            from sentence_transformers.quantization import quantize_embeddings, semantic_search_faiss
    corpus = quantize_embeddings(x, "ubinary")
    hits, *_ = semantic_search_faiss(
        q, corpus_embeddings=corpus, corpus_precision="ubinary", top_k=TOP, rescore=True,
        rescore_multiplier=oversample, exact=True,
    )
    return np.array([[h["corpus_id"] for h in hs] + [-1] * (TOP - len(hs)) for hs in hits])


def table(result: dict) -> str:
    lines = [
        f"{result['dataset']}, {result['model']}, top {result['top']}, oversample {result['oversample']}",
        f"{'method':<26} {'nDCG@10':>8} {'vs float':>9} {'R@100':>7} {'B/vec RAM':>10} {'secs':>7}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['method']:<26} {r['ndcg@10']:>8.4f} {r['ndcg_vs_float']:>8.1%} {r['recall@100']:>7.4f} "
            f"{r['ram_bytes_per_vector']:>10} {r['seconds']:>7.2f}"
        )
    lines.append(f"target: {result['target']}: {'MET' if result['target_met'] else 'NOT MET'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--oversample", type=int, default=4)
    p.add_argument("--methods", nargs="*", help="subset of method names")
    p.add_argument("--output", type=Path, default=RESULTS / "retrieval_quality.json")
    args = p.parse_args(argv)
    result = run(args)
    print(table(result))
    write_results(args.output, result)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
