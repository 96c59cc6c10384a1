"""Llama-family decoder forward pass in plain PyTorch, over the runner's paged KV cache.

RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, optional tied embeddings. Q/K/V and gate/up
projections are fused into one matmul each at load time: fewer, larger kernels matter more than
anything else for a 135M model, where per-op overhead rivals the arithmetic. Every linear (and the
LM head) is a `QuantLinear`: its weight may be dense float32/bf16 or packed int8/int4 (quant.py),
while activations, norms and the KV cache stay in the model's dtype.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ragloom.errors import ModelError
from ragloom.generation.runner.batch import AttentionGroup, ForwardBatch
from ragloom.generation.runner.kv import KVCache
from ragloom.generation.runner.kv_quant import IntRun
from ragloom.generation.runner.quant import QuantEmbedding, QuantLinear
from ragloom.generation.runner.rope import RotaryEmbedding, apply_rotary
from ragloom.generation.runner.weights import ModelConfig, build_state, float_tensors, hf_names


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused op instead of six: decode is bound by op count
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    # Normalise in float32 and scale in the model's dtype, as HF does for bfloat16/float16.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention. q [B, Lq, H, d]; k, v [B, Lk, KVH, d]; mask [B, 1, Lq, Lk] bool
    (None: no masking).

    SDPA on every device (enable_gqa: K/V are never repeated). On CPU, torch 2.13's kernel beat
    our former hand-written grouped matmuls everywhere we measured, most on long prompts (a
    1,500-token prefill 1.5-1.7x, batched decode 1.6-2x, 2 busy cores): it never materializes
    the [Lq, Lk] score matrix per head.
    """
    b, lq, h, d = q.shape
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=h != k.shape[2]
    )
    return out.transpose(1, 2).reshape(b, lq, h * d)


# From this many tokens a run of int8 keys is scored with an int8 x int8 matmul on the query's own
# int8 codes (the CPU's VNNI): at a 4,000-token context ~10x faster than a float bmm over
# converted keys, while below it the extra ops (quantizing the query, one matmul per KV head)
# cost more than the conversion saves.
INT_SCORES_MIN_TOKENS = 256


# CPU matmul rounds a row of a product the same way whatever the other rows from this many rows
# up (fewer take another kernel): a decode's query rows are padded to it, so that they and a
# verify pass's rows (speculative decoding) compute bit-identical attention.
MIN_QUERY_ROWS = 4


