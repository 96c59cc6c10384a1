#!/usr/bin/env python
"""Quality of ragloom's quantized weights against the float32 dequantized reference of the same GGUF.

Issue 15, deliverable 3 (quality targets). For each --weights setting (EngineSettings.weights:
auto, bf16, int8, int4), against the engine loaded with weights=float32 and dtype=float32 (the
GGUF dequantized to float32, the reference):

- greedy agreement: 80 Spec-Bench prompts, greedy, at most --agree-tokens (32) new tokens, EOS
  honoured. A prompt agrees when its tokens are identical to the reference's (same tokens, same
  stop). Target: >= 90% of prompts.
- perplexity: --ppl-tokens (20,480) tokens of SciFact abstracts, scored in non-overlapping windows
  of --ppl-window (1,024) tokens (the first token of each window is context only). Target: within
  2% of float32's (|ppl / ppl_float32 - 1| <= 0.02).
- logits, on the perplexity windows: max and mean |logit - reference logit| and mean
  KL(reference || setting) over the full vocabulary at every --logit-stride-th position (8: 2,560
  positions), and top-1 agreement (same argmax as the reference) at every position. A logit
  difference is in the model's own units; the KL and top-1 say what it does to the distribution.

Data (../shared/data, see its README.md; a missing file is an error, and a failure under CI=true):
- prompts: the first turn of every 6th Spec-Bench question (question.jsonl lines 0, 6, ..., 474:
  13-14 from each Spec-Bench category) in the model's chat template, with the generation prompt;
- text: SciFact corpus documents in file order (corpus.jsonl: "title\\n\\ntext", documents joined
  by a blank line), tokenized without special tokens, cut to exactly --ppl-tokens tokens. This
  benchmark uses them for nothing else; no part of ragloom is fitted on them.

Greedy runs go through LLMEngine.generate (continuous batching, --batch sequences at a time, the
same for every setting); logits through the engine's own model forward over its paged KV cache.
A self-check confirms that forward picks the engine's own greedy tokens (a few prompts,
teacher-forced). `auto` runs last; when it loads exactly the formats and kernels of a setting already measured
(every module's, and the activation dtype), that row is reused rather than recomputed.
A table goes to stdout, JSON to benchmarks/results/weights_quality-<device>-<model>.json.

    python benchmarks/weights_quality.py                             # SmolLM2-135M, CPU
    python benchmarks/weights_quality.py --model qwen2.5-coder-1.5b
    python benchmarks/weights_quality.py --quick --weights int4      # smoke test
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from generate import (
    WEIGHTS,
    _csv_choice,
    busy_cores,
    describe_engine,
    hardware_info,
    model_slug,
    software_info,
    weights_support_error,
)
from results_io import write_results

REFERENCE = "float32"
DEFAULT_WEIGHTS = {"cpu": "auto,bf16,int8,int4", "cuda": "bf16,int4"}
TARGET_AGREEMENT = 0.90  # share of prompts whose greedy tokens equal the reference's
TARGET_PPL = 0.02  # |ppl / ppl_float32 - 1|
# Issue 17's targets for the KV cache formats (--kv-dtypes), on float32 weights.
TARGET_KV_AGREEMENT = {"int8": 0.95, "int4": 0.90, "bf16": 0.95, "fp16": 0.95, "float32": 1.0}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = next(
    (p for p in (_REPO / "shared" / "data", _REPO.parent / "shared" / "data") if p.is_dir()),
    _REPO.parent / "shared" / "data",
)
PROMPTS_FILE = "spec-bench/question.jsonl"
TEXT_FILE = "scifact/corpus.jsonl"
PROMPT_EVERY = 6  # every 6th of the 480 questions: 80 prompts across all categories
SELF_CHECK_PROMPTS = 8
QUICK = {"prompts": 4, "agree_tokens": 8, "ppl_tokens": 256, "ppl_window": 128}


class MissingData(RuntimeError):
    pass


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def shared_file(subpath: str, root: Path | None = None) -> Path:
    """A file of the shared evaluation data, or MissingData naming where it was looked for."""
    path = (root or SHARED_DATA) / subpath
    if not path.is_file():
        raise MissingData(
            f"evaluation data {subpath!r} not found at {path}: this benchmark reads ../shared/data beside "
            "the checkout (see that folder's README.md), or --data-root"
            + ("; CI=true, so missing data is an error" if in_ci() else "")
        )
    return path


# --------------------------------------------------------------------------- data


def load_prompts(path: Path, count: int) -> list[dict[str, Any]]:
    """The first turn of every PROMPT_EVERY-th question, `count` of them."""
    questions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    chosen = questions[::PROMPT_EVERY][:count]
    if len(chosen) < count:
        raise MissingData(f"{path} has {len(questions)} questions; {count} prompts need {count * PROMPT_EVERY}")
    return [{"question_id": q["question_id"], "category": q["category"], "text": q["turns"][0]} for q in chosen]


def load_text(path: Path, tokenizer: Any, n_tokens: int) -> tuple[list[int], dict[str, Any]]:
    """Exactly n_tokens token ids of SciFact abstracts in file order, and a record of what they are."""
    ids: list[int] = []
    docs: list[str] = []
    chars = 0
    with path.open() as f:
        for line in f:
            if len(ids) >= n_tokens:
                break
            doc = json.loads(line)
            text = f"{doc.get('title', '').strip()}\n\n{doc['text'].strip()}"
            piece = ("\n\n" if docs else "") + text
            ids.extend(tokenizer.encode(piece, add_special_tokens=False))
            chars += len(piece)
            docs.append(str(doc["_id"]))
    if len(ids) < n_tokens:
        raise MissingData(f"{path} holds only {len(ids)} tokens; --ppl-tokens asks for {n_tokens}")
    ids = ids[:n_tokens]
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    return ids, {"source": str(path), "documents": len(docs), "first_doc": docs[0], "last_doc": docs[-1],
                 "chars": chars, "tokens": n_tokens, "token_ids_sha256": digest}


# --------------------------------------------------------------------------- model access


def forward_logits(engine: Any, ids: list[int], n_logits: int) -> torch.Tensor:
    """Float32 logits [n_logits, vocab] (CPU) at the last n_logits positions of one sequence.

    The engine's own model forward over its own paged KV cache, in blocks borrowed from its
    allocator and given back: the same code the engine's steps run, with every position's logits."""
    from ragloom.generation.runner.batch import ForwardBatch

    kv = engine.kv
    table: list[int] = []
    kv.reserve(table, len(ids))
    try:
        batch = ForwardBatch.build(
            new_tokens=[ids],
            starts=[0],
            block_tables=[table],
            kv=kv,
            logits_per_seq=[n_logits],
            sliding_window=engine.config.sliding_window,
        )
        with torch.inference_mode():
            return engine.model(batch, kv).float().cpu()
    finally:
        kv.release(table)


@dataclass
class ModelRun:
    """What one weights setting produced. The reference also keeps, per perplexity window, the
    argmax at every position and the full logits at every --logit-stride-th position."""

    weights: str
    info: dict[str, Any]
    greedy: list[list[int]]
    nll: float  # summed over the scored text tokens
    scored: int
    seconds: dict[str, float]
    argmax: list[torch.Tensor] = field(default_factory=list, repr=False)
    sampled: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.scored)


class LogitStats:
    """Running max/mean |diff|, KL(ref || test) and top-1 agreement over many positions."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.values = 0
        self.kl = 0.0
        self.top1 = 0
        self.top1_positions = 0
        self.positions = 0

    def add(self, ref: torch.Tensor, test: torch.Tensor) -> None:
        """Full logits [positions, vocab] of the reference and of the setting at the same positions."""
        diff = (test - ref).abs()
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum(dtype=torch.float64))
        self.values += diff.numel()
        ref_lp, test_lp = torch.log_softmax(ref, -1), torch.log_softmax(test, -1)
        self.kl += float((ref_lp.exp() * (ref_lp - test_lp)).sum(-1).sum(dtype=torch.float64))
        self.positions += ref.shape[0]

    def add_top1(self, ref_argmax: torch.Tensor, test_argmax: torch.Tensor) -> None:
        """Argmax at every position (cheap to keep for all of them)."""
        self.top1 += int((ref_argmax == test_argmax).sum())
        self.top1_positions += ref_argmax.numel()

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs,
            "mean_abs_diff": self.sum_abs / max(self.values, 1),
            "mean_kl": self.kl / max(self.positions, 1),
            "positions": self.positions,
            "top1_agreement": self.top1 / max(self.top1_positions, 1),
            "top1_positions": self.top1_positions,
        }


