#!/usr/bin/env python
"""Generation speed: ragloom's runner vs transformers `generate` vs llama-cpp-python, in one run.

Measures time to first token (TTFT) and decode tokens/s for greedy generation of exactly
--new-tokens tokens from --prompt-len-token prompts, at each --batch-sizes value.

- ragloom and transformers load the same HF folder (`ragloom.models.resolve_model`: the bundled
  Q4_1 GGUF dequantized once), in the same dtype, with the same torch thread count.
- llama.cpp runs the original Q4_1 GGUF (its native format; a different dtype, so its ratio is
  reported as it is), CPU only, with n_threads equal to the torch thread count.

Each system gets one warmup run per batch size, then --repeats timed runs; medians are reported.
A table goes to stdout, JSON to benchmarks/results/generate-<device>.json (atomically).

    python benchmarks/generate.py                       # CPU, float32, batch 1 and 8
    python benchmarks/generate.py --device cuda --dtype bfloat16   # GPU run, llama.cpp skipped
    python benchmarks/generate.py --quick --systems ragloom,transformers   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from results_io import write_results

ALL_SYSTEMS = ("ragloom", "transformers", "llamacpp")
BASELINE = "transformers"
TARGET_SPEEDUP = 1.5  # issue 3: ragloom decode >= 1.5x transformers generate at batch 1 on CPU
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_SPEC_BENCH = Path("data/spec-bench/question.jsonl")
# The shared data folder lies beside the checkout (../shared), as the tests expect; a checkout
# that carries its own shared/ (the device machine) is looked at first.
_REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = next(
    (p for p in (_REPO / "shared" / _SPEC_BENCH, _REPO.parent / "shared" / _SPEC_BENCH) if p.is_file()),
    _REPO.parent / "shared" / _SPEC_BENCH,
)
# Used only when the spec-bench questions are not on this machine, so the script still runs.
FALLBACK_TEXT = (
    "Retrieval-augmented generation combines a search step with a language model. The search "
    "step finds passages that are relevant to a question, and the model writes an answer that "
    "draws on those passages. Good systems cite their sources, refuse when the passages do not "
    "support an answer, and keep latency low enough for interactive use. "
)
QUICK = {"prompt_len": 16, "new_tokens": 8, "batch_sizes": [1, 2], "repeats": 1}


# --------------------------------------------------------------------------- measurements


@dataclass
class RunTiming:
    """One timed run of one system on one batch: per-sequence times in seconds from the start."""

    first_token_at: list[float]
    last_token_at: list[float]
    new_tokens: list[int]
    token_ids: list[list[int]]
    wall_s: float

    def ttft_ms(self) -> float:
        return 1000.0 * statistics.fmean(self.first_token_at)

    def decode_tok_s(self) -> float:
        """Aggregate decode rate: tokens after each sequence's first, over the decode window."""
        tokens = sum(n - 1 for n in self.new_tokens)
        window = max(self.last_token_at) - min(self.first_token_at)
        return tokens / window if window > 0 else float("nan")

    def decode_tok_s_per_seq(self) -> float:
        rates = [
            (n - 1) / (last - first)
            for n, first, last in zip(self.new_tokens, self.first_token_at, self.last_token_at, strict=True)
            if last > first
        ]
        return statistics.fmean(rates) if rates else float("nan")


@dataclass
class Result:
    system: str
    batch: int
    ttft_ms: float
    decode_tok_s: float
    decode_tok_s_per_seq: float
    wall_s: float
    runs: list[dict[str, float]]
    decode_vs_transformers: float | None = None
    ttft_vs_transformers: float | None = None  # >1 means a shorter TTFT than transformers
    greedy_match: dict[str, Any] | None = None
    token_ids: list[list[int]] = field(default_factory=list, repr=False)


def summarize(system: str, batch: int, runs: list[RunTiming]) -> Result:
    per_run = [
        {
            "ttft_ms": r.ttft_ms(),
            "decode_tok_s": r.decode_tok_s(),
            "decode_tok_s_per_seq": r.decode_tok_s_per_seq(),
            "wall_s": r.wall_s,
        }
        for r in runs
    ]

    def med(key: str) -> float:
        return statistics.median(run[key] for run in per_run)

    return Result(
        system=system,
        batch=batch,
        ttft_ms=med("ttft_ms"),
        decode_tok_s=med("decode_tok_s"),
        decode_tok_s_per_seq=med("decode_tok_s_per_seq"),
        wall_s=med("wall_s"),
        runs=per_run,
        token_ids=runs[-1].token_ids,
    )


