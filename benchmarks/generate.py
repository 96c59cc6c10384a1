#!/usr/bin/env python
"""Generation speed: ragloom's runner (one row per --weights setting) vs llama-cpp-python on the
same GGUF vs transformers `generate`, in one run.

Issue 15 asks whether the runner, reading the GGUF's weights quantized, keeps up with llama.cpp on
that same GGUF. Scenarios, each greedy with EOS ignored:

- decode at each --batch-sizes value (default 1 and 8): --prompt-len-token prompts (128) of real
  text, exactly --new-tokens new tokens (128); aggregate decode tokens/s and TTFT;
- long-prompt TTFT: batch 1, a --long-prompt-len-token prompt (1,500), 2 new tokens; TTFT only.

Systems, all with the same thread count (torch's and llama.cpp's):

- `ragloom-<weights>`: the runner's `LLMEngine` (add_request/step() streaming loop), one system per
  --weights value (EngineSettings.weights: auto, float32, bf16, int8, int4). The weights setting is
  required: a checkout whose EngineSettings has no `weights` field stops here with an error.
- `llamacpp`: llama-cpp-python on the GGUF the model comes from (the bundled SmolLM2 Q4_1, or the
  assembled Qwen2.5-Coder Q4_K_M). Batch > 1 is a real batched decode: the low-level
  `llama_decode` API, one seq_id per sequence, all sequences in one llama_batch per step.
- `transformers`: `AutoModelForCausalLM.generate` on the HF folder ragloom converts the GGUF into
  (dequantized float32; bfloat16 on CUDA). Reported, not the target.

Ratios are against llama.cpp in the same run. Targets (issue 15, CPU): batch-1 decode >= 1.0x,
batch-8 decode throughput >= 1.5x, 1,500-token TTFT >= 1.0x (llama.cpp's TTFT / ragloom's).

Each system gets one warmup run per scenario, then --repeats timed runs; medians are reported.
A table goes to stdout, JSON to benchmarks/results/generate-<device>-<model>.json (atomically).

    python benchmarks/generate.py                                   # SmolLM2-135M, CPU
    python benchmarks/generate.py --model qwen2.5-coder-1.5b --threads 2
    python benchmarks/generate.py --device cuda                     # bf16 and int4 vs transformers
    python benchmarks/generate.py --quick --weights float32,int4    # smoke test, seconds
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from results_io import write_results

PEER = "llamacpp"
REFERENCE = "transformers"
WEIGHTS = ("auto", "float32", "bf16", "int8", "int4")
DEFAULT_WEIGHTS = {"cpu": "auto,int4,int8,bf16,float32", "cuda": "bf16,int4"}
OTHER_SYSTEMS = ("llamacpp", "transformers")
# Issue 15 targets on CPU, against llama.cpp on the same GGUF.
TARGET_B1_DECODE = 1.0
TARGET_B8_DECODE = 1.5
TARGET_LONG_TTFT = 1.0
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
LONG_NEW_TOKENS = 2  # the long-prompt scenario measures TTFT only
QUICK = {"prompt_len": 16, "new_tokens": 8, "batch_sizes": [1, 2], "repeats": 1, "long_prompt_len": 48}


# --------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Scenario:
    name: str  # "b1", "b8", "ttft1500"
    batch: int
    prompt_len: int
    new_tokens: int
    kind: str  # "decode" | "ttft"


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
    scenario: str
    kind: str  # "decode" | "ttft"
    batch: int
    prompt_len: int
    new_tokens: int
    ttft_ms: float
    decode_tok_s: float
    decode_tok_s_per_seq: float
    wall_s: float
    runs: list[dict[str, float]]
    # ratios: > 1 means better than the other system (faster decode, shorter TTFT)
    decode_vs_llamacpp: float | None = None
    ttft_vs_llamacpp: float | None = None
    decode_vs_transformers: float | None = None
    ttft_vs_transformers: float | None = None
    greedy_match: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_ids: list[list[int]] = field(default_factory=list, repr=False)


def summarize(system: str, scenario: Scenario, runs: list[RunTiming]) -> Result:
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
        scenario=scenario.name,
        kind=scenario.kind,
        batch=scenario.batch,
        prompt_len=scenario.prompt_len,
        new_tokens=scenario.new_tokens,
        ttft_ms=med("ttft_ms"),
        decode_tok_s=med("decode_tok_s"),
        decode_tok_s_per_seq=med("decode_tok_s_per_seq"),
        wall_s=med("wall_s"),
        runs=per_run,
        token_ids=runs[-1].token_ids,
    )


def greedy_match(ours: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    """How far greedy outputs agree: a fast but wrong runner shows up here."""
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


def weights_support_error(weights: Sequence[str], settings_cls: Any = None) -> str | None:
    """Why this checkout cannot run the requested --weights settings, or None when it can.

    No silent fallback: without EngineSettings.weights every "ragloom-int4" row would really be
    float32, so the benchmark refuses to run instead."""
    if settings_cls is None:
        from ragloom.config import EngineSettings as settings_cls
    fields = getattr(settings_cls, "model_fields", {})
    if "weights" not in fields:
        return (
            f"{settings_cls.__module__}.{settings_cls.__name__} has no `weights` field, so --weights "
            f"{','.join(weights)} cannot be applied: this checkout lacks quantized weights (issue 15, "
            "deliverable 1: generation/runner/quant.py and the `weights` setting). Nothing was measured."
        )
    allowed = _literal_values(fields["weights"].annotation)
    bad = [w for w in weights if allowed and w not in allowed]
    if bad:
        return f"--weights {','.join(bad)}: not accepted by EngineSettings.weights (allowed: {', '.join(allowed)})"
    return None


def _literal_values(annotation: Any) -> tuple[str, ...]:
    """The string values of a Literal annotation (also inside Optional/Union); () if none."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    values: tuple[str, ...] = ()
    for arg in typing.get_args(annotation):
        values += _literal_values(arg)
    return values