def load_engine(args: argparse.Namespace, weights: str, dtype: str, kv_tokens: int, max_prefill: int,
                kv_dtype: str = "auto") -> Any:
    from ragloom.config import EngineSettings
    from ragloom.generation.runner.engine import LLMEngine

    extra: dict[str, Any] = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    return LLMEngine(
        EngineSettings(
            model=args.model,
            **extra,
            device=args.device,
            dtype=dtype,
            weights=weights,
            kv_cache_tokens=kv_tokens,
            max_num_seqs=args.batch,
            max_num_batched_tokens=max_prefill,
            kv_dtype=kv_dtype,
        )
    )


def run_setting(
    engine: Any,
    weights: str,
    prompts: list[list[int]],
    text: list[int],
    args: argparse.Namespace,
    reference: ModelRun | None,
) -> tuple[ModelRun, LogitStats | None]:
    """Greedy tokens, then perplexity windows whose logits are kept (reference) or compared."""
    from ragloom.generation.runner.params import SamplingParams

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    params = SamplingParams(max_tokens=args.agree_tokens, temperature=0.0)
    greedy = [c.token_ids for c in engine.generate(prompts, params)]
    seconds["greedy"] = time.perf_counter() - t

    t = time.perf_counter()
    run = ModelRun(weights, describe_engine(engine), greedy, 0.0, 0, seconds)
    stats = LogitStats() if reference is not None else None
    w = args.ppl_window
    for i, start in enumerate(range(0, len(text) - 1, w)):
        window = text[start : start + w]
        if len(window) < 2:
            break
        logits = forward_logits(engine, window, len(window))
        targets = torch.tensor(window[1:])
        lp = torch.log_softmax(logits[:-1], -1)
        run.nll -= float(lp.gather(1, targets.unsqueeze(1)).sum(dtype=torch.float64))
        run.scored += len(window) - 1
        del lp
        sampled = logits[:: args.logit_stride].clone()
        if reference is None:
            run.argmax.append(logits.argmax(-1))
            run.sampled.append(sampled)
        else:
            assert stats is not None
            stats.add(reference.sampled[i], sampled)
            stats.add_top1(reference.argmax[i], logits.argmax(-1))
        del logits
    seconds["perplexity"] = time.perf_counter() - t
    return run, stats


