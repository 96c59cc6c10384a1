#!/usr/bin/env python
"""RAG answers from cached chunk KV vs full prefill, on MuSiQue (CacheBlend's subset), in one run.

For each question the prompt is the chat template around [10 passages][question]
(cache/rag.py). Systems:
  full          the engine's normal prefill of the whole prompt (the reference)
  transformers  HF `generate` prefill of the same token ids (peer; TTFT only)
  prefix        stored KV reused only where it is exact (the system prompt and the first passage)
  blend@r       CacheBlend: recompute the share r of reused tokens that deviate most, and the question
                (BlendConfig defaults: deviation weighted by the question's attention, gradual
                filtering over check layers 1-3)
  cacheblend@r  the same with the reference code's selection (V deviation at layer 1 only)
  epic          EPIC/LegoLink: recompute the first --epic-tokens of every passage, and the question
  blend@0.15 (disk)      the same, chunk KV decoded from the disk tier (no memory tier)
  blend@0.15 (codec B)   chunk KV stored at B bits (KIVI-style) and decoded from disk
  blend@0.15 (ctx none)  passages prefilled alone at position 0 instead of after the system prompt
Chunk KV is computed once per passage before the timed runs (warm), as a serving system would
have it after ingest. TTFT = from building the request (store lookups included) to the first
token. Quality: token F1 and exact match (SQuAD normalisation) of the greedy answer's first line
against the gold answer; KL(full || system) of the first answer token's distribution; greedy
agreement = the answer text equals full prefill's. Stored size: bytes per token per codec.

Passages are cut to --passage-tokens tokens (default 96; MuSiQue's average is ~550) so that a
2-core CPU can run --questions full prefills in minutes; say so when quoting the numbers.

    python benchmarks/blend.py --questions 20
    python benchmarks/blend.py --quick          # 3 questions, smoke test
    python benchmarks/blend.py --questions 8 --threads 1 --only blend,cacheblend   # quality only, fast
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import re
import statistics
import string
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from results_io import write_results

from ragloom.cache.blend import CACHEBLEND, BlendConfig, Segment, blend
from ragloom.cache.chunk_kv import ChunkKVStore, DiskTier, MemoryTier
from ragloom.cache.codec import CodecConfig
from ragloom.cache.rag import PassageText, RagPipeline
from ragloom.config import EngineSettings
from ragloom.generation.runner.engine import LLMEngine, PrefillResult, Request
from ragloom.generation.runner.params import SamplingParams

_REPO = Path(__file__).resolve().parents[1]
MUSIQUE = next(
    (p for p in (_REPO / "shared" / "data/musique/musique_s.json", _REPO.parent / "shared" / "data/musique/musique_s.json")
     if p.is_file()),
    _REPO.parent / "shared" / "data/musique/musique_s.json",
)
RESULTS = Path(__file__).resolve().parent / "results"
GROUPS = ("hf", "prefix", "blend", "cacheblend", "epic", "ctx-none", "codecs")


# ---- answer metrics (SQuAD normalisation, as CacheBlend's compute_f1) ---------------------------

def normalize(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def best(metric, pred: str, golds: list[str]) -> float:
    return max(metric(pred, g) for g in golds)


def exact(pred: str, gold: str) -> float:
    return float(normalize(pred) == normalize(gold))


def first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    p, q = ref.float().log_softmax(-1), other.float().log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


# ---- running one request -------------------------------------------------------------------------

def run_request(engine: LLMEngine, request: Request, started: float) -> tuple[str, float]:
    engine.add_request(request)
    text, ttft = "", None
    while engine.has_unfinished():
        for out in engine.step():
            if ttft is None:
                ttft = time.perf_counter() - started
            text += out.text
    assert ttft is not None
    return text, ttft


def run_plan(engine: LLMEngine, rp: RagPipeline, question: str, passages: list[PassageText],
             params: SamplingParams, mode: str, ratio: float, epic: int,
             config: BlendConfig | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    plan = rp.plan(question, passages, params, request_id=f"{mode}-{started}", mode=mode, ratio=ratio, epic_tokens=epic,
                   blend_config=config)
    captured: dict[str, torch.Tensor] = {}
    inner = plan.request.prefill
    assert inner is not None

    def prefill(model: Any) -> PrefillResult:
        res = inner(model)
        captured["logits"] = res.logits
        return res

    plan.request.prefill = prefill
    text, ttft = run_request(engine, plan.request, started)
    return {"text": text, "ttft": ttft, "logits": captured["logits"], "reused": plan.usage.reused_tokens,
            "recomputed": plan.usage.recomputed_tokens, "computed_chunks": plan.usage.chunks_computed,
            "tier_hits": dict(plan.usage.tier_hits)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--passages", type=int, default=10)
    ap.add_argument("--passage-tokens", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--ratios", default="0.05,0.15,0.3")
    ap.add_argument("--epic-tokens", type=int, default=16)
    ap.add_argument("--codecs", default="16,8:32,4:64,2:32",
                    help="codec settings bits[:group[:z]] (z = zlib on top); 16 = fp16, the baseline")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers peer")
    ap.add_argument("--only", default=",".join(GROUPS),
                    help=f"systems to run besides full prefill, comma-separated from {','.join(GROUPS)}; "
                         "e.g. --only blend,cacheblend skips the slow transformers / disk / codec runs")
    ap.add_argument("--model", default=None,
                    help="model name (default: the bundled SmolLM2-135M; e.g. qwen2.5-coder-1.5b after "
                         "`ragloom models install qwen2.5-coder-1.5b`)")
    ap.add_argument("--weights", default="auto", choices=["auto", "float32", "bf16", "int8", "int4"],
                    help="the engine's weight format (default: auto, int4 on CPU)")
    ap.add_argument("--output", type=Path, default=None,
                    help="JSON path (default: benchmarks/results/blend-<model>.json)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(GROUPS):
        ap.error(f"--only: unknown {sorted(only - set(GROUPS))}; choose from {','.join(GROUPS)}")
    if "codecs" not in only:
        args.codecs = ""
    if args.quick:
        args.questions, args.codecs = 3, "16,4:64"
    torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    codecs: dict[str, CodecConfig] = {}
    for spec in filter(None, args.codecs.split(",")):
        parts = spec.split(":")
        codecs[spec] = CodecConfig(bits=int(parts[0]), group_size=int(parts[1]) if len(parts) > 1 else 32,  # type: ignore[arg-type]
                                   entropy=len(parts) > 2 and parts[2] == "z")

    data = json.loads(MUSIQUE.read_text())[: args.questions]
    model_kw = {"model": args.model} if args.model else {}
    # No automatic prefix caching: the full-prefill baseline must prefill everything it is timed on.
    engine = LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=16384, max_num_seqs=1, weights=args.weights,
                                      prefix_caching=False, **model_kw))
    tok = engine.tokenizer
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, stop=["\n"])
    hf = None
    if not args.no_hf and "hf" in only:
        from transformers import AutoModelForCausalLM

        from ragloom.models import resolve_model

        hf = AutoModelForCausalLM.from_pretrained(resolve_model(engine.settings.model, engine.settings.data_dir),
                                                  dtype=torch.float32).eval()

    tmp = Path(tempfile.mkdtemp(prefix="ragloom-blend-"))
    memory_store = ChunkKVStore([MemoryTier(8 * 2**30)], CodecConfig(bits=16))
    rp = RagPipeline(engine, memory_store)
    rp_none = RagPipeline(engine, ChunkKVStore([MemoryTier(8 * 2**30)], CodecConfig(bits=16)), chunk_context="none")
    codec_pipes = {name: RagPipeline(engine, ChunkKVStore([DiskTier(tmp / f"codec{i}")], cfg))
                   for i, (name, cfg) in enumerate(codecs.items())}

    systems: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)

    def report(done: int, final: bool) -> None:
        """Summarize the questions done so far; the JSON is rewritten after every question, so an
        interrupted long run (a 1.5B model on CPU takes minutes per question) keeps what it measured."""
        # stored bytes per token per codec, from what is on disk
        sizes = {name: sum(f.stat().st_size for f in (tmp / f"codec{i}").rglob("*") if f.is_file())
                 for i, name in enumerate(codecs)}
        n_tokens = sum(len(rp.passage_tokens(ctx_text)) for ctx_text in _all_passage_texts(data[:done], tok, args))
        full_f1 = statistics.mean(r["f1"] for r in systems["full"])
        full_ttft = statistics.median(r["ttft"] for r in systems["full"])
        table = []
        for name, rows_ in systems.items():
            entry: dict[str, Any] = {"system": name, "n": len(rows_), "ttft_median_s": statistics.median(r["ttft"] for r in rows_)}
            entry["ttft_speedup_vs_full"] = full_ttft / entry["ttft_median_s"]
            if "f1" in rows_[0]:
                entry.update(
                    f1=statistics.mean(r["f1"] for r in rows_), em=statistics.mean(r["em"] for r in rows_),
                    agree=statistics.mean(r["agree"] for r in rows_), top1=statistics.mean(r["top1"] for r in rows_),
                    kl_mean=statistics.mean(r["kl"] for r in rows_),
                    reused_mean=statistics.mean(r["reused"] for r in rows_),
                    recomputed_mean=statistics.mean(r["recomputed"] for r in rows_),
                )
                entry["f1_vs_full"] = entry["f1"] / full_f1 if full_f1 else float("nan")
            table.append(entry)
        codec_rows = []
        fp16 = sizes.get("16", 0) / max(1, n_tokens)
        for name, cfg in codecs.items():
            per_token = sizes[name] / max(1, n_tokens)
            sys_rows = systems[f"blend@0.15 (disk, {name})"]
            codec_rows.append({"codec": name, "bits": cfg.bits, "group_size": cfg.group_size, "entropy": cfg.entropy,
                               "bytes_per_token": per_token, "x_smaller_than_fp16": fp16 / per_token if fp16 else None,
                               "f1": statistics.mean(r["f1"] for r in sys_rows)})
        partial = only != set(GROUPS)
        # The bundled model keeps the historical names; another model's results carry its name.
        suffix = "" if args.model is None else f"-{args.model}"
        default = RESULTS / (f"blend-cpu{suffix}-partial.json" if partial else f"blend-cpu{suffix}.json")
        write_results(args.output or default, {
            "benchmark": "blend", "date": datetime.now(UTC).isoformat(),
            "machine": platform.processor() or platform.machine(), "model": engine.model_id,
            "weights": engine.weights_summary, "threads": args.threads, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "questions": done,
            "complete": final, "systems": table, "codecs": codec_rows,
            "per_question": {k: v for k, v in systems.items()},
        })
        if not final:
            return
        print(f"\nMuSiQue, {len(data)} questions x {args.passages} passages cut to {args.passage_tokens} tokens; "
              f"{engine.model_id} on CPU, weights {engine.weights_summary}, {args.threads} threads; greedy, "
              f"max {args.max_tokens} tokens")
        print(f"{'system':28} {'TTFT s':>8} {'x full':>7} {'F1':>6} {'EM':>5} {'F1/full':>8} {'agree':>6} {'top1':>5} {'KL':>7} {'reused':>7} {'recomp':>7}")
        for e in table:
            if "f1" in e:
                print(f"{e['system']:28} {e['ttft_median_s']:8.3f} {e['ttft_speedup_vs_full']:7.2f} {e['f1']:6.3f} {e['em']:5.2f} "
                      f"{e['f1_vs_full']:8.3f} {e['agree']:6.2f} {e['top1']:5.2f} {e['kl_mean']:7.4f} {e['reused_mean']:7.0f} {e['recomputed_mean']:7.0f}")
            else:
                print(f"{e['system']:28} {e['ttft_median_s']:8.3f} {e['ttft_speedup_vs_full']:7.2f}")
        print(f"\n{'codec':10} {'bytes/token':>12} {'x smaller than fp16':>20} {'F1 (blend@0.15)':>16}")
        for row in codec_rows:
            print(f"{row['codec']:10} {row['bytes_per_token']:12.0f} {row['x_smaller_than_fp16'] or 0:20.2f} {row['f1']:16.3f}")

    for qi, rec in enumerate(data):
        question, golds = rec["question"], rec["answers"]
        passages = []
        for i, ctx in enumerate(rec["ctxs"][: args.passages]):
            ids = tok.encode(ctx["text"], add_special_tokens=False)[: args.passage_tokens]
            passages.append(PassageText(f"{qi}-{i}", tok.decode(ids)))
        full_plan = rp.plan(question, passages, params, request_id=f"ids-{qi}", mode="full")
        ids = full_plan.request.prompt_token_ids
        # reference: the engine's own prefill (no custom prefill), and full-prefill logits
        started = time.perf_counter()
        full_text, full_ttft = run_request(engine, Request(f"full-{qi}", ids, params), started)
        ref_logits = blend(engine.model, [Segment(ids)], mode="full").logits
        rows = {"full": {"text": full_text, "ttft": full_ttft, "logits": ref_logits, "reused": 0, "recomputed": len(ids)}}
        if hf is not None:
            with torch.inference_mode():
                t0 = time.perf_counter()
                hf.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False)
                rows["transformers"] = {"ttft": time.perf_counter() - t0}
        # warm every store (untimed): the chunk KV a serving system has after ingest
        texts = [p.text for p in passages]
        rp.precompute(engine.model, texts)
        if "ctx-none" in only:
            rp_none.precompute(engine.model, texts)
        for pipe in codec_pipes.values():
            pipe.precompute(engine.model, texts)
        if "prefix" in only:
            rows["prefix"] = run_plan(engine, rp, question, passages, params, "prefix", 0, args.epic_tokens)
        for r in ratios if "blend" in only else []:
            rows[f"blend@{r:g}"] = run_plan(engine, rp, question, passages, params, "blend", r, args.epic_tokens)
        for r in ratios if "cacheblend" in only else []:
            rows[f"cacheblend@{r:g}"] = run_plan(engine, rp, question, passages, params, "blend", r, args.epic_tokens,
                                                 CACHEBLEND)
        if "epic" in only:
            rows["epic"] = run_plan(engine, rp, question, passages, params, "epic", 0, args.epic_tokens)
        if "ctx-none" in only:
            rows["blend@0.15 (ctx none)"] = run_plan(engine, rp_none, question, passages, params, "blend", 0.15,
                                                     args.epic_tokens)
        for name, pipe in codec_pipes.items():
            rows[f"blend@0.15 (disk, {name})"] = run_plan(engine, pipe, question, passages, params, "blend", 0.15, args.epic_tokens)
        for name, row in rows.items():
            if "text" in row:
                ans = first_line(row["text"])
                row["top1"] = float(int(row["logits"].argmax()) == int(ref_logits.argmax()))
                row.update(answer=ans, f1=best(f1, ans, golds), em=best(exact, ans, golds),
                           agree=float(ans == first_line(full_text)), kl=kl(ref_logits, row.pop("logits")),
                           prompt_tokens=len(ids))
            systems[name].append({k: v for k, v in row.items() if k != "text"})
        shown = next((k for k in rows if k.startswith("blend@")), None)
        print(f"[{qi + 1}/{len(data)}] {question[:60]!r} gold={golds[0]!r} full={first_line(full_text)!r} "
              + (f"{shown}={rows[shown]['answer']!r} ttft full {full_ttft:.2f}s {shown} {rows[shown]['ttft']:.2f}s"
                 if shown else f"ttft full {full_ttft:.2f}s"), flush=True)
        report(qi + 1, final=False)

    report(len(data), final=True)


def _all_passage_texts(data: list[dict], tok: Any, args: argparse.Namespace) -> list[str]:
    """The passage texts as the run cut them (unique), for bytes-per-token accounting."""
    seen: dict[str, None] = {}
    for rec in data:
        for ctx in rec["ctxs"][: args.passages]:
            seen[tok.decode(tok.encode(ctx["text"], add_special_tokens=False)[: args.passage_tokens])] = None
    return list(seen)


if __name__ == "__main__":
    sys.exit(main())