def attend_runs(q: torch.Tensor, runs: list[tuple[torch.Tensor | IntRun, torch.Tensor | IntRun]],
                key_scale: torch.Tensor | None = None, keys: int | None = None,
                visible: torch.Tensor | None = None) -> torch.Tensor:
    """Queries q [Lq, H, d] of one sequence over its keys given as runs of (k, v), each [KVH, n, d]
    straight into the cache (KVCache.view): [Lq, H * d]. `key_scale` [KVH, 1, d]: the keys are
    stored divided by it (KVCache.key_scale), so the query is multiplied by it. `keys`: how many
    of the runs' slots are keys (the rest, at the end, are masked; None: all). `visible` [Lq, m]
    bool: which of the last m keys each query sees (a draft tree's rows: batch.py); the keys
    before them every query sees. None: every query sees every key (a decode, Lq = 1).

    Grouped-query attention as matmuls: the queries sharing a KV head (H / KVH heads of each of
    the Lq rows) form the rows of one [Lq * G, d] x [d, n] product, so K/V are never repeated nor
    copied. Scores of all runs are softmaxed together (they are only [Lq * H, context] floats).
    int8 runs keep their per-token scales out of the big tensors: on keys they scale the scores,
    on values the probabilities."""
    k0 = runs[0][0]
    kvh, d = (k0.codes if isinstance(k0, IntRun) else k0).shape[::2]
    lq, h = q.shape[0], q.shape[1]
    # [KVH, Lq * G, d], rows ordered (query, head in group); for Lq = 1 a view.
    qg = (q * d**-0.5).view(lq, kvh, h // kvh, d).transpose(0, 1).reshape(kvh, -1, d)
    if key_scale is not None:
        qg = qg * key_scale.to(qg.dtype)
    rows = qg.shape[1]
    if rows < MIN_QUERY_ROWS:
        qg = torch.cat([qg, qg.new_zeros(kvh, MIN_QUERY_ROWS - rows, d)], 1)
    q8: tuple[torch.Tensor, torch.Tensor] | None = None
    scores = []
    for k, _ in runs:
        if isinstance(k, IntRun):
            if qg.device.type == "cpu" and k.codes.shape[1] >= INT_SCORES_MIN_TOKENS:
                q8 = q8 or int8_rows(qg)
                scores.append(int8_scores(q8, k))
            else:
                scores.append(torch.bmm(qg, k.codes.to(qg.dtype).transpose(1, 2)) * k.scale.transpose(1, 2).to(qg.dtype))
        else:
            scores.append(torch.bmm(qg, k.transpose(1, 2)))
    s = (scores[0] if len(scores) == 1 else torch.cat(scores, -1)).float()
    keys = s.shape[-1] if keys is None else keys
    if keys < s.shape[-1]:
        s[..., keys:] = float("-inf")
    if visible is not None:
        m = visible.shape[1]
        s[:, :rows, keys - m : keys].masked_fill_(~visible.repeat_interleave(h // kvh, 0), float("-inf"))
    p = torch.softmax(s, -1).to(q.dtype)
    out, start = None, 0
    for _, v in runs:
        if isinstance(v, IntRun):
            n = v.codes.shape[1]
            part, values = p[..., start : start + n] * v.scale.transpose(1, 2).to(p.dtype), v.codes.to(p.dtype)
        else:
            n = v.shape[1]
            part, values = p[..., start : start + n], v
        out = torch.bmm(part, values) if out is None else out.baddbmm_(part, values)
        start += n
    assert out is not None
    return out[:, :rows].view(kvh, lq, h // kvh, d).transpose(0, 1).reshape(lq, h * d)


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of each row of x [..., d] and the rows' scales [..., 1]."""
    scale = torch.linalg.vector_norm(x.float(), ord=float("inf"), dim=-1, keepdim=True).div_(127).clamp_min_(1e-12)
    return torch.div(x, scale).round_().to(torch.int8), scale


def int8_scores(q8: tuple[torch.Tensor, torch.Tensor], k: IntRun) -> torch.Tensor:
    """Scores [KVH, G, n] of int8 query rows (codes [KVH, G, d], scales [KVH, G, 1]) over int8
    keys: an int8 x int8 matmul per KV head (`torch._int_mm`, CPU), scaled afterwards."""
    codes, q_scale = q8
    dots = torch.stack([torch._int_mm(codes[h], k.codes[h].t()) for h in range(codes.shape[0])])
    return dots.float().mul_(q_scale).mul_(k.scale.transpose(1, 2))


class DecoderLayer(nn.Module):
    # The linears come from stored weights in any format (quant.py); `load` builds them.
    qkv: QuantLinear
    o: QuantLinear
    gate_up: QuantLinear
    down: QuantLinear

    def __init__(self, cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.cfg = cfg
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.split = (q, kv, kv)
        self.input_norm = nn.Parameter(torch.ones(cfg.hidden_size, device=device, dtype=dtype), requires_grad=False)
        self.post_norm = nn.Parameter(torch.ones(cfg.hidden_size, device=device, dtype=dtype), requires_grad=False)

    def load(self, state: dict[str, torch.Tensor], prefix: str, device: torch.device, dtype: torch.dtype) -> None:
        """Take this layer's parameters (runner names, weights.py) out of `state`."""
        bias = state.pop(prefix + "qkv.bias", None)
        self.qkv = QuantLinear(_take_weight(state, prefix + "qkv"), device, bias, dtype)
        self.o = QuantLinear(_take_weight(state, prefix + "o"), device, None, dtype)
        self.gate_up = QuantLinear(_take_weight(state, prefix + "gate_up"), device, None, dtype)
        self.down = QuantLinear(_take_weight(state, prefix + "down"), device, None, dtype)
        with torch.no_grad():
            self.input_norm.copy_(_take(state, prefix + "input_norm"))
            self.post_norm.copy_(_take(state, prefix + "post_norm"))

    # The layer's steps are methods of their own so that cache/blend.py, which runs a layer on a
    # subset of tokens over KV it assembles itself, calls this code rather than a copy of it.

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input norm, fused q/k/v projection and RoPE: q [T, H, d]; k (rotated), v [T, KVH, d]."""
        cfg = self.cfg
        tokens, heads = x.shape[0], cfg.num_heads
        qkv = self.qkv(rms_norm(x, self.input_norm, cfg.rms_norm_eps))
        # q and k sit side by side in the fused output: rotate them in one call.
        qk = apply_rotary(qkv[:, : self.split[0] + self.split[1]].view(tokens, -1, cfg.head_dim), cos, sin)
        v = qkv[:, self.split[0] + self.split[1] :].view(tokens, cfg.num_kv_heads, cfg.head_dim)
        return qk[:, :heads], qk[:, heads:], v

    def attend_paged(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                     batch: ForwardBatch, kv: KVCache) -> torch.Tensor:
        """Store this step's k/v in the paged cache, then attend each sequence over its cached
        KV: [T, H * d], before the output projection."""
        kv.write(layer, batch.slot_mapping, k, v)
        groups = batch.groups
        if len(groups) == 1 and groups[0].rows is None:
            return self._attend_group(q, layer, groups[0], kv)
        out = q.new_empty(q.shape[0], self.cfg.num_heads * self.cfg.head_dim)
        for g in groups:
            assert g.rows is not None
            out.index_copy_(0, g.rows, self._attend_group(q.index_select(0, g.rows), layer, g, kv))
        return out

    def _attend_group(self, q: torch.Tensor, layer: int, g: AttentionGroup, kv: KVCache) -> torch.Tensor:
        cfg = self.cfg
        if g.runs is not None:  # decode or verify, keys in place: one sequence at a time
            scale, outs, row = kv.key_scale(layer), [], 0
            keys = g.keys or [None] * len(g.runs)
            for i, (runs, visible) in enumerate(zip(g.runs, g.visible or [None] * len(g.runs))):
                n = 1 if visible is None else visible.shape[0]
                views = [kv.view(layer, slot, length) for slot, length in runs]
                outs.append(attend_runs(q[row : row + n], views, scale, keys[i], visible))
                row += n
            return outs[0] if len(outs) == 1 else torch.cat(outs)
        assert g.gather_slots is not None
        keys, values = kv.gather(layer, g.gather_slots)  # [B, Lk, kvh, d]
        b, lq = g.batch_size, g.max_query_len
        if g.q_index is None:  # one query per sequence, no padding needed
            qp = q.view(b, 1, cfg.num_heads, cfg.head_dim)
        else:
            qp = q.new_zeros(b * lq, cfg.num_heads, cfg.head_dim).index_copy_(0, g.q_index, q)
            qp = qp.view(b, lq, cfg.num_heads, cfg.head_dim)
        out = attend(qp, keys, values, g.mask)  # [B, Lq, H * d]
        out = out.reshape(b * lq, cfg.num_heads * cfg.head_dim)
        if g.q_index is not None:
            out = out.index_select(0, g.q_index)
        return out

    def output(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection and residual, then the SwiGLU MLP and its residual: the layer's result."""
        x = x + self.o(attn)
        gate, up = self.gate_up(rms_norm(x, self.post_norm, self.cfg.rms_norm_eps)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)

    def forward(self, x: torch.Tensor, layer: int, batch: ForwardBatch, kv: KVCache,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        return self.output(x, self.attend_paged(q, k, v, layer, batch, kv))


def _take(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return state.pop(name)
    except KeyError:
        raise ModelError(f"weights are missing {name}") from None


def _take_weight(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A stored weight's tensors (<prefix>.weight, or .qweight/.scale[/.zero]) by part name."""
    parts = {k.removeprefix(prefix + "."): state.pop(k) for k in
             [k for k in state if k.startswith(prefix + ".") and k != prefix + ".bias"]}
    if not parts:
        raise ModelError(f"weights are missing {prefix}")
    return parts


class LlamaModel(nn.Module):
    embed: QuantEmbedding
    head: QuantLinear  # the LM head; for tied embeddings it reads the embedding's own table

    def __init__(self, cfg: ModelConfig, max_positions: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.cfg = cfg
        self.device, self.dtype = device, dtype  # of activations, norms and the KV cache
        self.layers = nn.ModuleList(DecoderLayer(cfg, device, dtype) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size, device=device, dtype=dtype), requires_grad=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, max_positions, device, dtype)

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.layers))  # ModuleList items are typed as Module

    @property
    def weight_formats(self) -> dict[str, str]:
        """Each linear's stored format and kernel ("int4 via int4-cpu"), for logs and tests."""
        linears = {"head": self.head}
        for i, layer in enumerate(self.decoder_layers):
            linears |= {f"layers.{i}.{n}": getattr(layer, n) for n in ("qkv", "o", "gate_up", "down")}
        return {name: f"{lin.format} via {lin.kernel.name}" for name, lin in linears.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take the runner's parameters (names and formats: weights.py); every tensor must be used."""
        state = dict(state)
        device, dtype = self.device, self.dtype
        embed = _take_weight(state, "embed")
        self.embed = QuantEmbedding(embed, device, dtype)
        head = embed if self.cfg.tie_word_embeddings else _take_weight(state, "lm_head")
        # Logits are wanted in float32; the head runs in its kernel's dtype either way.
        self.head = QuantLinear(head, device, None, torch.float32)
        with torch.no_grad():
            self.norm.copy_(_take(state, "norm"))
        for i, layer in enumerate(self.decoder_layers):
            layer.load(state, f"layers.{i}.", device, dtype)
        if state:
            raise ModelError(f"weights have tensors this architecture does not use: {list(state)[:5]}")

    def load_hf_state(self, state: dict[str, torch.Tensor], weights: str | None = None) -> None:
        """Take HF parameter names (dense), fusing q/k/v and gate/up, in `weights`' formats
        (default: dense in the model's dtype)."""
        state = {k: v for k, v in state.items() if "rotary_emb" not in k}
        if self.cfg.tie_word_embeddings and "lm_head.weight" in state:
            head, embed = state.pop("lm_head.weight"), state.get("model.embed_tokens.weight")
            if embed is not None and not torch.equal(head, embed):
                raise ModelError("tie_word_embeddings is set but lm_head.weight differs from the embedding")
        dense = weights is None
        runner = build_state(float_tensors(state), self.cfg, "float32" if dense else str(weights), self.device)
        if dense:  # keep the checkpoint's values in the model's dtype, as before (float16 included)
            runner = {k: v.to(self.dtype) for k, v in runner.items()}
        used = set(hf_names(self.cfg))
        leftover = [k for k in state if k not in used]
        if leftover:
            raise ModelError(f"checkpoint has tensors this architecture does not use: {leftover[:5]}")
        self.load_state(runner)

    def forward(self, batch: ForwardBatch, kv: KVCache) -> torch.Tensor:
        """Logits [N, vocab] (float32) at batch.logits_indices."""
        x = self.embed(batch.input_ids)
        cos, sin = self.rope.tables(batch.positions)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, i, batch, kv, cos, sin)
        return self.logits(x.index_select(0, batch.logits_indices))

    def key_channel_scales(self) -> torch.Tensor | None:
        """A per-layer, per-KV-head, per-channel estimate of the keys' magnitude, [layers,
        kv_heads, head_dim], for equalizing integer KV keys (kv_quant.py); None when a layer's
        weight cannot be read back (CUDA int4).

        A key channel j is b_j + w_j . (gamma * x_hat) with x_hat the RMS-normalized input (unit
        mean square), so |b_j| + 2 ||w_j * gamma|| bounds it for most tokens. RoPE rotates channel
        j with j + d/2, so the pair shares the larger scale. The square root migrates half the
        spread into the scale (SmoothQuant's default strength): it measured best on both bundled
        model families (benchmarks/kv_formats.py)."""
        cfg, d = self.cfg, self.cfg.head_dim
        q, kvd = cfg.num_heads * d, cfg.num_kv_heads * d
        scales = []
        for layer in self.decoder_layers:
            w = layer.qkv.float_weight()
            if w is None:
                return None
            c = (w[q : q + kvd] * layer.input_norm.float()).norm(dim=1) * 2
            if layer.qkv.bias is not None:
                c = c + layer.qkv.bias[q : q + kvd].float().abs()
            c = c.view(cfg.num_kv_heads, d)
            c = torch.maximum(c[:, : d // 2], c[:, d // 2 :]).repeat(1, 2)
            scales.append(c.clamp_min(1e-6).sqrt())
        out = torch.stack(scales)
        return out / out.mean(-1, keepdim=True)  # unit mean: keeps the stored values near k's size

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head over hidden states [N, hidden]: logits [N, vocab] in float32."""
        return self.head(rms_norm(x, self.norm, self.cfg.rms_norm_eps)).float()
