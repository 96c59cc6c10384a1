"""Blend selection sweep: first-token KL and top-1 against full prefill, per BlendConfig (MuSiQue).

The cheap half of `blend.py`: no decoding and no timing, only the prompt's last-token logits of
each selection setting against the engine's full prefill of the same ids. It is how the
`BlendConfig` defaults were chosen (benchmarks/README.md, blend.py); greedy agreement and F1 need
`blend.py` itself.

Settings are named NAME=field:value;field:value (fields of BlendConfig plus `ratio`; tuples as
1-2-3), or one of the presets below. Every setting runs on the same prompts and the same stored
chunk KV (computed after the system prompt, as Ask stores it).

    python benchmarks/blend_sweep.py --model qwen2.5-coder-1.5b --questions 8
    python benchmarks/blend_sweep.py --settings "default@0.15,late=check_layers:6-8-10;ratio:0.15"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from results_io import write_results

from ragloom.cache.blend import CACHEBLEND, DEFAULT_BLEND, BlendConfig, Segment, blend, prefill_kv
from ragloom.cache.chunk_kv import ChunkKVStore, MemoryTier
from ragloom.cache.codec import CodecConfig
from ragloom.cache.rag import DEFAULT_SYSTEM_PROMPT, RagPipeline
from ragloom.config import EngineSettings
from ragloom.generation.runner.engine import LLMEngine

RESULTS = Path(__file__).parent / "results"
MUSIQUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "musique" / "musique_s.json"

PRESETS = {
    "default": DEFAULT_BLEND,
    "cacheblend": CACHEBLEND,
}


def parse_setting(spec: str) -> tuple[str, BlendConfig, float, str]:
    """'name@ratio' for a preset, or 'name=field:value;...' (ratio and mode among the fields)."""
    if "=" not in spec:
        name, _, r = spec.partition("@")
        return spec, PRESETS[name], float(r or 0.15), "blend"
    name, _, body = spec.partition("=")
    kw: dict[str, Any] = {}
    ratio, mode = 0.15, "blend"
    types = {f.name: f.type for f in fields(BlendConfig)}
    for part in filter(None, body.split(";")):
        key, _, value = part.partition(":")
        if key == "ratio":
            ratio = float(value)
        elif key == "mode":
            mode = value
        elif key == "check_layers":
            kw[key] = tuple(int(x) for x in value.split("-"))
        elif key == "score":
            kw[key] = value
        elif key == "first_ratio":
            kw[key] = None if value == "none" else float(value)
        elif key in types:
            kw[key] = float(value) if "float" in str(types[key]) else int(value)
        else:
            raise SystemExit(f"unknown field {key!r} in {spec!r}")
    base = kw.pop("base", None)
    return name, replace(PRESETS.get(base or "default", DEFAULT_BLEND), **kw), ratio, mode


def kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    p, q = ref.float().log_softmax(-1), other.float().log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--first-question", type=int, default=0)
    ap.add_argument("--passages", type=int, default=10)
    ap.add_argument("--passage-tokens", type=int, default=96)
    ap.add_argument("--settings", default="default@0.15,cacheblend@0.15,default@1.0")
    ap.add_argument("--chunk-context", default="head", choices=["head", "none"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = [parse_setting(s) for s in args.settings.split(",")]
    data = json.loads(MUSIQUE.read_text())[args.first_question : args.first_question + args.questions]
    model_kw = {"model": args.model} if args.model else {}
    engine = LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=4096, max_num_seqs=1, prefix_caching=False,
                                      **model_kw))
    model, tok = engine.model, engine.tokenizer
    rp = RagPipeline(engine, ChunkKVStore([MemoryTier(2**30)], CodecConfig(bits=16)), chunk_context=args.chunk_context)
    head, tail = rp.head_and_tail(DEFAULT_SYSTEM_PROMPT)
    hk, hv = prefill_kv(model, Segment([]), head)
    head_seg = Segment(head, hk, hv, 0, exact=True)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in settings}
    for qi, rec in enumerate(data):
        chunks = []
        for ctx in rec["ctxs"][: args.passages]:
            ids = tok.encode(ctx["text"], add_special_tokens=False)[: args.passage_tokens]
            chunks.append(rp.passage_tokens(tok.decode(ids)))
        question = rp._encode(f"Question: {rec['question'].strip()}{tail}")
        ids = head + [t for c in chunks for t in c] + question
        ref = blend(model, [Segment(ids)], mode="full").logits
        chunk_ctx = head_seg if args.chunk_context == "head" else Segment([])
        segs = [head_seg]
        for i, c in enumerate(chunks):
            k, v = prefill_kv(model, chunk_ctx, c)
            start = len(chunk_ctx.token_ids)
            segs.append(Segment(c, k, v, start, exact=i == 0 and start == len(head)))
        segs.append(Segment(question))
        for name, cfg, ratio, mode in settings:
            t0 = time.perf_counter()
            res = blend(model, segs, mode=mode, ratio=ratio, config=cfg)  # type: ignore[arg-type]
            rows[name].append({"kl": kl(ref, res.logits), "top1": float(int(res.logits.argmax()) == int(ref.argmax())),
                               "recomputed": res.recomputed, "s": time.perf_counter() - t0})
        print(f"[{qi + 1}/{len(data)}] {len(ids)} tokens " + " ".join(
            f"{name}={rows[name][-1]['kl']:.3f}" for name, *_ in settings), flush=True)
    table = [{"setting": name, "config": {**cfg.__dict__, "ratio": ratio, "mode": mode},
              "kl_mean": statistics.mean(r["kl"] for r in rows[name]),
              "kl_median": statistics.median(r["kl"] for r in rows[name]),
              "top1": statistics.mean(r["top1"] for r in rows[name]),
              "recomputed_mean": statistics.mean(r["recomputed"] for r in rows[name]),
              "seconds_mean": statistics.mean(r["s"] for r in rows[name])} for name, cfg, ratio, mode in settings]
    print(f"\n{engine.model_id}, {len(data)} questions, passages cut to {args.passage_tokens} tokens, "
          f"chunk context {args.chunk_context}")
    print(f"{'setting':28} {'KL mean':>8} {'KL med':>8} {'top-1':>6} {'recomp':>7} {'s':>6}")
    for e in table:
        print(f"{e['setting']:28} {e['kl_mean']:8.4f} {e['kl_median']:8.4f} {e['top1']:6.2f} "
              f"{e['recomputed_mean']:7.0f} {e['seconds_mean']:6.2f}")
    suffix = "" if args.model is None else f"-{args.model}"
    write_results(args.output or RESULTS / f"blend_sweep-cpu{suffix}.json", {
        "benchmark": "blend_sweep", "date": datetime.now(UTC).isoformat(), "model": engine.model_id,
        "weights": engine.weights_summary, "args": {k: str(v) for k, v in vars(args).items()},
        "settings": table, "per_question": rows})


if __name__ == "__main__":
    sys.exit(main())
