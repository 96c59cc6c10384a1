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
    blend   CacheBlend: layer 0 for every non-exact token; at the check layers (BlendConfig) every
            still-running token's fresh K/V is compared with the stored one, and the reused tokens
            that deviate most (weighted by how much the question attends to them), narrowed down to
            the `ratio` share, plus all tokens without stored KV (the question), are recomputed in
            the layers after it; the rest keep their stored KV. `CACHEBLEND` is the reference
            code's selection (one check layer, V deviation only)
    epic    EPIC/LegoLink: recompute the first `epic_tokens` tokens of each chunk (its attention
            sink) and the question, in every layer; no check layer
The result is the prompt's K/V for every layer plus the last token's logits, ready to be written
into a sequence's KV blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ragloom.generation.runner.batch import may_attend
from ragloom.generation.runner.model import LlamaModel, attend
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


@dataclass(frozen=True)
class BlendConfig:
    """How mode "blend" picks the tokens it recomputes (the share itself is `blend`'s `ratio`).

    check_layers  layers where fresh K/V are compared with the stored ones. Every inexact token runs
                  up to the first; after each check layer only the selected ones go on. Several
                  layers = CacheBlend's gradual filtering: the share kept narrows linearly from
                  `first_ratio` after the first check layer to `ratio` after the last.
    first_ratio   share kept after the first check layer when there are several (None: `ratio`).
    score         deviation measure: "v" (CacheBlend's code), "k" (post-RoPE K, as LMCache), "kv"
                  (both, each normalised by its mean over the candidates).
    attn_weight   the deviation is multiplied by (a / mean a) ** attn_weight, where a is the attention
                  the question's tokens (the last `attn_queries` rows with nothing stored) pay to the
                  token at the check layer: a deviating token nobody reads barely matters. 0 = off
                  (CacheBlend / LMCache).
    sink_tokens   the first tokens of every inexact chunk are always selected (EPIC's attention
                  sink), inside the budget.
    end_tokens    the last tokens of every inexact chunk (its blank-line separator) always selected,
                  inside the budget.
    min_chunk_tokens  every inexact chunk gets at least this many of its own top-scored tokens.

    Defaults: measured on MuSiQue with the bundled 135M model (benchmarks/README.md, blend.py):
    first-token KL vs full prefill at ratio 0.15 drops from 0.18 (CacheBlend's single V check at
    layer 1) to ~0.05 with attention weighting and gradual filtering over layers 1-3.
    """

    check_layers: tuple[int, ...] = (1, 2, 3)
    first_ratio: float | None = 0.4
    score: Literal["v", "k", "kv"] = "v"
    attn_weight: float = 1.0
    attn_queries: int = 64
    sink_tokens: int = 0
    end_tokens: int = 0
    min_chunk_tokens: int = 0


CACHEBLEND = BlendConfig(check_layers=(1,), first_ratio=None, score="v", attn_weight=0.0)  # the reference code
DEFAULT_BLEND = BlendConfig()


def _ratios(checks: list[int], ratio: float, first: float | None) -> list[float]:
    if len(checks) <= 1 or first is None:
        return [ratio] * len(checks)
    first = max(first, ratio)
    steps = len(checks) - 1
    return [first + (ratio - first) * i / steps for i in range(len(checks))]


