#!/usr/bin/env python
"""Speculative decoding on Spec-Bench: speedup per category over the same engine without it, greedy,
batch 1 (and a batch-8 throughput check), against HF `generate` with prompt lookup (issue 18).

Questions: the first turn of --per-category questions of each Spec-Bench category (multi-turn
conversation = the MT-bench questions, translation, summarization, QA, math reasoning, RAG), in
the model's chat template, --max-new-tokens greedy tokens, EOS honoured.

Systems, each question alone unless said otherwise:
- `ragloom-off`: LLMEngine, speculation off (the baseline every ratio divides by);
- `ragloom-<method>` for each of --methods: the same engine with `speculative=<method>`, at most
  --k draft tokens (chain length or tree nodes): `lookup` (prompt lookup chains), `recycling`
  (Token Recycling trees; the matrix is the engine's, kept across questions: the paper's hot
  start), `auto` (lookup where it matches, else recycling);
- `hf` / `hf-lookup`: transformers `generate` on the model's dequantized float32 HF folder,
  without and with `prompt_lookup_num_tokens=--k` (HF's own speedup, the peer's figure).

Per category: decode tokens/s (first token to last; prefill is the same work with or without
speculation), tokens per verify step, and the speedup. Losslessness: each method's tokens are
compared with ragloom-off's on every question; verification rounds differently from a decode in
the last bits (bf16 in the int4 linears), so where two tokens' logits tie the outputs may part.
The run reports identical outputs and, where they part, the mean common prefix.

    python benchmarks/speculative.py                         # SmolLM2-135M, 5 per category
    python benchmarks/speculative.py --model qwen2.5-coder-1.5b --per-category 3 --no-hf
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from generate import busy_cores, hardware_info, model_slug, software_info
from results_io import RESULTS, write_results
from weights_quality import MissingData, shared_file

QUESTIONS = "spec-bench/question.jsonl"
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
# Issue 18's CPU targets at batch 1 (overall; RAG and summarization) and at batch 8.
TARGET_OVERALL = {"smollm2": 1.5, "qwen2.5-coder-1.5b": 1.8}
TARGET_RAG_SUMMARY = 2.0
TARGET_BATCH8 = 1.0


def load_questions(path: Path, per_category: int) -> list[dict[str, Any]]:
    chosen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        q = json.loads(line)
        cat = "mt_bench" if q["category"] in MT_BENCH else q["category"]
        if len(chosen[cat]) < per_category:
            chosen[cat].append({"id": q["question_id"], "category": cat, "text": q["turns"][0]})
    return [q for c in CATEGORIES for q in chosen[c]]


def run_engine(engine: Any, prompts: list[list[int]], max_new: int, method: str) -> list[dict[str, Any]]:
    """All prompts together (one request each); per request: tokens, decode seconds, drafts."""
    from ragloom.generation.runner.engine import Request
    from ragloom.generation.runner.params import SamplingParams

    params = SamplingParams(max_tokens=max_new, temperature=0.0)
    rids = [f"{method}-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
    for rid, ids in zip(rids, prompts):
        engine.add_request(Request(rid, ids, params, speculative=method))
    out = {rid: {"tokens": [], "first": None, "last": None, "steps": 0} for rid in rids}
    t0 = time.perf_counter()
    while engine.has_unfinished():
        for o in engine.step():
            r = out[o.request_id]
            now = time.perf_counter() - t0
            if o.token_ids:
                r["first"] = now if r["first"] is None else r["first"]
                r["last"] = now
                r["steps"] += 1
                r["tokens"].extend(o.token_ids)
            if o.finished:
                r["draft"], r["accepted"] = o.draft_tokens, o.accepted_tokens
    wall = time.perf_counter() - t0
    return [{**out[rid], "wall": wall} for rid in rids]


def run_hf(model: Any, ids: list[int], max_new: int, k: int | None) -> dict[str, Any]:
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new,
                              eos_token_id=model.generation_config.eos_token_id,
                              pad_token_id=model.config.pad_token_id or 0)
    if k:
        config.prompt_lookup_num_tokens = k
    x = torch.tensor([ids])
    with torch.inference_mode():
        t0 = time.perf_counter()
        # the first token alone, to split prefill from decode as for ragloom
        model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=1, pad_token_id=config.pad_token_id))
        t1 = time.perf_counter()
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config)
        t2 = time.perf_counter()
    tokens = out[0, len(ids):].tolist()
    # decode time = full run minus one prefill (the first generate measured it)
    return {"tokens": tokens, "first": t1 - t0, "last": t2 - t1, "wall": t2 - t1 + (t1 - t0)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(len(r["tokens"]) for r in rows)
    decode_tokens = sum(max(len(r["tokens"]) - 1, 0) for r in rows)
    decode_s = sum(r["last"] - r["first"] for r in rows)
    steps = sum(max(r.get("steps", 0) - 1, 0) for r in rows)
    res = {"questions": len(rows), "tokens": tokens, "decode_s": decode_s,
           "decode_tok_s": decode_tokens / decode_s if decode_s > 0 else None}
    if steps:
        res["tokens_per_step"] = decode_tokens / steps
    if any("draft" in r for r in rows):
        res["draft_tokens"] = sum(r.get("draft", 0) for r in rows)
        res["accepted_tokens"] = sum(r.get("accepted", 0) for r in rows)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="bundled SmolLM2 (default) or qwen2.5-coder-1.5b / a folder")
    p.add_argument("--weights", default="auto")
    p.add_argument("--per-category", type=int, default=5, help="questions per category (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--k", type=int, default=8, help="most draft tokens per step (default 8)")
    p.add_argument("--methods", default="lookup,recycling,auto", help="speculative methods to run (comma list)")
    p.add_argument("--batch", type=int, default=8, help="batch size of the throughput check (0: skip)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers (slow on CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        questions = load_questions(shared_file(QUESTIONS, args.data_root), args.per_category)
    except MissingData as exc:
        print(f"speculative: {exc}", file=sys.stderr)
        return 2
    load_before = busy_cores()

    from ragloom.config import BUNDLED_LLM, EngineSettings
    from ragloom.generation.runner.engine import LLMEngine
    from ragloom.models import resolve_model

    model = args.model or BUNDLED_LLM
    engine = LLMEngine(EngineSettings(model=model, weights=args.weights, prefix_caching=False,
                                      kv_cache_tokens=16384, num_speculative_tokens=args.k,
                                      max_num_seqs=max(args.batch, 1)))
    prompts = [engine.encode(messages=[{"role": "user", "content": q["text"]}]) for q in questions]
    print(f"{len(questions)} questions, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens; "
          f"load average {load_before}", file=sys.stderr)

    methods = [m for m in args.methods.split(",") if m]
    per_system: dict[str, list[dict[str, Any]]] = {}
    run_engine(engine, prompts[:1], 8, "off")  # warmup
    for method in ("off", *methods):
        rows = []
        for i, ids in enumerate(prompts):
            rows.extend(run_engine(engine, [ids], args.max_new_tokens, method))
            print(f"  ragloom-{method} {i + 1}/{len(prompts)}", file=sys.stderr, end="\r")
        per_system[f"ragloom-{method}"] = rows
        print(file=sys.stderr)
    lossless = {}
    for method in methods:
        pairs = list(zip(per_system["ragloom-off"], per_system[f"ragloom-{method}"]))
        prefixes = [next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"])) if x != y),
                         min(len(a["tokens"]), len(b["tokens"]))) for a, b in pairs if a["tokens"] != b["tokens"]]
        lossless[method] = {"identical": len(pairs) - len(prefixes), "questions": len(pairs),
                            "differ": [q["id"] for q, (a, b) in zip(questions, pairs) if a["tokens"] != b["tokens"]],
                            "mean_common_prefix_where_differ": sum(prefixes) / len(prefixes) if prefixes else None}

    batch: dict[str, Any] = {}
    if args.batch:
        group = prompts[: args.batch]
        for method in ("off", *methods):
            rows = run_engine(engine, group, args.max_new_tokens, method)
            batch[method] = {"tok_s": sum(len(r["tokens"]) for r in rows) / rows[0]["wall"], "wall": rows[0]["wall"]}
            if method != "off":
                batch[method]["speedup"] = batch[method]["tok_s"] / batch["off"]["tok_s"]
    engine = None

    if not args.no_hf:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(resolve_model(model, EngineSettings().data_dir), dtype=torch.float32).eval()
        for name, k in (("hf", None), ("hf-lookup", args.k)):
            per_system[name] = [run_hf(hf, ids, args.max_new_tokens, k) for ids in prompts]

    results: dict[str, dict[str, Any]] = {}
    for system, rows in per_system.items():
        results[system] = {"overall": summarize(rows)}
        for cat in CATEGORIES:
            idx = [i for i, q in enumerate(questions) if q["category"] == cat]
            if idx:
                results[system][cat] = summarize([rows[i] for i in idx])
    for system, base in [(f"ragloom-{m}", "ragloom-off") for m in methods] + [("hf-lookup", "hf")]:
        if system in results:
            for cat, r in results[system].items():
                b = results[base][cat]["decode_tok_s"]
                r["speedup"] = r["decode_tok_s"] / b if b and r["decode_tok_s"] else None

    slug = model_slug(model)
    print(f"\nspeculative decoding, {slug}, {args.weights} weights, batch 1, {args.max_new_tokens} new tokens, k={args.k}")
    print("| category | ragloom off tok/s | " + " | ".join(f"{m}: speedup (tokens/step)" for m in methods)
          + " | HF off | HF lookup | HF speedup |")
    print("|---|---:|" + "---:|" * len(methods) + "---:|---:|---:|")
    for cat in ("overall", *CATEGORIES):
        off = results["ragloom-off"].get(cat)
        if off is None:
            continue
        cols = []
        for m in methods:
            on = results[f"ragloom-{m}"][cat]
            cols.append(f"**{on['speedup']:.2f}x** ({on.get('tokens_per_step', 1):.2f})")
        hf_off, hf_on = results.get("hf", {}).get(cat), results.get("hf-lookup", {}).get(cat)
        hf_cols = (f"{hf_off['decode_tok_s']:.1f} | {hf_on['decode_tok_s']:.1f} | {hf_on['speedup']:.2f}x"
                   if hf_off and hf_on else "- | - | -")
        print(f"| {cat} | {off['decode_tok_s']:.1f} | " + " | ".join(cols) + f" | {hf_cols} |")
    if batch:
        print(f"batch {args.batch}: off {batch['off']['tok_s']:.1f} tok/s; "
              + "; ".join(f"{m} {batch[m]['tok_s']:.1f} ({batch[m]['speedup']:.2f}x)" for m in methods))
    for m, v in lossless.items():
        print(f"same output as off, {m}: {v['identical']}/{v['questions']}"
              + (f" (where not: first {v['mean_common_prefix_where_differ']:.0f} tokens the same on average)" if v["differ"] else ""))

    target = TARGET_OVERALL.get(slug.split("-instruct")[0].removesuffix("-135m"), TARGET_OVERALL["smollm2"])
    verdicts: dict[str, dict[str, Any]] = {}
    for m in methods:
        res = results[f"ragloom-{m}"]
        verdicts[m] = {
            "overall": {"target": target, "value": res["overall"]["speedup"]},
            **{c: {"target": TARGET_RAG_SUMMARY, "value": res[c]["speedup"]} for c in ("rag", "summarization") if c in res},
            **({"batch8": {"target": TARGET_BATCH8, "value": batch[m]["speedup"]}} if batch else {}),
        }
        for v in verdicts[m].values():
            v["met"] = v["value"] is not None and v["value"] >= v["target"]
    out = args.output or RESULTS / f"speculative-cpu-{slug}.json"
    write_results(out, {
        "benchmark": "speculative", "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/speculative.py", *(argv if argv is not None else sys.argv[1:])]),
        "hardware": hardware_info("cpu", args.threads), "software": software_info(), "load_average_before": load_before,
        "settings": {"model": model, "weights": args.weights, "per_category": args.per_category,
                     "max_new_tokens": args.max_new_tokens, "k": args.k, "batch": args.batch, "methods": methods},
        "results": results, "batch": batch, "lossless": lossless,
        "verdicts": verdicts,
        "per_question": {s: [{"id": q["id"], "category": q["category"], "tokens": len(r["tokens"]),
                              "decode_s": r["last"] - r["first"], **{k: r[k] for k in ("draft", "accepted") if k in r}}
                             for q, r in zip(questions, rows)] for s, rows in per_system.items()},
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