def greedy_match(ours: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    """How far greedy outputs agree with transformers': a fast but wrong runner shows up here."""
    prefixes = []
    for a, b in zip(ours, reference, strict=True):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefixes.append(n)
    return {
        "identical_sequences": sum(a == b for a, b in zip(ours, reference, strict=True)),
        "sequences": len(ours),
        "min_common_prefix": min(prefixes),
        "mean_common_prefix": statistics.fmean(prefixes),
    }


class Clock:
    """perf_counter that first waits for queued GPU work, so CUDA timings are not just launch times."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


# --------------------------------------------------------------------------- systems


class System(Protocol):
    name: str
    notes: str

    def run(self, prompts: list[list[int]], new_tokens: int) -> RunTiming: ...

    def close(self) -> None: ...


class RagloomSystem:
    name = "ragloom"

    def __init__(
        self, model: str, data_dir: Path | None, device: str, dtype: str, max_batch: int, max_len: int
    ) -> None:
        from ragloom.config import EngineSettings
        from ragloom.generation.runner.engine import LLMEngine

        block = 16
        # Room for every sequence of the largest batch, rounded up to whole blocks, plus one block
        # each for slack, so the scheduler never has to preempt during a timed run.
        kv_tokens = max_batch * (-(-max_len // block) + 1) * block
        # The model name (not the resolved folder) goes in, so the engine resolves it exactly as
        # resolve_paths() did for transformers: the same converted folder, the same weights.
        extra = {"data_dir": data_dir} if data_dir is not None else {}
        self.settings = EngineSettings(
            model=model,
            **extra,
            device=device,
            dtype=dtype,
            block_size=block,
            kv_cache_tokens=max(kv_tokens, 16),
            max_num_seqs=max_batch,
            max_num_batched_tokens=max(max_batch * max_len, 16),
        )
        self.engine = LLMEngine(self.settings)
        self.clock = Clock(device)
        self.notes = f"ragloom LLMEngine add_request/step() streaming loop, greedy, {dtype}, same HF folder as transformers"
        self._next_id = 0

    def run(self, prompts: list[list[int]], new_tokens: int) -> RunTiming:
        from ragloom.generation.runner.engine import Request
        from ragloom.generation.runner.params import SamplingParams

        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        ids = [f"bench-{self._next_id + i}" for i in range(len(prompts))]
        self._next_id += len(prompts)
        index = {rid: i for i, rid in enumerate(ids)}
        tokens: list[list[int]] = [[] for _ in prompts]
        first = [0.0] * len(prompts)
        last = [0.0] * len(prompts)

        t0 = self.clock()
        for rid, prompt in zip(ids, prompts, strict=True):
            self.engine.add_request(Request(rid, list(prompt), params))
        while self.engine.has_unfinished():
            outputs = self.engine.step()
            now = self.clock() - t0
            for out in outputs:
                i = index.get(out.request_id)
                if i is None or not out.token_ids:
                    continue
                if not tokens[i]:
                    first[i] = now
                last[i] = now
                tokens[i].extend(out.token_ids)  # Output.token_ids holds this step's tokens only
        wall = self.clock() - t0
        return RunTiming(first, last, [len(t) for t in tokens], tokens, wall)

    def close(self) -> None:
        close = getattr(self.engine, "close", None) or getattr(self.engine, "shutdown", None)
        if callable(close):
            close()
        del self.engine


class _TimingStreamer:
    """transformers streamer that only timestamps: put() gets the prompt first, then each new token."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.prompt_seen = False
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(self.clock())

    def end(self) -> None:
        pass


class TransformersSystem:
    name = "transformers"

    def __init__(self, model_dir: Path, device: str, dtype: str) -> None:
        from transformers import AutoModelForCausalLM, GenerationConfig

        torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
        self.model = model.to(device).eval()
        self.device = device
        self.clock = Clock(device)
        # No eos_token_id: every sequence runs to exactly max_new_tokens, like ignore_eos, without
        # min_new_tokens' logits processor changing which token greedy picks.
        self.config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            eos_token_id=None,
            pad_token_id=model.config.pad_token_id if model.config.pad_token_id is not None else 0,
        )
        attn = getattr(model.config, "_attn_implementation", "?")
        self.notes = f"transformers {_version('transformers')} model.generate(), greedy, default cache, attn={attn}, {dtype}"

    def run(self, prompts: list[list[int]], new_tokens: int) -> RunTiming:
        ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        # All prompts have the same length, so there is no padding; the mask is all ones.
        mask = torch.ones_like(ids)
        config = copy.copy(self.config)
        config.max_new_tokens = new_tokens
        streamer = _TimingStreamer(self.clock)
        with torch.inference_mode():
            t0 = self.clock()
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                streamer=streamer,
            )
            wall = self.clock() - t0
        new = out[:, ids.shape[1] :].tolist()
        n = len(new[0])
        first, last = streamer.times[0] - t0, streamer.times[-1] - t0
        return RunTiming([first] * len(prompts), [last] * len(prompts), [n] * len(prompts), new, wall)

    def close(self) -> None:
        del self.model


