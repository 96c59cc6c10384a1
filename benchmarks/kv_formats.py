#!/usr/bin/env python
"""How much each way of storing keys disturbs attention, on real keys (issue 17).

Prefills --tokens tokens of SciFact text through the model layer by layer (the runner's own
`project` / `output` steps, causal attention in float32), keeps each layer's queries, keys and
values, and stores the keys in each format below. Reported per format: the relative error of
the causal attention output (||attn(K') - attn(K)|| / ||attn(K)||, values exact), mean and worst
over layers, and the bytes a head_dim token-head of keys takes.

Formats: the runner's KV stores (kv_quant.KVStore, the code the cache runs) with and without the
channel equalization that `LlamaModel.key_channel_scales` estimates from the weights, and KIVI's
per-channel 4-bit keys over groups of --group tokens (the cache's block size; the unfinished
last group stays in float, KIVI's full-precision window), implemented here as the reference.

    python benchmarks/kv_formats.py                                # SmolLM2-135M
    python benchmarks/kv_formats.py --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from results_io import RESULTS, write_results
from weights_quality import TEXT_FILE, MissingData, load_text, shared_file


def capture_qkv(engine: Any, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each layer's q [T, H, d], rotated k and v [T, KVH, d] for a prefill of `ids`, in float32."""
    from ragloom.generation.runner.model import attend

    model = engine.model
    positions = torch.arange(len(ids))
    mask = torch.ones(len(ids), len(ids), dtype=torch.bool).tril().view(1, 1, len(ids), len(ids))
    with torch.inference_mode():
        x = model.embed(torch.tensor(ids))
        cos, sin = model.rope.tables(positions)
        out = []
        for layer in model.decoder_layers:
            q, k, v = layer.project(x, cos, sin)
            out.append((q.float(), k.float(), v.float()))
            x = layer.output(x, attend(q[None], k[None], v[None], mask)[0])
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal grouped-query attention in float32: [T, H * d]."""
    from ragloom.generation.runner.model import attend

    t = q.shape[0]
    mask = torch.ones(t, t, dtype=torch.bool).tril().view(1, 1, t, t)
    return attend(q[None], k[None], v[None], mask)[0]


def kivi_keys(k: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """KIVI's keys: per channel over groups of `group` tokens, asymmetric; the last unfinished
    group in float (the full-precision window)."""
    t = k.shape[0] // group * group
    g = k[:t].reshape(-1, group, *k.shape[1:])
    lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
    levels = 2**bits - 1
    scale = (hi - lo).div(levels).clamp_min(1e-12)
    deq = ((g - lo) / scale).round().clamp(0, levels) * scale + lo
    return torch.cat([deq.reshape(t, *k.shape[1:]), k[t:]])


def store_keys(fmt: str, scale: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Keys written to and read back from the runner's KVStore in `fmt` (one layer)."""
    from ragloom.generation.runner.kv_quant import KVStore

    def run(k: torch.Tensor) -> torch.Tensor:
        store = KVStore(fmt, 1, k.shape[1], k.shape[0], k.shape[2], torch.float32, torch.device("cpu"),
                        None if scale is None else scale[None])
        slots = torch.arange(k.shape[0])
        store.write(0, slots, k)
        return store.load(0, slots).transpose(0, 1)

    return run


def store_bytes(fmt: str, head_dim: int) -> float:
    from ragloom.generation.runner.kv_quant import KVStore

    store = KVStore(fmt, 1, 1, 64, head_dim, torch.float32, torch.device("cpu"))
    return store.bytes / 64


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="bundled (default), packaged or local model")
    parser.add_argument("--weights", default="auto", help="weights setting of the engine (default auto)")
    parser.add_argument("--tokens", type=int, default=1024, help="prefill length (default 1024)")
    parser.add_argument("--group", type=int, default=16, help="KIVI token group = cache block size (default 16)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-root", type=Path, default=None, help="shared evaluation data")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ragloom.config import EngineSettings
    from ragloom.generation.runner.engine import LLMEngine

    extra = {"model": args.model} if args.model else {}
    engine = LLMEngine(EngineSettings(**extra, weights=args.weights, kv_cache_tokens=64, max_num_seqs=1))
    try:
        ids, text = load_text(shared_file(TEXT_FILE, args.data_root), engine.tokenizer, args.tokens)
    except MissingData as exc:
        print(exc, file=sys.stderr)
        return 2
    started = time.perf_counter()
    layers = capture_qkv(engine, ids)
    scales = engine.model.key_channel_scales()
    d = engine.config.head_dim
    # (name, bytes per token-head of keys, how a layer's keys come back)
    formats: list[tuple[str, float, Callable[[torch.Tensor, int], torch.Tensor]]] = [
        ("bf16", store_bytes("bf16", d), lambda k, i: store_keys("bf16", None)(k)),
        ("int8 per token", store_bytes("int8", d), lambda k, i: store_keys("int8", None)(k)),
        ("int8 per token, equalized (cache keys)", store_bytes("int8", d),
         lambda k, i: store_keys("int8", None if scales is None else scales[i])(k)),
        ("int4 per token g32", store_bytes("int4", d), lambda k, i: store_keys("int4", None)(k)),
        ("int4 per token g32, equalized", store_bytes("int4", d),
         lambda k, i: store_keys("int4", None if scales is None else scales[i])(k)),
        (f"KIVI int4 per channel, {args.group}-token groups", d / 2 + 2 * d * 4 / args.group,
         lambda k, i: kivi_keys(k, 4, args.group)),
        (f"KIVI int2 per channel, {args.group}-token groups", d / 4 + 2 * d * 4 / args.group,
         lambda k, i: kivi_keys(k, 2, args.group)),
    ]
    rows = []
    for name, nbytes, keys in formats:
        errors = []
        for i, (q, k, v) in enumerate(layers):
            exact = attention(q, k, v)
            errors.append(float((attention(q, keys(k, i), v) - exact).norm() / exact.norm()))
        rows.append({"format": name, "key_bytes_per_token_head": nbytes, "mean_rel_error": sum(errors) / len(errors),
                     "max_rel_error": max(errors), "worst_layer": errors.index(max(errors)), "per_layer": errors})

    print(f"\nattention-output error of stored keys, {engine.model_id}, {args.tokens} tokens, head_dim {d}")
    print("| keys | bytes/token-head | x float32 | mean rel. error | worst layer |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['key_bytes_per_token_head']:.0f} | {d * 4 / r['key_bytes_per_token_head']:.2f} "
              f"| {r['mean_rel_error']:.4f} | {r['max_rel_error']:.4f} (layer {r['worst_layer']}) |")
    slug = (args.model or "smollm2").replace("/", "_")
    out = args.output or RESULTS / f"kv_formats-cpu-{slug}.json"
    write_results(out, {
        "benchmark": "kv_formats", "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/kv_formats.py", *(argv if argv is not None else sys.argv[1:])]),
        "hardware": {"machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads()},
        "software": {"torch": torch.__version__, "python": platform.python_version()},
        "model": engine.model_id, "weights": args.weights, "text": text, "head_dim": d,
        "equalization": "none (no readable weights)" if scales is None else "LlamaModel.key_channel_scales",
        "seconds": time.perf_counter() - started, "results": rows,
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