@torch.inference_mode()
def blend(
    model: LlamaModel,
    segments: list[Segment],
    mode: Mode = "blend",
    ratio: float = 0.15,
    check_layer: int | None = None,
    epic_tokens: int = 16,
    config: BlendConfig | None = None,
) -> BlendResult:
    cfg = model.cfg
    bc = config or DEFAULT_BLEND
    if check_layer is not None:  # the old single-check-layer argument
        bc = BlendConfig(**{**bc.__dict__, "check_layers": (check_layer,)})
    device, dtype = model.device, model.dtype  # of activations and KV (weights may be packed)
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
    sinks = torch.zeros(n, dtype=torch.bool)  # forced into the recompute set
    chunk_of = torch.full((n,), -1, dtype=torch.long)  # inexact stored chunk index per token
    pos = 0
    leading_exact = True
    for si, s in enumerate(segments):
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
            if not leading_exact:
                sinks[pos : pos + min(m, bc.sink_tokens)] = True
                if bc.end_tokens:
                    sinks[pos + max(0, m - bc.end_tokens) : pos + m] = True
                chunk_of[pos : pos + m] = si
        pos += m

    if mode == "epic":
        active = ~stored | (first_of_chunk & ~exact)
    elif mode == "blend":  # every inexact token runs until the (first) check layer
        active = ~exact
    else:  # full / prefix: what is not stored
        active = ~stored
    active[-1] = True  # the last token's logits are the point
    checks = sorted({c for c in bc.check_layers if 0 <= c < len(layers)}) if mode == "blend" else []
    keep_ratios = dict(zip(checks, _ratios(checks, ratio, bc.first_ratio)))
    inexact_stored = stored & ~exact
    n_candidates = int(inexact_stored.sum())
    stored_dev = inexact_stored.to(device)
    sinks_dev = sinks.to(device)
    chunk_dev = chunk_of.to(device)
    active_idx = torch.nonzero(active).flatten().to(device)
    positions = torch.arange(n, device=device)
    h = model.embed(torch.tensor(token_ids, device=device)[active_idx])
    key_pos = positions.view(1, n)
    old = {li: (k_all[li].clone(), v_all[li].clone()) for li in checks}

    for li, layer in enumerate(layers):
        qpos = positions[active_idx]
        cos, sin = model.rope.tables(qpos)
        # The model's own steps of a layer (runner/model.py); only the KV they attend over and
        # the tokens they run on are blending's.
        q, k, v = layer.project(h, cos, sin)
        k_all[li, active_idx] = k
        v_all[li, active_idx] = v
        if li in keep_ratios:
            # The fresh K/V of this layer are kept for every token computed here. From here on
            # only the reused tokens that deviate most from their stored K/V, and the tokens that
            # had nothing stored (the question), go on being recomputed.
            old_k, old_v = old[li]
            cand = stored_dev[active_idx]
            attn = None
            if bc.attn_weight > 0:
                # attention the question's last tokens (rows with nothing stored, and the last row)
                # pay to every token at this layer
                qr = torch.nonzero(~cand).flatten()
                qr = torch.unique(torch.cat([qr, qr.new_tensor([len(cand) - 1])]))[-bc.attn_queries :]
                g = cfg.num_heads // cfg.num_kv_heads
                qq = q[qr].view(-1, cfg.num_kv_heads, g, cfg.head_dim).float()
                sc = torch.einsum("qhgd,khd->hgqk", qq, k_all[li].float()) * cfg.head_dim**-0.5
                sc.masked_fill_(~(key_pos <= qpos[qr].view(-1, 1)), float("-inf"))
                attn = sc.softmax(-1).mean((0, 1, 2))[active_idx]
            keep = _select(bc, k, v, old_k[active_idx], old_v[active_idx], cand,
                           sinks_dev[active_idx], chunk_dev[active_idx],
                           math.ceil(keep_ratios[li] * n_candidates - 1e-9), attn)
            q, h, active_idx, qpos = q[keep], h[keep], active_idx[keep], qpos[keep]
        mask = may_attend(qpos.view(-1, 1), key_pos, cfg.sliding_window)
        out = attend(q.unsqueeze(0), k_all[li].unsqueeze(0), v_all[li].unsqueeze(0), mask.view(1, 1, *mask.shape))
        h = layer.output(h, out.squeeze(0))

    logits = model.logits(h[-1:])[0]
    recomputed = len(active_idx)
    reused_mask = torch.ones(n, dtype=torch.bool)
    reused_mask[active_idx.cpu()] = False
    return BlendResult(k_all, v_all, logits, reused=n - recomputed, recomputed=recomputed, reused_mask=reused_mask)


def _select(bc: BlendConfig, k: torch.Tensor, v: torch.Tensor, old_k: torch.Tensor, old_v: torch.Tensor,
            candidate: torch.Tensor, sink: torch.Tensor, chunk: torch.Tensor, budget: int,
            attn: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices (into the rows given) of the tokens to go on recomputing: every non-candidate
    (no stored KV), the last row, and `budget` candidates: forced ones first, then by deviation."""
    dk = (k.float() - old_k.float()).pow(2).sum((-1, -2))
    dv = (v.float() - old_v.float()).pow(2).sum((-1, -2))
    if bc.score == "k":
        dev = dk
    elif bc.score == "v":
        dev = dv
    else:
        dev = dk / dk[candidate].mean().clamp_min(1e-12) + dv / dv[candidate].mean().clamp_min(1e-12)
    if attn is not None:
        # weight = (attention received / mean attention received) ** attn_weight
        a = attn / attn[candidate].mean().clamp_min(1e-12)
        dev = dev * a.clamp_min(1e-6).pow(bc.attn_weight)
    forced = sink & candidate
    if bc.min_chunk_tokens > 0:
        for c in torch.unique(chunk[candidate]).tolist():
            rows = torch.nonzero(candidate & (chunk == c)).flatten()
            forced[rows[torch.topk(dev[rows], min(bc.min_chunk_tokens, len(rows))).indices]] = True
    free = candidate & ~forced
    take = min(max(budget - int(forced.sum()), 0), int(free.sum()))
    prio = torch.where(free, dev, torch.full_like(dev, float("-inf")))
    chosen = torch.cat([torch.nonzero(forced).flatten(), torch.topk(prio, take).indices])
    rest = torch.nonzero(~candidate).flatten()
    last = rest.new_tensor([len(prio) - 1])
    return torch.unique(torch.cat([chosen, rest, last]))  # sorted


@torch.inference_mode()
def prefill_kv(model: LlamaModel, context: Segment, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V of `token_ids` prefilled on their own after `context` (whose stored KV, if any, is
    reused exactly): [layers, len(token_ids), kvh, d] each, at positions len(context)..."""
    ctx = Segment(context.token_ids, context.k, context.v, context.start_pos, exact=True)
    res = blend(model, [ctx, Segment(token_ids)], mode="prefix")
    m = len(context.token_ids)
    return res.k[:, m:].clone(), res.v[:, m:].clone()
