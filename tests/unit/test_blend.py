"""Blending stored chunk KV: exactness of the reference paths, and the engine's custom prefill."""

from __future__ import annotations

import pytest
import torch

from ragloom.cache.blend import CACHEBLEND, BlendConfig, Segment, blend, prefill_kv, rotate_keys
from ragloom.generation.runner.engine import PrefillResult, Request
from ragloom.generation.runner.params import SamplingParams

SYSTEM = "<|im_start|>system\nAnswer with a short answer, using the passages.<|im_end|>\n<|im_start|>user\n"
PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.\n\n",
    "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.\n\n",
    "The Danube is the second-longest river in Europe, flowing through ten countries.\n\n",
]
QUESTION = "Question: In which city is the Eiffel Tower?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def parts(engine):
    tok = engine.tokenizer

    def enc(s: str) -> list[int]:
        return tok.encode(s, add_special_tokens=False)

    system, chunks, question = enc(SYSTEM), [enc(p) for p in PASSAGES], enc(QUESTION)
    sk, sv = prefill_kv(engine.model, Segment([]), system)
    ctx = Segment(system, sk, sv, 0, exact=True)
    stored = [prefill_kv(engine.model, ctx, c) for c in chunks]
    return system, (sk, sv), chunks, stored, question


def _segments(parts, first_exact: bool = True) -> list[Segment]:
    system, (sk, sv), chunks, stored, question = parts
    segs = [Segment(system, sk, sv, 0, exact=True)]
    for i, (c, (k, v)) in enumerate(zip(chunks, stored)):
        segs.append(Segment(c, k, v, start_pos=len(system), exact=first_exact and i == 0))
    return segs + [Segment(question)]


def _prompt(parts) -> list[int]:
    system, _, chunks, _, question = parts
    return system + [t for c in chunks for t in c] + question


def _kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    p, q = ref.log_softmax(-1), other.log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


