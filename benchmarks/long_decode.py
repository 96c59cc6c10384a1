#!/usr/bin/env python
"""Decode speed after a long prompt: attention read in place vs gathered, per KV cache format (issue 17).

One sequence, a --prompt-tokens prompt (default 4,000 random token ids: the content does not change
the arithmetic), then --new-tokens greedy tokens; reports ms per decode step (the prompt's prefill
and first token excluded) for each system:

- `gather`: decode attention gathers the sequence's whole KV into a fresh tensor at every layer
  and step (ragloom's attention before issue 17, forced here with `batch.MAX_RUNS = 0`);
- `in-place`: attention reads the KV where it lies, run by run of consecutive blocks (the default);
- `in-place-kv-int8` / `in-place-kv-int4`: the same over a KV cache quantized per token (kv_quant.py).

The same --short-tokens run (default 128) says what each costs where the context is short. The
issue's target: decode on a 4,000-token prompt >= 1.5x faster than with the per-step gather.

    python benchmarks/long_decode.py            # ~3 min on 2 cores -> results/long_decode-cpu-smollm2.json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any

import torch
from generate import busy_cores, hardware_info, model_slug, software_info
from results_io import RESULTS, write_results

SYSTEMS = {  # name -> (kv_dtype, read in place)
    "gather": ("auto", False),
    "in-place": ("auto", True),
    "in-place-kv-int8": ("int8", True),
    "in-place-kv-int4": ("int4", True),
}


def ms_per_token(engine: Any, ids: list[int], new_tokens: int) -> float:
    from ragloom.generation.runner.engine import Request
    from ragloom.generation.runner.params import SamplingParams

    engine.add_request(Request(f"r{len(ids)}-{time.monotonic_ns()}", ids,
                               SamplingParams(max_tokens=new_tokens + 1, temperature=0.0, ignore_eos=True)))
    while engine.scheduler.running == [] or engine.scheduler.running[0].output_ids == []:
        engine.step()  # prefill (one step: max_prefill_tokens covers the prompt) and the first token
    start, steps = time.perf_counter(), 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return (time.perf_counter() - start) * 1000 / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model name (default: the bundled SmolLM2-135M)")
    p.add_argument("--weights", default="auto", help="weights setting (default auto: int4 on CPU)")
    p.add_argument("--prompt-tokens", type=int, default=4000)
    p.add_argument("--short-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ragloom.config import BUNDLED_LLM, EngineSettings
    from ragloom.generation.runner import batch
    from ragloom.generation.runner.engine import LLMEngine

    model = args.model or BUNDLED_LLM
    rng = random.Random(0)
    ids = [rng.randrange(100, 40000) for _ in range(args.prompt_tokens)]
    load_before = busy_cores()
    rows = []
    for name in args.systems.split(","):
        kv_dtype, in_place = SYSTEMS[name]
        batch.MAX_RUNS = 8 if in_place else 0
        engine = LLMEngine(EngineSettings(model=model, weights=args.weights, kv_dtype=kv_dtype, prefix_caching=False,
                                          speculative="off",  # one forward per token: attention's cost
                                          max_prefill_tokens=max(4096, args.prompt_tokens),
                                          kv_cache_tokens=args.prompt_tokens + args.new_tokens + 64))
        row = {"system": name, "kv_dtype": engine.kv.format, "in_place": in_place,
               "kv_bytes_per_token": engine.kv.bytes_per_token,
               "short_ms": ms_per_token(engine, ids[: args.short_tokens], args.new_tokens),
               "long_ms": ms_per_token(engine, ids, args.new_tokens)}
        rows.append(row)
        print(f"{name:20s} {row['short_ms']:7.1f} ms/token at {args.short_tokens}, {row['long_ms']:7.1f} at "
              f"{args.prompt_tokens}", file=sys.stderr, flush=True)
    batch.MAX_RUNS = 8
    base = next((r for r in rows if r["system"] == "gather"), None)
    print(f"\n{'system':20s} {'KV B/tok':>9s} {f'ms/tok @{args.short_tokens}':>12s} "
          f"{f'ms/tok @{args.prompt_tokens}':>13s} {'vs gather':>9s}")
    for r in rows:
        ratio = base["long_ms"] / r["long_ms"] if base else None
        r["speedup_vs_gather"] = ratio
        print(f"{r['system']:20s} {r['kv_bytes_per_token']:9.0f} {r['short_ms']:12.1f} {r['long_ms']:13.1f} "
              f"{'-' if ratio is None else f'{ratio:.2f}x':>9s}")
    out = RESULTS / f"long_decode-cpu-{model_slug(model)}.json"
    write_results(out, {
        "benchmark": "long_decode", "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "hardware": {**hardware_info("cpu", args.threads), "load_avg_1m_before": load_before},
        "software": software_info(),
        "settings": {"model": model, "weights": args.weights, "prompt_tokens": args.prompt_tokens,
                     "short_tokens": args.short_tokens, "new_tokens": args.new_tokens},
        "target": "decode on a 4,000-token prompt >= 1.5x faster than with the per-step gather",
        "results": rows,
    })
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
