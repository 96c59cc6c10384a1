"""Blending stored chunk KV into one prompt (CacheBlend, EPIC), on the runner's model weights.

A prompt is a list of segments: typically the system prompt, the retrieved chunks, then the
question. A segment may carry stored KV, computed when that chunk was prefilled on its own after
some context (`start_pos` tokens). Blending builds the prompt's KV from those pieces:

- keys are rotated from their stored positions to their new ones (RoPE rotations compose, so a
  rotation by the position delta is exact up to rounding);
- segments marked `exact` (their KV was computed after exactly the tokens that precede them here,
  e.g. the system prompt at position 0) are reused as they are: that is the prefix cache;
- the other reused tokens lack attention to the chunks before them. Modes pick which tokens to
  recompute; recomputed tokens attend over the blended KV with an exact causal mask:
    full    recompute everything (the reference; equals a normal prefill)
    prefix  reuse only the exact leading segments, recompute the rest
    blend   CacheBlend: layer 0 for every non-exact token; at the check layer (1) every token's
            fresh K/V is compared with the stored one and the `ratio` share of reused tokens that
            deviate most, plus all tokens without stored KV (the question), are recomputed in the
            layers after it; the rest keep their stored KV
    epic    EPIC/LegoLink: recompute the first `epic_tokens` tokens of each chunk (its attention
            sink) and the question, in every layer; no check layer
The result is the prompt's K/V for every layer plus the last token's logits, ready to be written
into a sequence's KV blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ragloom.generation.runner.model import DecoderLayer, LlamaModel, attend, rms_norm
from ragloom.generation.runner.rope import apply_rotary

Mode = Literal["full", "prefix", "blend", "epic"]
MODES: tuple[str, ...] = ("full", "prefix", "blend", "epic")


@dataclass
class Segment:
    token_ids: list[int]
    k: torch.Tensor | None = None  # [layers, n, kv_heads, head_dim], post-RoPE at start_pos..
    v: torch.Tensor | None = None
    start_pos: int = 0  # position of the first token when the stored KV was computed
    exact: bool = False  # stored KV was computed after exactly the tokens before this segment

    @property
    def reusable(self) -> bool:
        return self.k is not None


@dataclass
class BlendResult:
    k: torch.Tensor  # [layers, T, kv_heads, head_dim] at positions 0..T-1
    v: torch.Tensor
    logits: torch.Tensor  # [vocab] float32, for the last prompt token
    reused: int  # prompt tokens whose KV came from storage in the last layer
    recomputed: int  # prompt tokens computed through the last layer
    reused_mask: torch.Tensor  # bool [T] on CPU: which tokens those reused ones are


def rotate_keys(model: LlamaModel, k: torch.Tensor, delta: int) -> torch.Tensor:
    """Post-RoPE keys [layers, n, kvh, d] moved by `delta` positions (negative moves them back)."""
    if delta == 0:
        return k
    pos = torch.tensor([abs(delta)], device=k.device)
    cos, sin = model.rope.tables(pos)  # [1, 1, d]
    if delta < 0:
        sin = -sin
    return apply_rotary(k, cos.to(k.dtype), sin.to(k.dtype))


def _mlp(layer: DecoderLayer, x: torch.Tensor, eps: float) -> torch.Tensor:
    gate, up = layer.gate_up(rms_norm(x, layer.post_norm, eps)).chunk(2, dim=-1)
    return x + layer.down(F.silu(gate) * up)


@torch.inference_mode()
def blend(
    model: LlamaModel,
    segments: list[Segment],
    mode: Mode = "blend",
    ratio: float = 0.15,
    check_layer: int = 1,
    epic_tokens: int = 16,
) -> BlendResult:
    cfg = model.cfg
    device = model.embed.weight.device
    dtype = model.embed.weight.dtype
    eps = cfg.rms_norm_eps
    token_ids = [t for s in segments for t in s.token_ids]
    n = len(token_ids)
    if n == 0:
        raise ValueError("nothing to blend: all segments are empty")
    layers = model.decoder_layers
    shape = (len(layers), n, cfg.num_kv_heads, cfg.head_dim)
    k_all = torch.zeros(shape, dtype=dtype, device=device)
    v_all = torch.zeros(shape, dtype=dtype, device=device)

    # Where each token's KV comes from, and which tokens are computed from layer 0.
    stored = torch.zeros(n, dtype=torch.bool)  # has stored KV (possibly inexact)
    exact = torch.zeros(n, dtype=torch.bool)
    first_of_chunk = torch.zeros(n, dtype=torch.bool)
    pos = 0
    leading_exact = True
    for s in segments:
        m = len(s.token_ids)
        if m == 0:
            continue
        use = s.reusable and mode != "full"
        leading_exact = leading_exact and use and s.exact
        if use and (mode != "prefix" or leading_exact):
            assert s.k is not None and s.v is not None
            if s.k.shape[1] != m:
                raise ValueError(f"segment has {m} tokens but stored KV for {s.k.shape[1]}")
            k_all[:, pos : pos + m] = rotate_keys(model, s.k.to(device, dtype), pos - s.start_pos)
            v_all[:, pos : pos + m] = s.v.to(device, dtype)
            stored[pos : pos + m] = True
            exact[pos : pos + m] = leading_exact
            first_of_chunk[pos : pos + min(m, epic_tokens)] = True
        pos += m

    if mode == "epic":
        active = ~stored | (first_of_chunk & ~exact)
    elif mode == "blend":  # every inexact token runs until the check layer
        active = ~exact
    else:  # full / prefix: what is not stored
        active = ~stored
    active[-1] = True  # the last token's logits are the point
    stored_dev = stored.to(device)
    active_idx = torch.nonzero(active).flatten().to(device)
    positions = torch.arange(n, device=device)
    h = model.embed(torch.tensor(token_ids, device=device)[active_idx])
    key_pos = positions.view(1, n)
    stored_v_check = v_all[check_layer].clone() if mode == "blend" and check_layer < len(layers) else None

    for li, layer in enumerate(layers):
        qpos = positions[active_idx]
        cos, sin = model.rope.tables(qpos)
        x = rms_norm(h, layer.input_norm, eps)
        q, k, v = layer.qkv(x).split(layer.split, dim=-1)
        q = apply_rotary(q.view(-1, cfg.num_heads, cfg.head_dim), cos, sin)
        k = apply_rotary(k.view(-1, cfg.num_kv_heads, cfg.head_dim), cos, sin)
        v = v.view(-1, cfg.num_kv_heads, cfg.head_dim)
        k_all[li, active_idx] = k
        v_all[li, active_idx] = v
        if stored_v_check is not None and li == check_layer:
            # The fresh K/V of this layer are exact (the layers below ran in full) and are kept.
            # From here on only the reused tokens whose stored V deviates most, and the tokens
            # that had nothing stored, go on being recomputed.
            was_stored = stored_dev[active_idx]
            dev = (v.float() - stored_v_check[active_idx].float()).pow(2).sum((-1, -2))
            dev = torch.where(was_stored, dev, torch.full_like(dev, float("inf")))
            n_keep = int(torch.ceil(torch.tensor(ratio * float(was_stored.sum()))).item()) + int((~was_stored).sum())
            keep = torch.topk(dev, min(n_keep, len(dev))).indices
            keep = torch.unique(torch.cat([keep, keep.new_tensor([len(dev) - 1])]))  # sorted; last token kept
            q, h, active_idx, qpos = q[keep], h[keep], active_idx[keep], qpos[keep]
        mask = key_pos <= qpos.view(-1, 1)
        if cfg.sliding_window is not None:
            mask &= qpos.view(-1, 1) - key_pos < cfg.sliding_window
        out = attend(q.unsqueeze(0), k_all[li].unsqueeze(0), v_all[li].unsqueeze(0), mask.view(1, 1, *mask.shape))
        h = h + layer.o(out.squeeze(0))
        h = _mlp(layer, h, eps)

    last = rms_norm(h[-1:], model.norm, eps)
    weight = model.embed.weight if model.lm_head is None else model.lm_head.weight
    logits = F.linear(last, weight).float()[0]
    recomputed = len(active_idx)
    reused_mask = torch.ones(n, dtype=torch.bool)
    reused_mask[active_idx.cpu()] = False
    return BlendResult(k_all, v_all, logits, reused=n - recomputed, recomputed=recomputed, reused_mask=reused_mask)


@torch.inference_mode()
def prefill_kv(model: LlamaModel, context: Segment, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V of `token_ids` prefilled on their own after `context` (whose stored KV, if any, is
    reused exactly): [layers, len(token_ids), kvh, d] each, at positions len(context)..."""
    ctx = Segment(context.token_ids, context.k, context.v, context.start_pos, exact=True)
    res = blend(model, [ctx, Segment(token_ids)], mode="prefix")
    m = len(context.token_ids)
    return res.k[:, m:].clone(), res.v[:, m:].clone()