def test_full_mode_matches_the_engine_prefill(engine, parts) -> None:
    ids = _prompt(parts)
    res = blend(engine.model, [Segment(ids)], mode="full")
    assert res.reused == 0 and res.recomputed == len(ids)
    from ragloom.generation.runner.batch import ForwardBatch
    from ragloom.generation.runner.kv import KVCache

    cfg = engine.config
    kv = KVCache(cfg.num_layers, -(-len(ids) // 16), 16, cfg.num_kv_heads, cfg.head_dim, torch.float32, engine.device)
    table = kv.allocator.allocate(kv.num_blocks)
    fwd = ForwardBatch.build([ids], [0], [table], kv, [1])
    with torch.inference_mode():
        logits = engine.model(fwd, kv)[0]
    assert torch.allclose(res.logits, logits, atol=1e-3)
    assert torch.allclose(res.k, kv.read(kv.slot_tensor(table, 0, len(ids)))[0], atol=1e-4)


def _engine_prefill(engine, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The runner's own forward over `ids` from scratch: (last logits, K, V of every layer)."""
    from ragloom.generation.runner.batch import ForwardBatch
    from ragloom.generation.runner.kv import KVCache

    cfg = engine.config
    kv = KVCache(cfg.num_layers, -(-len(ids) // 16), 16, cfg.num_kv_heads, cfg.head_dim, torch.float32, engine.device)
    table = kv.allocator.allocate(kv.num_blocks)
    fwd = ForwardBatch.build([ids], [0], [table], kv, [1])
    with torch.inference_mode():
        logits = engine.model(fwd, kv)[0]
    return logits, *kv.read(kv.slot_tensor(table, 0, len(ids)))


def test_recomputing_everything_is_the_runners_forward_bit_for_bit(engine, parts) -> None:
    # Blending runs the model's own layer steps, so with every token recomputed (mode "full", or
    # "blend" at ratio 1.0 with nothing stored) it does exactly the forward's arithmetic.
    ids = _prompt(parts)
    logits, k, v = _engine_prefill(engine, ids)
    for res in (blend(engine.model, [Segment(ids)], mode="full"),
                blend(engine.model, [Segment(ids)], mode="blend", ratio=1.0)):
        assert res.recomputed == len(ids)
        assert torch.equal(res.logits, logits)
        assert torch.equal(res.k, k) and torch.equal(res.v, v)


def test_a_change_to_the_model_reaches_blending(engine, parts, monkeypatch) -> None:
    # Stand-in for an edit of the model's code: its RMSNorm (input, post-attention and final norms)
    # changes. A blend path with its own copy of the layer would keep the old numbers.
    from ragloom.generation.runner import model as model_mod

    ids = _prompt(parts)
    before = blend(engine.model, [Segment(ids)], mode="full").logits
    norm = model_mod.rms_norm
    monkeypatch.setattr(model_mod, "rms_norm", lambda x, weight, eps: norm(x, weight, eps) * 1.5)
    logits, k, v = _engine_prefill(engine, ids)
    res = blend(engine.model, [Segment(ids)], mode="full")
    assert not torch.allclose(logits, before, atol=1e-2)  # the change does change the model
    assert torch.equal(res.logits, logits)
    assert torch.equal(res.k, k) and torch.equal(res.v, v)


def test_exact_prefix_reuse_and_full_ratio_equal_full_prefill(engine, parts) -> None:
    full = blend(engine.model, _segments(parts), mode="full")
    prefix = blend(engine.model, _segments(parts), mode="prefix")
    system, _, chunks, _, _ = parts
    assert prefix.reused == len(system) + len(chunks[0])  # the system prompt and the first chunk are exact
    assert _kl(full.logits, prefix.logits) < 1e-6
    everything = blend(engine.model, _segments(parts), mode="blend", ratio=1.0)
    assert _kl(full.logits, everything.logits) < 1e-6


def test_rotation_to_new_positions_is_exact(engine, parts) -> None:
    # Layer 0 keys depend only on the token and its position: stored at 20.., moved to 57.., they
    # must equal keys computed at 57.. directly.
    _, _, chunks, _, _ = parts
    filler = list(range(1000, 1057))
    k_a, _ = prefill_kv(engine.model, Segment(list(range(1000, 1020))), chunks[1])
    k_b, _ = prefill_kv(engine.model, Segment(filler), chunks[1])
    moved = rotate_keys(engine.model, k_a, len(filler) - 20)
    assert torch.allclose(moved[0], k_b[0], atol=1e-4)
    back = rotate_keys(engine.model, moved, 20 - len(filler))
    assert torch.allclose(back[0], k_a[0], atol=1e-4)


def test_blend_and_epic_recompute_what_they_say(engine, parts) -> None:
    system, _, chunks, _, question = parts
    inexact = sum(len(c) for c in chunks[1:])
    full = blend(engine.model, _segments(parts), mode="full")
    for ratio in (0.0, 0.15, 0.5):
        res = blend(engine.model, _segments(parts), mode="blend", ratio=ratio)
        assert res.recomputed == len(question) + int(torch.ceil(torch.tensor(ratio * inexact)))
        assert res.k.shape == full.k.shape
    epic = blend(engine.model, _segments(parts), mode="epic", epic_tokens=4)
    assert epic.recomputed == len(question) + 4 * (len(chunks) - 1)
    # more recompute, closer to full prefill
    kls = [_kl(full.logits, blend(engine.model, _segments(parts), mode="blend", ratio=r).logits) for r in (0.0, 0.5)]
    assert kls[1] <= kls[0] + 1e-6


@pytest.mark.parametrize("config", [
    CACHEBLEND,
    BlendConfig(),  # gradual filtering over layers 1-3, attention-weighted V deviation
    BlendConfig(check_layers=(2,), score="k", attn_weight=0.0, sink_tokens=2, end_tokens=1),
    BlendConfig(check_layers=(1, 4), first_ratio=0.8, score="kv", min_chunk_tokens=3),
])
def test_blend_configs_keep_the_budget_and_the_forced_tokens(engine, parts, config) -> None:
    system, _, chunks, _, question = parts
    inexact = sum(len(c) for c in chunks[1:])
    full = blend(engine.model, _segments(parts), mode="full")
    res = blend(engine.model, _segments(parts), mode="blend", ratio=0.5, config=config)
    assert res.recomputed == len(question) + int(torch.ceil(torch.tensor(0.5 * inexact)))
    start = len(system) + len(chunks[0])
    for c in chunks[1:]:
        recomputed = ~res.reused_mask[start : start + len(c)]
        assert recomputed[: config.sink_tokens].all() and recomputed[len(c) - config.end_tokens :].all()
        assert int(recomputed.sum()) >= min(config.min_chunk_tokens, len(c))
        start += len(c)
    assert res.reused_mask[-len(question) :].logical_not().all()  # the question is always recomputed
    everything = blend(engine.model, _segments(parts), mode="blend", ratio=1.0, config=config)
    assert _kl(full.logits, everything.logits) < 1e-6


def test_engine_runs_a_custom_prefill(engine, parts) -> None:
    ids = _prompt(parts)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    plain = engine.generate([ids], params)[0]

    def prefill(model) -> PrefillResult:
        res = blend(model, _segments(parts), mode="prefix")
        return PrefillResult(res.k, res.v, res.logits, res.reused)

    engine.add_request(Request("blend-1", ids, params, prefill=prefill))
    text, cached = "", 0
    while engine.has_unfinished():
        for out in engine.step():
            text += out.text
            cached = out.cached_tokens
    assert text == plain.text  # exact reuse: same greedy continuation as a full prefill
    system, _, chunks, _, _ = parts
    assert cached == len(system) + len(chunks[0])


def test_a_failing_custom_prefill_fails_only_its_request(engine) -> None:
    ids = engine.encode(prompt="The capital of France is")

    def broken(model) -> PrefillResult:
        raise ValueError("stored KV unreadable")

    params = SamplingParams(max_tokens=3, temperature=0.0)
    engine.add_request(Request("broken", ids, params, prefill=broken))
    engine.add_request(Request("fine", ids, params))
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.finish_reason
    assert done == {"fine": "length"}
    assert isinstance(engine.failures.pop("broken"), ValueError)
    assert engine.kv.allocator.num_used == 0  # the failed request's blocks were freed
