#!/usr/bin/env python
"""JSON-Schema-constrained generation end to end: every finished output must be valid (issue 5, item 6).

For the schemas of benchmarks/constrain.py that ragloom compiles and whose grammar accepts at least one
valid instance (the realistic ones, then JSON-Schema-Test-Suite cases taken round-robin across its
files), the bundled model (SmolLM2-135M-Instruct) is asked, through its chat template, for a JSON value
matching the schema (the schema is in the prompt). Sampling is on (seeded per request); every request
goes into one LLMEngine at once and the engine batches them continuously (--max-num-seqs at a time).

Three runs over the same prompts and seeds:
- constrained, jump-forward on (the engine's default): forced tokens are counted as they are appended
  (a step's Output carries the sampled token, then the forced ones);
- constrained, jump-forward off;
- unconstrained (the peer: the same engine and prompts, no constraint).
For every output that finished with finish_reason "stop": json.loads, then jsonschema validation
(draft 2020-12, with format assertion). Invalid outputs must be 0 under a constraint; each one is
listed with its text and error. Decode speed is completion tokens / wall time of the run.

    python benchmarks/constrain_e2e.py                  # writes benchmarks/results/constrain-e2e.json
    python benchmarks/constrain_e2e.py --quick          # 8 schemas, 32 tokens: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from constrain import DEFAULT_SUITE, REALISTIC, BenchSchema, instance_texts, load_suite
from generate import _version, busy_cores, hardware_info
from results_io import write_results

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEM_PROMPT = "You are a precise assistant that answers with JSON only."
QUICK = {"max_schemas": 8, "max_tokens": 32}


def prompt_messages(schema: Any) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": "Write one JSON value that is valid against this JSON Schema. Reply with the JSON only.\n\n"
            + json.dumps(schema, ensure_ascii=False),
        },
    ]


def round_robin(suite: list[BenchSchema]) -> list[BenchSchema]:
    """Suite cases interleaved across files (allOf#0, anyOf#0, ..., allOf#1, ...) for variety."""
    by_file: dict[str, list[BenchSchema]] = {}
    for s in suite:
        by_file.setdefault(s.name.split("#")[0], []).append(s)
    out: list[BenchSchema] = []
    queues = list(by_file.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def select_schemas(
    engine: Any, candidates: list[BenchSchema], limit: int
) -> tuple[list[tuple[BenchSchema, Any]], dict]:
    """(schema, constraint) for the first `limit` candidates that compile and accept a valid instance."""
    chosen: list[tuple[BenchSchema, Any]] = []
    skipped = {"compile_error": 0, "no_valid_instance_accepted": 0}
    reasons: list[dict[str, str]] = []
    for s in candidates:
        if len(chosen) >= limit:
            break
        try:
            c = engine.compile_constraint("json_schema", s.schema)
        except Exception as e:
            skipped["compile_error"] += 1
            reasons.append({"schema": s.name, "reason": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        if not any(c.grammar.accepts_text(t) for t in instance_texts(s)):
            skipped["no_valid_instance_accepted"] += 1
            reasons.append({"schema": s.name, "reason": "the grammar accepts none of its valid instances"})
            continue
        chosen.append((s, c))
    return chosen, {"counts": skipped, "details": reasons}


def run(
    engine: Any, prompts: list[list[int]], params: list[Any], constraints: list[Any] | None
) -> dict[str, Any]:
    """All requests into the engine at once; step until done. Forced tokens = a step's tokens after the first."""
    from ragloom.generation.runner.engine import Request

    ids = [uuid.uuid4().hex for _ in prompts]
    index = {rid: i for i, rid in enumerate(ids)}
    n = len(prompts)
    texts = [""] * n
    tokens: list[list[int]] = [[] for _ in range(n)]
    forced = [0] * n
    reasons = [""] * n
    steps = 0
    t0 = time.perf_counter()
    for i, rid in enumerate(ids):
        engine.add_request(
            Request(rid, prompts[i], params[i], constraint=constraints[i] if constraints else None)
        )
    while engine.has_unfinished():
        outs = engine.step()
        steps += 1
        for out in outs:
            i = index[out.request_id]
            texts[i] += out.text
            tokens[i] += out.token_ids
            forced[i] += max(0, len(out.token_ids) - 1)
            if out.finished:
                reasons[i] = out.finish_reason or ""
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "steps": steps,
        "texts": texts,
        "tokens": tokens,
        "forced": forced,
        "reasons": reasons,
    }


def check(schema: Any, text: str) -> str | None:
    """None if text is JSON valid against schema, else the error."""
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not JSON: {e}"
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    err = jsonschema.exceptions.best_match(validator.iter_errors(value))
    return None if err is None else f"invalid: {err.message[:300]}"


def summarize(
    name: str, chosen: list[tuple[BenchSchema, Any]], r: dict[str, Any], constrained: bool
) -> dict[str, Any]:
    outcomes = []
    stop = valid = invalid = length = other = 0
    invalid_list = []
    for (s, _), text, toks, reason, nforced in zip(
        chosen, r["texts"], r["tokens"], r["reasons"], r["forced"], strict=True
    ):
        err = None
        if reason == "stop":
            stop += 1
            err = check(s.schema, text)
            if err is None:
                valid += 1
            else:
                invalid += 1
                invalid_list.append({"schema": s.name, "text": text[:500], "error": err})
        elif reason == "length":
            length += 1
        else:
            other += 1
        outcomes.append(
            {
                "schema": s.name,
                "finish_reason": reason,
                "completion_tokens": len(toks),
                "forced_tokens": nforced,
                "valid": None if reason != "stop" else err is None,
                "text": text[:300],
            }
        )
    completion = sum(len(t) for t in r["tokens"])
    forced = sum(r["forced"])
    return {
        "run": name,
        "constrained": constrained,
        "requests": len(chosen),
        "finished_stop": stop,
        "valid": valid,
        "invalid": invalid,
        "length_truncated": length,
        "other_finish": other,
        "completion_tokens": completion,
        "forced_tokens": forced,
        "forced_fraction": forced / completion if completion else 0.0,
        "engine_steps": r["steps"],
        "tokens_per_step": completion / r["steps"] if r["steps"] else 0.0,
        "wall_s": r["wall_s"],
        "tokens_per_s": completion / r["wall_s"] if r["wall_s"] > 0 else 0.0,
        "mean_completion_tokens": statistics.fmean(len(t) for t in r["tokens"]) if r["tokens"] else 0.0,
        "invalid_outputs": invalid_list,
        "outcomes": outcomes,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "run",
        "requests",
        "stop",
        "valid",
        "invalid",
        "length",
        "tokens",
        "forced",
        "steps",
        "tok/step",
        "wall s",
        "tok/s",
    )
    body = [
        (
            r["run"],
            str(r["requests"]),
            str(r["finished_stop"]),
            str(r["valid"]),
            str(r["invalid"]),
            str(r["length_truncated"]),
            str(r["completion_tokens"]),
            f"{r['forced_fraction']:.1%}",
            str(r["engine_steps"]),
            f"{r['tokens_per_step']:.2f}",
            f"{r['wall_s']:.1f}",
            f"{r['tokens_per_s']:.1f}",
        )
        for r in rows
    ]
    allrows = [head, *body]
    widths = [max(len(x[i]) for x in allrows) for i in range(len(head))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
        for x in allrows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "JSON-Schema-constrained generation with the bundled model: every output that stops must be valid JSON "
            "for its schema; compares tokens/s with unconstrained generation and jump-forward on/off. Writes "
            "benchmarks/results/constrain-e2e.json."
        )
    )
    p.add_argument("--max-schemas", type=int, default=100, help="schemas (one request each); default: 100")
    p.add_argument("--max-tokens", type=int, default=128, help="max new tokens per request; default: 128")
    p.add_argument("--temperature", type=float, default=0.8, help="default: 0.8")
    p.add_argument("--top-p", type=float, default=0.95, help="default: 0.95")
    p.add_argument("--seed", type=int, default=1234, help="request i uses seed + i; default: 1234")
    p.add_argument(
        "--max-num-seqs", type=int, default=32, help="sequences the engine decodes together; default: 32"
    )
    p.add_argument("--kv-cache-tokens", type=int, default=32768, help="default: 32768")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    p.add_argument(
        "--suite", type=Path, default=DEFAULT_SUITE, help="JSON-Schema-Test-Suite draft2020-12 folder"
    )
    p.add_argument(
        "--runs",
        default="constrained,unconstrained,constrained-no-jf",
        help="comma-separated, in this order; default: %(default)s",
    )
    p.add_argument(
        "--model", default=None, help="bundled model name or HF folder (default: SmolLM2-135M-Instruct)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="ragloom data dir (default: RAGLOOM_DATA_DIR or ~/.cache/ragloom)",
    )
    p.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/constrain-e2e.json")
    p.add_argument(
        "--quick", action="store_true", help="smoke test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
    )
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if args.threads is None:
        args.threads = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = [r for r in args.runs if r not in ("unconstrained", "constrained", "constrained-no-jf")]
    if bad:
        p.error(f"unknown runs {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = busy_cores()
    started = time.perf_counter()
    from ragloom.config import BUNDLED_LLM, EngineSettings
    from ragloom.generation.runner.engine import LLMEngine
    from ragloom.generation.runner.params import SamplingParams

    extra = {"data_dir": args.data_dir} if args.data_dir else {}
    settings = EngineSettings(
        model=args.model or BUNDLED_LLM,
        device="cpu",
        dtype="float32",
        max_num_seqs=args.max_num_seqs,
        kv_cache_tokens=args.kv_cache_tokens,
        **extra,
    )
    engine = LLMEngine(settings)

    t0 = time.perf_counter()
    candidates = list(REALISTIC) + round_robin(load_suite(args.suite))
    chosen, skipped = select_schemas(engine, candidates, args.max_schemas)
    compile_s = time.perf_counter() - t0
    print(
        f"{len(chosen)} schemas compile and accept a valid instance ({compile_s:.0f}s)",
        file=sys.stderr,
        flush=True,
    )

    prompts = [engine.encode(messages=prompt_messages(s.schema)) for s, _ in chosen]
    params = [
        SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed + i
        )
        for i in range(len(chosen))
    ]
    constraints = [c for _, c in chosen]
    # Warm-up, untimed and unconstrained: one token per prompt. Whatever run comes first would
    # otherwise pay the first forward passes and the prompts' prefill alone, while the later runs
    # find the prompts in the prefix cache (measured: the first of two identical runs 1.6x slower).
    run(engine, prompts, [SamplingParams(max_tokens=1, temperature=0) for _ in prompts], None)
    results = []
    failed: dict[str, str] = {}

    def build_report() -> dict[str, Any]:
        by = {r["run"]: r for r in results}
        notes = [
            "requests: one per schema, all added at once; the engine decodes up to max_num_seqs together and admits "
            "waiting ones as others finish (continuous batching). Same prompts and per-request seeds in every run.",
            "valid = finish_reason 'stop' and json.loads + jsonschema (draft 2020-12 unless $schema says otherwise, "
            "format assertion on) accept the text; invalid must be 0 for the constrained runs.",
            "forced = tokens appended by jump-forward (a step's tokens after the sampled one); tok/step = completion "
            "tokens / engine steps.",
            "tok/s = completion tokens / wall time of the run (prefill included). The constrained run comes after "
            "compiling (compile time is reported apart), after an untimed warm-up that prefills every prompt (so every "
            "run finds them in the prefix cache); its mask caches start cold, and the jump-forward-off run "
            "that follows reuses the same compiled constraints with warm caches.",
        ]
        if "constrained" in by and "unconstrained" in by:
            notes.append(
                f"constrained / unconstrained tok/s = {by['constrained']['tokens_per_s'] / max(by['unconstrained']['tokens_per_s'], 1e-9):.2f}"
            )
        if "constrained" in by and "constrained-no-jf" in by:
            a, b = by["constrained"], by["constrained-no-jf"]
            notes.append(
                f"jump-forward: {a['forced_fraction']:.1%} of constrained tokens were forced; engine steps "
                f"{a['engine_steps']} (on) vs {b['engine_steps']} (off); completion tokens {a['completion_tokens']} vs "
                f"{b['completion_tokens']} (sampling differs once forced tokens shift the random stream, so the outputs differ)."
            )
        if load_before is not None and load_before > 0.5:
            notes.append(
                f"WARNING: 1-minute load average was {load_before:.2f} before the run: timings are inflated."
            )
        report = {
            "benchmark": "constrain_e2e",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": [sys.executable, *sys.argv],
            "hardware": {
                **hardware_info("cpu", args.threads),
                "load_avg_1m_before": load_before,
                "load_avg_1m_after": busy_cores(),
            },
            "software": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": _version("transformers"),
                "jsonschema": _version("jsonschema"),
                "ragloom": _version("ragloom"),
            },
            "settings": {
                "model": settings.model,
                "device": "cpu",
                "dtype": "float32",
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
                "top_p": args.top_p,
                "seed": args.seed,
                "max_num_seqs": args.max_num_seqs,
                "kv_cache_tokens": args.kv_cache_tokens,
                "threads": args.threads,
                "constraint_timeout_s": settings.constraint_timeout_s,
                "system_prompt": SYSTEM_PROMPT,
                "prompt_example": prompt_messages(chosen[0][0].schema) if chosen else None,
                "quick": args.quick,
            },
            "schemas": {
                "used": len(chosen),
                "realistic": sum(1 for s, _ in chosen if s.source == "realistic"),
                "suite": sum(1 for s, _ in chosen if s.source == "suite"),
                "names": [s.name for s, _ in chosen],
                "compile_s_total": compile_s,
                "compile_s_per_schema": {s.name: c.compile_seconds for s, c in chosen},
                "prompt_tokens_mean": statistics.fmean(len(p) for p in prompts) if prompts else 0.0,
                "skipped_before_limit": skipped,
            },
            "results": results,
            "runs_pending": [n for n in args.runs if n not in by and n not in failed],
            "failed": failed,
            "notes": notes,
            "wall_s": time.perf_counter() - started,
        }
        return report

    for name in args.runs:
        print(f"run {name}: {len(prompts)} requests", file=sys.stderr, flush=True)
        try:
            engine.settings.jump_forward = name != "constrained-no-jf"
            r = run(engine, prompts, params, None if name == "unconstrained" else constraints)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            continue
        finally:
            engine.settings.jump_forward = True
        row = summarize(name, chosen, r, name != "unconstrained")
        results.append(row)
        write_results(args.output or RESULTS_DIR / "constrain-e2e.json", build_report())  # after each run
        print(
            f"  {name}: stop {row['finished_stop']} valid {row['valid']} invalid {row['invalid']} "
            f"length {row['length_truncated']} {row['tokens_per_s']:.1f} tok/s",
            file=sys.stderr,
            flush=True,
        )

    output = args.output or RESULTS_DIR / "constrain-e2e.json"
    report = build_report()
    write_results(output, report)
    notes = report["notes"]
    print(
        f"\nconstrained generation: {len(chosen)} schemas, max_tokens {args.max_tokens}, T={args.temperature}, "
        f"top_p={args.top_p}, {args.threads} threads, load before {load_before}"
    )
    print(format_table(results))
    for r in results:
        for bad in r["invalid_outputs"][:10]:
            print(f"  INVALID ({r['run']}) {bad['schema']}: {bad['error']} :: {bad['text'][:200]!r}")
    for name, reason in failed.items():
        print(f"{name}: FAILED: {reason}")
    for note in notes:
        print(f"- {note}")
    print(f"JSON: {output}")
    constrained_invalid = sum(r["invalid"] for r in results if r["constrained"])
    return 1 if failed or constrained_invalid else 0


if __name__ == "__main__":
    sys.exit(main())