class LlamaCppSystem:
    """llama-cpp-python through its low-level API, so that batch > 1 is a real batched decode.

    The high-level Llama.generate() is single-sequence; here each step is one llama_batch holding
    one token per sequence (seq_id = row), prefill is one batch of all prompts, and greedy is an
    argmax over the returned logits.
    """

    name = "llamacpp"

    def __init__(self, gguf: Path, threads: int, max_batch: int, max_len: int) -> None:
        import llama_cpp
        from llama_cpp import _internals as internals

        self.lc = llama_cpp
        self.internals = internals
        # The Llama object loads the model and initializes the backend; its own small context is unused.
        self.llm = llama_cpp.Llama(
            model_path=str(gguf), n_ctx=64, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self.threads = threads
        self.n_vocab = self.llm.n_vocab()
        self._contexts: dict[int, tuple[Any, Any]] = {}
        self.max_len = max_len
        self.notes = (
            f"llama-cpp-python {_version('llama_cpp_python')}, original Q4_1 GGUF (not float32), "
            f"low-level batched llama_decode (one sequence per seq_id), n_threads={threads}"
        )

    def _context(self, batch: int, prompt_len: int) -> tuple[Any, Any]:
        """One context per batch size: n_seq_max must cover the batch, n_batch the whole prefill."""
        if batch not in self._contexts:
            params = self.lc.llama_context_default_params()
            # Whole multiples of 256 per sequence: llama.cpp pads the KV cache to 256 anyway and
            # warns when n_ctx does not split evenly across n_seq_max.
            params.n_ctx = batch * 256 * -(-self.max_len // 256)
            params.n_batch = max(batch * prompt_len, 512)
            params.n_ubatch = params.n_batch
            params.n_seq_max = batch
            params.n_threads = self.threads
            params.n_threads_batch = self.threads
            ctx = self.internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
            lbatch = self.internals.LlamaBatch(
                n_tokens=params.n_batch, embd=0, n_seq_max=batch, verbose=False
            )
            self._contexts[batch] = (ctx, lbatch)
        return self._contexts[batch]

    def _argmax(self, ctx: Any, row: int) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(ctx.get_logits_ith(row), shape=(self.n_vocab,))
        return int(logits.argmax())

    def run(self, prompts: list[list[int]], new_tokens: int) -> RunTiming:
        ctx, lbatch = self._context(len(prompts), len(prompts[0]))
        ctx.kv_cache_clear()
        b = lbatch.batch
        tokens: list[list[int]] = [[] for _ in prompts]
        t0 = time.perf_counter()
        # Prefill: all prompts in one batch, logits only at each prompt's last position.
        lbatch.reset()
        for seq, prompt in enumerate(prompts):
            lbatch.add_sequence(prompt, seq, False)
        ctx.decode(lbatch)
        rows, row = [], 0
        for prompt in prompts:
            row += len(prompt)
            rows.append(row - 1)
        for seq, r in enumerate(rows):
            tokens[seq].append(self._argmax(ctx, r))
        first = time.perf_counter() - t0
        # Decode: one token per sequence per step.
        for step in range(1, new_tokens):
            b.n_tokens = len(prompts)
            for seq, prompt in enumerate(prompts):
                b.token[seq] = tokens[seq][-1]
                b.pos[seq] = len(prompt) + step - 1
                b.n_seq_id[seq] = 1
                b.seq_id[seq][0] = seq
                b.logits[seq] = True
            ctx.decode(lbatch)
            for seq in range(len(prompts)):
                tokens[seq].append(self._argmax(ctx, seq))
        last = time.perf_counter() - t0
        n = len(prompts)
        return RunTiming([first] * n, [last] * n, [len(t) for t in tokens], tokens, last)

    def close(self) -> None:
        for ctx, lbatch in self._contexts.values():
            lbatch.close()
            ctx.close()
        self._contexts.clear()
        self.llm.close()


# --------------------------------------------------------------------------- setup


def build_prompts(tokenizer: Any, source: Path, count: int, length: int) -> tuple[list[list[int]], str]:
    """`count` prompts of exactly `length` real-text token ids, each starting at a different question."""
    texts: list[str] = []
    origin = str(source)
    if source.is_file():
        for line in source.read_text().splitlines():
            if line.strip():
                texts.extend(json.loads(line).get("turns", []))
    if not texts:
        texts, origin = [FALLBACK_TEXT], "built-in fallback text"
    prompts = []
    for i in range(count):
        ids: list[int] = []
        j = i * 7  # different starting questions so the batch's sequences differ
        while len(ids) < length:
            ids.extend(tokenizer.encode(texts[j % len(texts)] + "\n\n", add_special_tokens=False))
            j += 1
        prompts.append(ids[:length])
    return prompts, origin


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def hardware_info(device: str, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "platform": platform.platform(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def busy_cores() -> float | None:
    """1-minute load average: well above 0 before we start means something else shares the cores."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def software_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "llama_cpp_python": _version("llama_cpp_python"),
        "ragloom": _version("ragloom"),
    }


# --------------------------------------------------------------------------- running


def measure(
    system: System, prompts_by_batch: dict[int, list[list[int]]], args: argparse.Namespace
) -> list[Result]:
    results = []
    for batch, prompts in prompts_by_batch.items():
        system.run(prompts, args.new_tokens)  # warmup: allocator, thread pools, kernel selection
        runs = [system.run(prompts, args.new_tokens) for _ in range(args.repeats)]
        for run in runs:
            if any(n != args.new_tokens for n in run.new_tokens):
                raise RuntimeError(
                    f"{system.name} produced {run.new_tokens} tokens, expected {args.new_tokens}"
                )
        result = summarize(system.name, batch, runs)
        results.append(result)
        print(
            f"  {system.name:<12} batch {batch}: TTFT {result.ttft_ms:8.1f} ms, "
            f"decode {result.decode_tok_s:8.1f} tok/s",
            file=sys.stderr,
            flush=True,
        )
    return results


def make_system(name: str, args: argparse.Namespace, model_dir: Path, max_len: int) -> System:
    max_batch = max(args.batch_sizes)
    if name == "ragloom":
        return RagloomSystem(args.model, args.data_dir, args.device, args.dtype, max_batch, max_len)
    if name == "transformers":
        return TransformersSystem(model_dir, args.device, args.dtype)
    if name == "llamacpp":
        return LlamaCppSystem(args.gguf, args.threads, max_batch, max_len)
    raise ValueError(name)


def llamacpp_skip_reason(args: argparse.Namespace) -> str | None:
    if args.device != "cpu":
        return "llama.cpp is compared on CPU only (the installed wheel is a CPU build)"
    if args.gguf is None:
        return "no GGUF for this model; pass --gguf"
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # ImportError, or OSError when the shared library does not load
        return f"llama-cpp-python is not importable ({type(exc).__name__}: {exc}); pip install -e '.[bench]'"
    return None


def add_ratios(results: list[Result]) -> None:
    base = {r.batch: r for r in results if r.system == BASELINE}
    for r in results:
        b = base.get(r.batch)
        if b is None:
            continue
        r.decode_vs_transformers = r.decode_tok_s / b.decode_tok_s
        r.ttft_vs_transformers = b.ttft_ms / r.ttft_ms
        if r.system != BASELINE:
            r.greedy_match = greedy_match(r.token_ids, b.token_ids)


def format_table(results: list[Result]) -> str:
    head = (
        "system",
        "batch",
        "TTFT ms",
        "decode tok/s",
        "per-seq tok/s",
        "decode x HF",
        "TTFT x HF",
        "greedy = HF",
    )
    rows = [head]
    for r in sorted(results, key=lambda r: (r.batch, ALL_SYSTEMS.index(r.system))):
        match = "-"
        if r.greedy_match:
            m = r.greedy_match
            match = f"{m['identical_sequences']}/{m['sequences']} (min prefix {m['min_common_prefix']})"
        rows.append(
            (
                r.system,
                str(r.batch),
                f"{r.ttft_ms:.1f}",
                f"{r.decode_tok_s:.1f}",
                f"{r.decode_tok_s_per_seq:.1f}",
                "-" if r.decode_vs_transformers is None else f"{r.decode_vs_transformers:.2f}x",
                "-" if r.ttft_vs_transformers is None else f"{r.ttft_vs_transformers:.2f}x",
                match,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def target_verdict(results: list[Result], device: str) -> str | None:
    r = next((r for r in results if r.system == "ragloom" and r.batch == 1), None)
    if device != "cpu" or r is None or r.decode_vs_transformers is None:
        return None
    ok = r.decode_vs_transformers >= TARGET_SPEEDUP
    return (
        f"target (CPU, batch 1, ragloom decode >= {TARGET_SPEEDUP}x transformers): "
        f"{'MET' if ok else 'NOT MET'} ({r.decode_vs_transformers:.2f}x)"
    )


# --------------------------------------------------------------------------- CLI


def _csv_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _csv_systems(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in ALL_SYSTEMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown system(s) {bad}; choose from {', '.join(ALL_SYSTEMS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Time to first token and decode tokens/s, greedy, fixed-length prompts and outputs: "
            "ragloom's runner vs transformers generate (same weights and dtype) vs llama-cpp-python "
            "(the original Q4_1 GGUF, CPU only). Prints a table; writes JSON to "
            "benchmarks/results/generate-<device>.json."
        ),
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="dtype for ragloom and transformers (llama.cpp always runs the GGUF's Q4_1); default: float32",
    )
    p.add_argument("--batch-sizes", type=_csv_ints, default="1,8", help="comma-separated; default: 1,8")
    p.add_argument(
        "--prompt-len", type=int, default=128, help="prompt tokens per sequence, real text; default: 128"
    )
    p.add_argument(
        "--new-tokens", type=int, default=128, help="tokens generated per sequence, EOS ignored; default: 128"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per system and batch size, after one warmup; the median is reported; default: 3",
    )
    p.add_argument(
        "--systems",
        type=_csv_systems,
        default=",".join(ALL_SYSTEMS),
        help="comma-separated subset of %(default)s; default: all",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch and llama.cpp threads (default: all usable cores)"
    )
    p.add_argument(
        "--model",
        default=None,
        help="bundled model name or local HF folder (default: the bundled SmolLM2-135M)",
    )
    p.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help="GGUF for llama.cpp (default: the bundled one, for the bundled model)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="ragloom data dir holding the model conversion cache (default: RAGLOOM_DATA_DIR or ~/.cache/ragloom)",
    )
    p.add_argument(
        "--prompts-file",
        type=Path,
        default=DEFAULT_PROMPTS,
        help="JSONL with a 'turns' list per line (default: %(default)s; built-in text if missing)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON path (default: benchmarks/results/generate-<device>.json)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test sizes, overriding the flags above: "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.prompt_len < 1 or args.new_tokens < 2 or args.repeats < 1:
        p.error(
            "--prompt-len must be >= 1, --new-tokens >= 2 (decode needs a token after the first), --repeats >= 1"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    if args.threads is None:
        args.threads = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
    return args


def resolve_paths(args: argparse.Namespace) -> Path:
    """The HF folder both torch systems load; also fills in the GGUF for the bundled model."""
    from ragloom.config import BUNDLED_LLM, default_data_dir
    from ragloom.models import bundled_gguf_path, resolve_model

    args.model = args.model or BUNDLED_LLM
    if args.gguf is None and args.model == BUNDLED_LLM:
        args.gguf = bundled_gguf_path()
    return resolve_model(args.model, args.data_dir or default_data_dir())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = busy_cores()
    model_dir = resolve_paths(args)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts, origin = build_prompts(tokenizer, args.prompts_file, max(args.batch_sizes), args.prompt_len)
    prompts_by_batch = {b: prompts[:b] for b in args.batch_sizes}
    max_len = args.prompt_len + args.new_tokens

    results: list[Result] = []
    system_notes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    # The baseline runs first so a failure elsewhere still leaves the reference numbers.
    order = sorted(args.systems, key=lambda s: (s != BASELINE, ALL_SYSTEMS.index(s)))
    for name in order:
        if name == "llamacpp" and (reason := llamacpp_skip_reason(args)):
            skipped[name] = reason
            print(f"skipping llamacpp: {reason}", file=sys.stderr)
            continue
        print(f"{name}: loading", file=sys.stderr, flush=True)
        system = None
        try:
            system = make_system(name, args, model_dir, max_len)
            system_notes[name] = system.notes
            results.extend(measure(system, prompts_by_batch, args))
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            if system is not None:
                system.close()
            del system
            gc.collect()  # free one system's weights and caches before the next one is timed

    add_ratios(results)
    notes = [
        "TTFT: mean over the batch's sequences of (first token time - request start); includes prefill.",
        "decode tok/s: tokens after each sequence's first / (last token time - first token time), "
        "summed over the batch (aggregate); per-seq is the same per sequence.",
        "ratios vs transformers at the same batch size: decode x HF = tok/s ratio, TTFT x HF = HF TTFT / TTFT.",
        "llamacpp runs the original Q4_1 GGUF (llama.cpp's native format), not the dequantized float32 "
        "weights, so its numbers are not a same-dtype comparison; reported as they are.",
        "llamacpp batch > 1 is a real batched decode (low-level llama_decode, one seq_id per sequence).",
        f"median of {args.repeats} timed run(s) after one warmup run per system and batch size.",
    ]
    if verdict := target_verdict(results, args.device):
        notes.append(verdict)
    if load_before is not None and load_before > 0.5:
        notes.append(
            f"WARNING: 1-minute load average was {load_before:.2f} before the run: other processes were "
            "using the CPU, so these timings are skewed (thread pools stall when cores are shared)."
        )

    report = {
        "benchmark": "generate",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "hardware": {
            **hardware_info(args.device, args.threads),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": busy_cores(),
        },
        "software": software_info(),
        "settings": {
            "device": args.device,
            "dtype": args.dtype,
            "batch_sizes": args.batch_sizes,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "threads": args.threads,
            "systems": args.systems,
            "quick": args.quick,
            "model": args.model,
            "model_dir": str(model_dir),
            "gguf": str(args.gguf) if args.gguf else None,
            "prompts": origin,
            "greedy": True,
            "ignore_eos": True,
        },
        "systems": system_notes,
        "results": [_result_json(r) for r in results],
        "skipped": skipped,
        "failed": failed,
        "notes": notes,
    }
    output = args.output or RESULTS_DIR / f"generate-{args.device}.json"
    write_results(output, report)

    print(
        f"\ngenerate benchmark: {args.device} {args.dtype}, prompt {args.prompt_len} tokens, "
        f"{args.new_tokens} new tokens, greedy, {args.threads} threads, median of {args.repeats}"
    )
    print(format_table(results))
    for name, reason in {**skipped, **failed}.items():
        print(f"{name}: {'skipped' if name in skipped else 'FAILED'}: {reason}")
    for note in notes:
        print(f"- {note}")
    print(f"JSON: {output}")
    return 1 if failed else 0


def _result_json(r: Result) -> dict[str, Any]:
    data = asdict(r)
    data.pop("token_ids")
    return data


if __name__ == "__main__":
    sys.exit(main())