def describe_engine(engine: Any) -> dict[str, Any]:
    """What the engine actually runs: activation dtype, the weight format (and kernel) of every
    module that has one, counted, and the bytes of the model's tensors. `resolved_weights` is the
    linears' one format, or "mixed" (what `auto` chose)."""
    info: dict[str, Any] = {"dtype": str(getattr(engine, "dtype", "?")).removeprefix("torch.")}
    model = getattr(engine, "model", None)
    if model is None:
        return info
    formats: dict[str, int] = {}
    linear: set[str] = set()
    for module in model.modules():
        fmt = getattr(module, "format", None)
        if not isinstance(fmt, str):
            continue
        kernel = getattr(getattr(module, "kernel", None), "name", None)
        key = f"{type(module).__name__}:{fmt}" + (f"/{kernel}" if kernel else "")
        formats[key] = formats.get(key, 0) + 1
        if "Linear" in type(module).__name__:
            linear.add(fmt)
    if formats:
        info["formats"] = dict(sorted(formats.items()))
    if linear:
        info["resolved_weights"] = linear.pop() if len(linear) == 1 else "mixed"
    tensors = [*model.parameters(), *model.buffers()]
    info["model_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
    return info


class RagloomSystem:
    def __init__(
        self,
        model: str,
        data_dir: Path | None,
        device: str,
        dtype: str,
        weights: str,
        max_batch: int,
        max_len: int,
        max_prefill: int,
    ) -> None:
        from ragloom.config import EngineSettings
        from ragloom.generation.runner.engine import LLMEngine

        self.name = f"ragloom-{weights}"
        block = 16
        # Room for every sequence of the largest batch, rounded up to whole blocks, plus one block
        # each for slack, so the scheduler never has to preempt during a timed run.
        kv_tokens = max(max_batch * (-(-max_len // block) + 1) * block, (-(-max_prefill // block) + 1) * block)
        # The model name (not the resolved folder) goes in, so the engine resolves it exactly as
        # resolve_paths() did for transformers: the same GGUF, the same converted folder.
        extra: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
        self.settings = EngineSettings(
            model=model,
            **extra,
            device=device,
            dtype=dtype,
            weights=weights,
            block_size=block,
            kv_cache_tokens=max(kv_tokens, 16),
            max_num_seqs=max_batch,
            max_num_batched_tokens=max(max_prefill, 16),
            # Every timed run repeats its prompts: with prefix caching they would be cache hits
            # and TTFT would measure a lookup, not prefill (llama.cpp gets a fresh context too).
            prefix_caching=False,
            # Decode speed of the forward pass itself, as llama.cpp's (which drafts nothing here);
            # speculative.py measures speculation.
            speculative="off",
        )
        self.engine = LLMEngine(self.settings)
        self.clock = Clock(device)
        self.info = describe_engine(self.engine)
        self.notes = (
            f"ragloom LLMEngine add_request/step() streaming loop, greedy, weights={weights} "
            f"(runs as {self.info.get('resolved_weights', '?')}, activations {self.info['dtype']}), dtype setting {dtype}"
        )
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
        self.notes = (
            f"transformers {_version('transformers')} model.generate(), greedy, default cache, attn={attn}, "
            f"{dtype} weights dequantized from the GGUF (ragloom.models' converted folder)"
        )

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

    def __init__(self, gguf: Path, threads: int, gpu: bool, ubatch: int | None = None) -> None:
        import llama_cpp
        from llama_cpp import _internals as internals

        self.lc = llama_cpp
        self.internals = internals
        # The Llama object loads the model and initializes the backend; its own small context is unused.
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=64,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=-1 if gpu else 0,
            verbose=False,
        )
        self.threads = threads
        self.ubatch = ubatch
        self.default_ubatch = llama_cpp.llama_context_default_params().n_ubatch
        self.context_params: dict[str, Any] = {}
        self.n_vocab = self.llm.n_vocab()
        self._contexts: dict[tuple[int, int, int], tuple[Any, Any]] = {}
        self.notes = (
            f"llama-cpp-python {_version('llama_cpp_python')}, the GGUF itself ({gguf.name}), "
            f"low-level batched llama_decode (batch > 1: one seq_id per sequence, all sequences in one "
            f"llama_batch per step), n_threads={threads}, n_ubatch={ubatch or 'default'}, "
            f"{'all layers on the GPU' if gpu else 'CPU'}"
        )

    def _context(self, batch: int, prompt_len: int, new_tokens: int) -> tuple[Any, Any]:
        """One context per scenario: n_seq_max must cover the batch, n_batch the whole prefill."""
        key = (batch, prompt_len, new_tokens)
        if key not in self._contexts:
            # Free the previous scenario's context first: only one is timed at a time.
            for ctx, lbatch in self._contexts.values():
                lbatch.close()
                ctx.close()
            self._contexts.clear()
            params = self.lc.llama_context_default_params()
            # Whole multiples of 256 per sequence: llama.cpp pads the KV cache to 256 anyway and
            # warns when n_ctx does not split evenly across n_seq_max.
            params.n_ctx = batch * 256 * -(-(prompt_len + new_tokens) // 256)
            # n_batch must hold the whole prefill (one llama_decode call); n_ubatch, the chunk the
            # compute graph runs at once, keeps llama.cpp's own default unless --llamacpp-ubatch.
            params.n_batch = max(batch * prompt_len, 512)
            params.n_ubatch = min(self.ubatch or params.n_ubatch, params.n_batch)
            self.context_params = {
                "n_ubatch_default": self.default_ubatch,
                "n_ubatch": params.n_ubatch,
                "flash_attn_type": getattr(params, "flash_attn_type", None),
                "type_k": getattr(params, "type_k", None),
                "type_v": getattr(params, "type_v", None),
            }
            params.n_seq_max = batch
            params.n_threads = self.threads
            params.n_threads_batch = self.threads
            ctx = self.internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
            lbatch = self.internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=batch, verbose=False)
            self._contexts[key] = (ctx, lbatch)
        return self._contexts[key]

    def _argmax(self, ctx: Any, row: int) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(ctx.get_logits_ith(row), shape=(self.n_vocab,))
        return int(logits.argmax())

    def run(self, prompts: list[list[int]], new_tokens: int) -> RunTiming:
        ctx, lbatch = self._context(len(prompts), len(prompts[0]), new_tokens)
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
        # Decode: one token per sequence per step, all sequences in one batch.
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


def build_prompts(tokenizer: Any, source: Path, count: int, length: int, offset: int = 0) -> tuple[list[list[int]], str]:
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
        j = offset + i * 7  # different starting questions so the batch's sequences differ
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
    cpu = ""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_simd": sorted(f for f in flags if f.startswith(("avx", "amx", "fma"))),
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
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": _torch_cpu_capability(),
        "transformers": _version("transformers"),
        "llama_cpp_python": _version("llama_cpp_python"),
        "ragloom": _version("ragloom"),
    }
    try:
        import llama_cpp

        info["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        info["llama_cpp_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # not installed, or a build without these symbols
        pass
    return info


def _torch_cpu_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:
        return None


# --------------------------------------------------------------------------- running


def scenarios_for(args: argparse.Namespace) -> list[Scenario]:
    out = [Scenario(f"b{b}", b, args.prompt_len, args.new_tokens, "decode") for b in args.batch_sizes]
    if args.long_prompt_len:
        out.append(Scenario(f"ttft{args.long_prompt_len}", 1, args.long_prompt_len, LONG_NEW_TOKENS, "ttft"))
    return out


def measure(
    system: System, scenarios: list[Scenario], prompts: dict[str, list[list[int]]], repeats: int
) -> list[Result]:
    results = []
    for sc in scenarios:
        system.run(prompts[sc.name], sc.new_tokens)  # warmup: allocator, thread pools, kernel selection
        runs = [system.run(prompts[sc.name], sc.new_tokens) for _ in range(repeats)]
        for run in runs:
            if any(n != sc.new_tokens for n in run.new_tokens):
                raise RuntimeError(f"{system.name} produced {run.new_tokens} tokens in {sc.name}, expected {sc.new_tokens}")
        result = summarize(system.name, sc, runs)
        results.append(result)
        decode = f", decode {result.decode_tok_s:8.1f} tok/s" if sc.kind == "decode" else ""
        print(f"  {system.name:<16} {sc.name:>9}: TTFT {result.ttft_ms:9.1f} ms{decode}", file=sys.stderr, flush=True)
    return results


def system_names(args: argparse.Namespace) -> list[str]:
    """Run order: the peer first (a later failure still leaves its numbers), then ragloom, then HF."""
    names = []
    if "llamacpp" in args.systems:
        names.append("llamacpp")
    if "ragloom" in args.systems:
        names += [f"ragloom-{w}" for w in args.weights]
    if "transformers" in args.systems:
        names.append("transformers")
    return names


def make_system(name: str, args: argparse.Namespace, model_dir: Path, scenarios: list[Scenario]) -> System:
    max_batch = max(sc.batch for sc in scenarios)
    max_len = max(sc.prompt_len + sc.new_tokens for sc in scenarios)
    max_prefill = max(sc.batch * sc.prompt_len for sc in scenarios)
    if name.startswith("ragloom-"):
        return RagloomSystem(
            args.model, args.data_dir, args.device, args.ragloom_dtype, name.removeprefix("ragloom-"),
            max_batch, max_len, max_prefill,
        )
    if name == "transformers":
        return TransformersSystem(model_dir, args.device, args.hf_dtype)
    if name == "llamacpp":
        return LlamaCppSystem(args.gguf, args.threads, gpu=args.device == "cuda", ubatch=args.llamacpp_ubatch)
    raise ValueError(name)


def llamacpp_skip_reason(args: argparse.Namespace) -> str | None:
    if args.gguf is None:
        return f"no GGUF known for model {args.model!r}; pass --gguf"
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or OSError when the shared library does not load
        return f"llama-cpp-python is not importable ({type(exc).__name__}: {exc}); pip install -e '.[bench]'"
    if args.device == "cuda" and not llama_cpp.llama_supports_gpu_offload():
        return "the installed llama-cpp-python is a CPU build (llama_supports_gpu_offload() is false); skipped on --device cuda"
    return None


def add_ratios(results: list[Result]) -> None:
    by = {(r.system, r.scenario): r for r in results}
    for r in results:
        for base_name, suffix in ((PEER, "llamacpp"), (REFERENCE, "transformers")):
            b = by.get((base_name, r.scenario))
            if b is None:
                continue
            if r.kind == "decode":  # the TTFT scenario's decode rate (1 token) means nothing
                setattr(r, f"decode_vs_{suffix}", r.decode_tok_s / b.decode_tok_s)
            setattr(r, f"ttft_vs_{suffix}", b.ttft_ms / r.ttft_ms)
            if r.system != base_name:
                r.greedy_match[base_name] = greedy_match(r.token_ids, b.token_ids)


def verdicts(results: list[Result], scenarios: list[Scenario], device: str) -> list[dict[str, Any]]:
    """Each ragloom row against the issue's three CPU targets (where the scenario was run)."""
    if device != "cpu":
        return []
    by = {(r.system, r.scenario): r for r in results}
    checks = []
    wanted = [("b1", "decode_vs_llamacpp", TARGET_B1_DECODE, "batch-1 decode"),
              ("b8", "decode_vs_llamacpp", TARGET_B8_DECODE, "batch-8 decode throughput")]
    wanted += [(sc.name, "ttft_vs_llamacpp", TARGET_LONG_TTFT, f"{sc.prompt_len}-token TTFT")
               for sc in scenarios if sc.kind == "ttft"]
    for system in sorted({r.system for r in results if r.system.startswith("ragloom-")}):
        for scenario, key, target, what in wanted:
            r = by.get((system, scenario))
            value = getattr(r, key) if r is not None else None
            if value is None:
                continue
            checks.append({"system": system, "target": what, "ratio": value, "needed": target, "met": value >= target})
    return checks


def format_table(results: list[Result], scenarios: list[Scenario]) -> str:
    by = {(r.system, r.scenario): r for r in results}
    head = ["system"]
    for sc in scenarios:
        if sc.kind == "decode":
            head += [f"{sc.name} tok/s", "x llama.cpp"]
    decode0 = next((sc for sc in scenarios if sc.kind == "decode"), None)
    if decode0 is not None:
        head += [f"TTFT {decode0.prompt_len} ms"]
    for sc in scenarios:
        if sc.kind == "ttft":
            head += [f"TTFT {sc.prompt_len} ms", "x llama.cpp"]
    systems = sorted({r.system for r in results}, key=_system_order)
    rows = [head]

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    for system in systems:
        row = [system]
        for sc in scenarios:
            r = by.get((system, sc.name))
            if sc.kind == "decode":
                row += ["-", "-"] if r is None else [f"{r.decode_tok_s:.1f}", ratio(r.decode_vs_llamacpp)]
        if decode0 is not None:
            r = by.get((system, decode0.name))
            row += ["-" if r is None else f"{r.ttft_ms:.1f}"]
        for sc in scenarios:
            r = by.get((system, sc.name))
            if sc.kind == "ttft":
                row += ["-", "-"] if r is None else [f"{r.ttft_ms:.1f}", ratio(r.ttft_vs_llamacpp)]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _system_order(name: str) -> tuple[int, int]:
    if name == PEER:
        return (0, 0)
    if name.startswith("ragloom-"):
        w = name.removeprefix("ragloom-")
        return (1, WEIGHTS.index(w) if w in WEIGHTS else len(WEIGHTS))
    return (2, 0)


def model_slug(model: str) -> str:
    from ragloom.config import BUNDLED_LLM

    if model == BUNDLED_LLM:
        return "smollm2"
    name = Path(model).name if ("/" in model or os.sep in model) else model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


# --------------------------------------------------------------------------- CLI


def _csv_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _csv_choice(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad}; choose from {', '.join(choices)}")
        return names

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Decode tokens/s and time to first token, greedy, fixed-length prompts and outputs: ragloom's "
            "runner (one row per --weights setting) vs llama-cpp-python on the same GGUF vs transformers "
            "generate. Prints a table with ratios against llama.cpp; writes JSON to "
            "benchmarks/results/generate-<device>-<model>.json."
        ),
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument(
        "--weights",
        type=_csv_choice(WEIGHTS),
        default=None,
        help="ragloom weight formats, one system each (EngineSettings.weights); default: "
        + "; ".join(f"{d}: {w}" for d, w in DEFAULT_WEIGHTS.items()),
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default=None,
        help="ragloom's activation dtype setting (default: auto, the engine's choice for the weights) and "
        "transformers' dtype (default: float32 on CPU, bfloat16 on CUDA)",
    )
    p.add_argument("--batch-sizes", type=_csv_ints, default="1,8", help="comma-separated; default: 1,8")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per sequence, real text; default: 128")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per sequence, EOS ignored; default: 128")
    p.add_argument(
        "--long-prompt-len",
        type=int,
        default=1500,
        help="prompt tokens of the batch-1 TTFT scenario (prefill speed); 0 skips it; default: 1500",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per system and scenario, after one warmup; the median is reported; default: 3",
    )
    p.add_argument(
        "--systems",
        type=_csv_choice(("ragloom", *OTHER_SYSTEMS)),
        default="ragloom,llamacpp,transformers",
        help="comma-separated subset of ragloom,llamacpp,transformers; default: all",
    )
    p.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: all usable cores)")
    p.add_argument(
        "--model",
        default=None,
        help="bundled model name (smollm2-135m-instruct, the default), an installed packaged model "
        "(qwen2.5-coder-1.5b, qwen2.5-coder-0.5b: `ragloom models install NAME`), or a local HF folder (with --gguf)",
    )
    p.add_argument(
        "--llamacpp-ubatch",
        type=int,
        default=None,
        help="llama.cpp n_ubatch (prefill chunk); default: llama.cpp's own default (n_batch always holds the whole prefill)",
    )
    p.add_argument("--gguf", type=Path, default=None, help="GGUF for llama.cpp (default: the model's own GGUF)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="ragloom data dir holding the model caches (default: RAGLOOM_DATA_DIR or ~/.cache/ragloom)",
    )
    p.add_argument(
        "--prompts-file",
        type=Path,
        default=DEFAULT_PROMPTS,
        help="JSONL with a 'turns' list per line (default: %(default)s; built-in text if missing)",
    )
    p.add_argument(
        "--output", type=Path, default=None, help="JSON path (default: benchmarks/results/generate-<device>-<model>.json)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke-test sizes, overriding the flags above: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.prompt_len < 1 or args.new_tokens < 2 or args.repeats < 1 or args.long_prompt_len < 0:
        p.error(
            "--prompt-len must be >= 1, --new-tokens >= 2 (decode needs a token after the first), "
            "--repeats >= 1, --long-prompt-len >= 0"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    if args.weights is None:
        args.weights = DEFAULT_WEIGHTS[args.device].split(",")
    args.ragloom_dtype = args.dtype or "auto"
    args.hf_dtype = args.dtype if args.dtype not in (None, "auto") else ("bfloat16" if args.device == "cuda" else "float32")
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if "ragloom" in args.systems and (reason := weights_support_error(args.weights)):
        p.error(reason)
    return args


def resolve_gguf(model: str, data_dir: Path) -> Path | None:
    """The GGUF a model name comes from: the bundled one, or a packaged model's assembled file."""
    from ragloom.config import BUNDLED_LLM
    from ragloom.models import bundled_gguf_path

    if model == BUNDLED_LLM:
        return bundled_gguf_path()
    try:
        from ragloom import model_packages
    except ImportError:
        return None
    packaged = model_packages.packaged_model(model)
    if packaged is None:
        return None
    return model_packages.ensure_gguf(packaged, data_dir)  # a clear ModelError names the install command


def resolve_paths(args: argparse.Namespace) -> Path:
    """The HF folder transformers loads (ragloom resolves the same name itself); fills in --gguf."""
    from ragloom.config import BUNDLED_LLM, default_data_dir
    from ragloom.models import resolve_model

    args.model = args.model or BUNDLED_LLM
    data_dir = args.data_dir or default_data_dir()
    if args.gguf is None:
        args.gguf = resolve_gguf(args.model, data_dir)
    return resolve_model(args.model, data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = busy_cores()
    model_dir = resolve_paths(args)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scenarios = scenarios_for(args)
    prompts: dict[str, list[list[int]]] = {}
    origin = ""
    for sc in scenarios:
        # The long prompt starts at another question than the batch prompts, so no prefix is shared.
        prompts[sc.name], origin = build_prompts(
            tokenizer, args.prompts_file, sc.batch, sc.prompt_len, offset=3 if sc.kind == "ttft" else 0
        )

    results: list[Result] = []
    system_notes: dict[str, str] = {}
    engine_info: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in system_names(args):
        if name == "llamacpp" and (reason := llamacpp_skip_reason(args)):
            skipped[name] = reason
            print(f"skipping llamacpp: {reason}", file=sys.stderr)
            continue
        print(f"{name}: loading", file=sys.stderr, flush=True)
        system = None
        try:
            system = make_system(name, args, model_dir, scenarios)
            system_notes[name] = system.notes
            if isinstance(system, RagloomSystem):
                engine_info[name] = system.info
            results.extend(measure(system, scenarios, prompts, args.repeats))
            if isinstance(system, LlamaCppSystem):
                engine_info[name] = system.context_params
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            if system is not None:
                system.close()
            del system
            gc.collect()  # free one system's weights and caches before the next one is timed

    add_ratios(results)
    checks = verdicts(results, scenarios, args.device)
    notes = [
        "TTFT: mean over the batch's sequences of (first token time - request start); includes prefill.",
        "decode tok/s: tokens after each sequence's first / (last token time - first token time), summed over "
        "the batch (aggregate throughput); per-seq is the same per sequence.",
        "x llama.cpp: ragloom's decode tok/s / llama.cpp's at the same scenario; for TTFT, llama.cpp's TTFT / "
        "ragloom's (> 1 = ragloom faster). The JSON also has the ratios against transformers.",
        "llamacpp runs the GGUF itself; batch > 1 is a real batched decode (low-level llama_decode, one seq_id "
        "per sequence, all sequences in one llama_batch per step).",
        f"transformers runs the GGUF dequantized to {args.hf_dtype} (reported, not the target).",
        f"median of {args.repeats} timed run(s) after one warmup run per system and scenario.",
    ]
    for c in checks:
        notes.append(
            f"target {c['system']} {c['target']} >= {c['needed']}x llama.cpp: "
            f"{'MET' if c['met'] else 'NOT MET'} ({c['ratio']:.2f}x)"
        )
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
            "weights": args.weights,
            "ragloom_dtype": args.ragloom_dtype,
            "transformers_dtype": args.hf_dtype,
            "batch_sizes": args.batch_sizes,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "long_prompt_len": args.long_prompt_len,
            "llamacpp_ubatch": args.llamacpp_ubatch,
            "scenarios": [asdict(sc) for sc in scenarios],
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
        "engines": engine_info,
        "results": [_result_json(r) for r in results],
        "targets": checks,
        "skipped": skipped,
        "failed": failed,
        "notes": notes,
    }
    output = args.output or RESULTS_DIR / f"generate-{args.device}-{model_slug(args.model)}.json"
    write_results(output, report)

    print(
        f"\ngenerate benchmark: {args.model} on {args.device}, {args.threads} threads, prompt {args.prompt_len} "
        f"tokens, {args.new_tokens} new tokens, TTFT prompt {args.long_prompt_len}, greedy, median of {args.repeats}"
    )
    print(format_table(results, scenarios))
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