def self_check(engine: Any, prompts: list[list[int]], greedy: list[list[int]]) -> float:
    """Share of positions where the forward used for the logits picks the engine's own greedy token.

    Teacher-forced on a few prompts' greedy continuations: well below 1 would mean the logits
    compared here are not the ones the engine decodes with."""
    hits = total = 0
    for prompt, cont in zip(prompts, greedy, strict=True):
        logits = forward_logits(engine, prompt + cont[:-1], len(cont))
        hits += int((logits.argmax(-1) == torch.tensor(cont)).sum())
        total += len(cont)
    return hits / max(total, 1)


def agreement(ours: list[list[int]], ref: list[list[int]]) -> dict[str, Any]:
    prefixes = _prefixes(ours, ref)
    same = sum(a == b for a, b in zip(ours, ref, strict=True))
    return {
        "identical": same,
        "prompts": len(ref),
        "rate": same / len(ref),
        "mean_common_prefix": sum(prefixes) / len(prefixes),
        "min_common_prefix": min(prefixes),
    }


# --------------------------------------------------------------------------- report


def format_table(rows: list[dict[str, Any]], agree_tokens: int) -> str:
    head = ["weights", f"agree ({agree_tokens} tok)", "ppl", "ppl vs f32", "max |dlogit|", "mean |dlogit|", "KL", "top-1", "targets"]
    table = [head]
    for r in rows:
        ag, lg = r.get("agreement"), r.get("logits")
        table.append([
            r["weights"] + (f" ({r['resolved_weights']})" if r.get("resolved_weights") else ""),
            "reference" if ag is None else f"{ag['identical']}/{ag['prompts']} ({100 * ag['rate']:.0f}%)",
            f"{r['perplexity']:.3f}",
            "-" if r.get("ppl_rel_diff") is None else f"{100 * r['ppl_rel_diff']:+.2f}%",
            "-" if lg is None else f"{lg['max_abs_diff']:.3f}",
            "-" if lg is None else f"{lg['mean_abs_diff']:.4f}",
            "-" if lg is None else f"{lg['mean_kl']:.5f}",
            "-" if lg is None else f"{100 * lg['top1_agreement']:.1f}%",
            "-" if r.get("targets_met") is None else ("MET" if r["targets_met"] else "NOT MET"),
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Greedy agreement, perplexity and logits difference of each --weights setting against the "
        "float32 dequantized reference of the same GGUF. Prints a table; writes JSON to "
        "benchmarks/results/weights_quality-<device>-<model>.json.",
    )
    p.add_argument("--model", default=None, help="bundled (default), packaged (qwen2.5-coder-1.5b) or local model")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--weights",
        type=_csv_choice([w for w in WEIGHTS if w != REFERENCE]),
        default=None,
        help="settings compared with float32; default: " + "; ".join(f"{d}: {w}" for d, w in DEFAULT_WEIGHTS.items()),
    )
    p.add_argument(
        "--kv-dtypes", type=_csv_choice(["float32", "bf16", "fp16", "int8", "int4"]), default=[],
        help="KV cache formats compared with float32 KV, each on float32 weights and activations (issue 17 "
        "targets: agreement >= 95%% int8, >= 90%% int4); given alone, no --weights rows run",
    )
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="activation dtype setting of the compared engines (the reference is float32); default: auto")
    p.add_argument("--prompts", type=int, default=80, help="Spec-Bench prompts (every 6th question); default: 80")
    p.add_argument("--agree-tokens", type=int, default=32, help="greedy tokens compared per prompt; default: 32")
    p.add_argument("--ppl-tokens", type=int, default=20480, help="perplexity text length in tokens; default: 20480")
    p.add_argument("--ppl-window", type=int, default=1024, help="tokens per perplexity window; default: 1024")
    p.add_argument("--logit-stride", type=int, default=8,
                   help="full-logits comparison at every Nth perplexity position (memory: the reference keeps "
                   "ppl_tokens / N x vocab floats); default: 8")
    p.add_argument("--batch", type=int, default=8, help="sequences per engine step in the greedy runs; default: 8")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    p.add_argument("--data-dir", type=Path, default=None, help="ragloom data dir (default: RAGLOOM_DATA_DIR or ~/.cache/ragloom)")
    p.add_argument("--data-root", type=Path, default=None, help=f"shared evaluation data (default: {SHARED_DATA})")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON path (default: benchmarks/results/weights_quality-<device>-<model>.json)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if min(args.prompts, args.agree_tokens, args.batch, args.logit_stride) < 1 or args.ppl_window < 2 or args.ppl_tokens < 2:
        p.error("--prompts, --agree-tokens, --batch, --logit-stride must be >= 1; --ppl-window and --ppl-tokens >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    if args.weights is None:
        args.weights = [] if args.kv_dtypes else DEFAULT_WEIGHTS[args.device].split(",")
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if reason := weights_support_error([REFERENCE, *args.weights]):
        p.error(reason)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        prompts_path = shared_file(PROMPTS_FILE, args.data_root)
        text_path = shared_file(TEXT_FILE, args.data_root)
    except MissingData as exc:
        print(f"weights_quality: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    load_before = busy_cores()

    from transformers import AutoTokenizer

    from ragloom.config import BUNDLED_LLM, default_data_dir
    from ragloom.models import resolve_model

    args.model = args.model or BUNDLED_LLM
    folder = resolve_model(args.model, args.data_dir or default_data_dir())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    questions = load_prompts(prompts_path, args.prompts)
    prompt_ids = []
    for q in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": q["text"]}], add_generation_prompt=True,
                                            tokenize=True)
        prompt_ids.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    text, text_info = load_text(text_path, tokenizer, args.ppl_tokens)

    longest = max(len(p) for p in prompt_ids) + args.agree_tokens
    block = 16
    kv_tokens = (args.batch + 1) * (-(-max(longest, args.ppl_window) // block) + 1) * block
    max_prefill = max(longest, args.ppl_window, 512)

    rows: list[dict[str, Any]] = []
    print(f"reference: weights={REFERENCE}, dtype=float32", file=sys.stderr, flush=True)
    engine = load_engine(args, REFERENCE, "float32", kv_tokens, max_prefill)
    reference, _ = run_setting(engine, REFERENCE, prompt_ids, text, args, None)
    n_check = min(SELF_CHECK_PROMPTS, len(prompt_ids))
    consistency = self_check(engine, prompt_ids[:n_check], reference.greedy[:n_check])
    engine = None
    gc.collect()
    rows.append({"weights": REFERENCE, **_engine_fields(reference), "perplexity": reference.ppl,
                 "scored_tokens": reference.scored, "seconds": reference.seconds,
                 "forward_matches_greedy": consistency})
    print(f"  {REFERENCE}: ppl {reference.ppl:.3f}", file=sys.stderr, flush=True)

    failed: dict[str, str] = {}
    done: dict[str, dict[str, Any]] = {}
    # Explicit formats first, so that `auto` can reuse the row of the format it resolves to; then
    # the KV formats, each on the reference's float32 weights and activations.
    settings = [(w, args.dtype, "auto") for w in sorted(args.weights, key=lambda w: w == "auto")]
    settings += [(REFERENCE, "float32", kv) for kv in args.kv_dtypes]
    for weights, dtype, kv_dtype in settings:
        label = weights if kv_dtype == "auto" else f"{weights}, kv {kv_dtype}"
        print(f"{label}: loading", file=sys.stderr, flush=True)
        try:
            engine = load_engine(args, weights, dtype, kv_tokens, max_prefill, kv_dtype)
            info = describe_engine(engine)
            # auto loads exactly what an explicit setting loaded (same formats and kernels per
            # module, same activations): the metrics would be identical, so reuse that row.
            same = next((row for row in done.values() if weights == "auto" and "formats" in info
                         and row["formats"] == info["formats"] and row["dtype"] == info["dtype"]), None)
            if same is not None:
                rows.append({**same, "weights": "auto", "same_as": same["weights"]})
                print(f"  auto = {same['weights']}: row reused", file=sys.stderr, flush=True)
                continue
            run, stats = run_setting(engine, weights, prompt_ids, text, args, reference)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            failed[label] = f"{type(exc).__name__}: {exc}"
            continue
        finally:
            engine = None
            gc.collect()
        assert stats is not None
        ag = agreement(run.greedy, reference.greedy)
        rel = run.ppl / reference.ppl - 1
        target_agree = TARGET_AGREEMENT if kv_dtype == "auto" else TARGET_KV_AGREEMENT[kv_dtype]
        row = {
            "weights": label,
            "kv_dtype": kv_dtype,
            **_engine_fields(run),
            "agreement": ag,
            "per_prompt_common_prefix": [
                {"question_id": q["question_id"], "category": q["category"], "common_prefix": n}
                for q, n in zip(questions, _prefixes(run.greedy, reference.greedy), strict=True)
            ],
            "perplexity": run.ppl,
            "ppl_rel_diff": rel,
            "logits": stats.as_dict(),
            "targets": {"agreement": ag["rate"] >= target_agree, "perplexity": abs(rel) <= TARGET_PPL},
            "targets_met": ag["rate"] >= target_agree and abs(rel) <= TARGET_PPL,
            "seconds": run.seconds,
        }
        rows.append(row)
        done[label] = row
        print(f"  {label}: agreement {ag['identical']}/{ag['prompts']}, ppl {run.ppl:.3f} ({100 * rel:+.2f}%)",
              file=sys.stderr, flush=True)

    notes = [
        f"reference: ragloom weights=float32, dtype=float32 (the GGUF dequantized); --weights rows: dtype setting "
        f"{args.dtype}; 'kv' rows: float32 weights and activations, only the KV cache format differs "
        f"(agreement targets {', '.join(f'{k} {v:.0%}' for k, v in TARGET_KV_AGREEMENT.items() if k in args.kv_dtypes)}).",
        f"agree: prompts whose greedy tokens (at most {args.agree_tokens}, EOS honoured) equal the reference's; "
        f"target >= {TARGET_AGREEMENT:.0%}.",
        f"ppl: {args.ppl_tokens} SciFact tokens in {args.ppl_window}-token windows, no overlap; "
        f"target within {TARGET_PPL:.0%} of float32.",
        f"logits: on the perplexity text; max/mean |diff| and KL(reference || setting) at every "
        f"{args.logit_stride}th position (full vocabulary), top-1 (argmax equal to the reference's) at every position.",
        f"self-check: on {n_check} prompts the reference's one-sequence forward picks its own batched greedy token "
        f"at {100 * consistency:.1f}% of positions.",
        f"greedy runs batch {args.batch} sequences per engine step (the same for every setting).",
    ]
    if load_before is not None and load_before > 0.5:
        notes.append(f"load average {load_before:.2f} before the run (affects the seconds only, not the metrics).")
    report = {
        "benchmark": "weights_quality",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "hardware": {**hardware_info(args.device, args.threads), "load_avg_1m_before": load_before,
                     "load_avg_1m_after": busy_cores()},
        "software": software_info(),
        "settings": {
            "model": args.model, "model_dir": str(folder), "device": args.device, "weights": args.weights, "kv_dtypes": args.kv_dtypes,
            "dtype": args.dtype, "prompts": args.prompts, "agree_tokens": args.agree_tokens,
            "ppl_tokens": args.ppl_tokens, "ppl_window": args.ppl_window, "logit_stride": args.logit_stride,
            "batch": args.batch,
            "threads": args.threads, "quick": args.quick,
            "prompt_source": {"file": str(prompts_path), "every": PROMPT_EVERY,
                              "question_ids": [q["question_id"] for q in questions],
                              "prompt_tokens_mean": sum(map(len, prompt_ids)) / len(prompt_ids),
                              "prompt_tokens_max": max(map(len, prompt_ids))},
            "text": text_info,
        },
        "targets": {"agreement_rate": TARGET_AGREEMENT, "ppl_rel_diff": TARGET_PPL},
        "results": rows,
        "failed": failed,
        "notes": notes,
    }
    kv_part = "-kv-" + "-".join(args.kv_dtypes) if args.kv_dtypes else ""
    output = args.output or RESULTS_DIR / f"weights_quality-{args.device}-{model_slug(args.model)}{kv_part}.json"
    write_results(output, report)
    print(f"\nweights quality: {args.model} on {args.device}, {args.prompts} prompts, {args.ppl_tokens} ppl tokens")
    print(format_table(rows, args.agree_tokens))
    for name, reason in failed.items():
        print(f"{name}: FAILED: {reason}")
    for note in notes:
        print(f"- {note}")
    print(f"JSON: {output}")
    return 1 if failed else 0


def _engine_fields(run: ModelRun) -> dict[str, Any]:
    return {key: run.info.get(key) for key in ("dtype", "resolved_weights", "formats", "model_bytes")}


def _prefixes(ours: list[list[int]], ref: list[list[int]]) -> list[int]:
    out = []
    for a, b in zip(ours, ref, strict=True):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        out.append(n)
    return out


if __name__ == "__main__":
    sys.exit(main())
