"""The runner against transformers on the same weights: logits and greedy outputs."""

from __future__ import annotations

import torch
from conftest import prefill_logits

from ragloom.generation.runner.batch import ForwardBatch
from ragloom.generation.runner.params import SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Photosynthesis is the process by which",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
    "SELECT name FROM users WHERE",
    "In 1969, Neil Armstrong",
    "A haiku about autumn:\n",
    "The difference between TCP and UDP is",
    "To make a cup of tea, first",
    "Water boils at",
    "The mitochondria is",
    "import numpy as np\nx = np.",
    "Dear hiring manager,",
    "The best way to learn a new language is",
    "1, 2, 3, 5, 8, 13,",
    "Paris, London, Berlin,",
    "Ein Hund ist",
    "The GDP of a country measures",
    "Q: What is 7 times 8?\nA:",
    "JSON: {\"name\": \"",
    "Gravity is",
]


def test_prefill_logits_match_transformers(engine, hf_model):
    worst = 0.0
    for prompt in PROMPTS[:6]:
        ids = engine.encode(prompt=prompt)
        with torch.inference_mode():
            ref = hf_model(torch.tensor([ids])).logits[0]
        ours = prefill_logits(engine, ids)
        worst = max(worst, (ref - ours).abs().max().item())
    print(f"max abs logit diff vs transformers: {worst:.2e}")
    assert worst < 1e-3


def test_decode_logits_match_transformers_with_cache(engine, hf_model):
    """Logits of a decode step read from the paged cache equal a full forward's last row."""
    ids = engine.encode(prompt="The quick brown fox jumps over the lazy dog because")
    blocks: list[int] = []
    engine.kv.reserve(blocks, len(ids))
    try:
        with torch.inference_mode():
            engine.model(ForwardBatch.build([ids[:-1]], [0], [blocks], engine.kv, [1]), engine.kv)
            step = engine.model(ForwardBatch.build([ids[-1:]], [len(ids) - 1], [blocks], engine.kv, [1]), engine.kv)
            ref = hf_model(torch.tensor([ids])).logits[0, -1]
    finally:
        engine.kv.release(blocks)
    assert (step[0] - ref).abs().max().item() < 1e-3


def test_greedy_outputs_identical_to_transformers(engine, hf_model):
    """20+ prompts, generated together in one continuous batch, each equal to HF's greedy."""
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    ours = engine.generate(PROMPTS, params)
    mismatches = []
    for prompt, completion in zip(PROMPTS, ours):
        ids = engine.encode(prompt=prompt)
        with torch.inference_mode():
            ref = hf_model.generate(
                torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            )[0, len(ids):].tolist()
        if ref != completion.token_ids:
            mismatches.append((prompt, ref, completion.token_ids))
    assert len(PROMPTS) >= 20
    assert not mismatches, mismatches


def test_batched_equals_single(engine):
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    together = engine.generate(PROMPTS[:5], params)
    alone = [engine.generate([p], params)[0] for p in PROMPTS[:5]]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert engine.kv.allocator.num_used == 0


def test_attention_equals_naive_reference():
    """SDPA with GQA equals attention written out by hand, padding and GQA included."""
    from ragloom.generation.runner.model import attend

    g = torch.Generator().manual_seed(0)
    b, lq, lk, h, kvh, d = 3, 5, 9, 9, 3, 16
    q = torch.randn(b, lq, h, d, generator=g)
    k = torch.randn(b, lk, kvh, d, generator=g)
    v = torch.randn(b, lk, kvh, d, generator=g)
    q_pos = torch.tensor([[4, 5, 6, 7, 8], [0, 1, 2, 0, 0], [6, 0, 0, 0, 0]])
    kv_len = torch.tensor([9, 3, 7])
    mask = (torch.arange(lk).view(1, 1, lk) <= q_pos.unsqueeze(-1)) & (torch.arange(lk) < kv_len.view(b, 1, 1))
    mask = mask.unsqueeze(1)
    kr, vr = k.repeat_interleave(h // kvh, dim=2), v.repeat_interleave(h // kvh, dim=2)  # [b, lk, h, d]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kr) / d**0.5
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    ref = torch.einsum("bhqk,bkhd->bqhd", probs, vr).reshape(b, lq, h * d)
    assert (attend(q, k, v, mask) - ref).abs().max().item() < 1e-5


def test_bfloat16_engine_runs_and_mostly_agrees(engine):
    """The production dtype (bfloat16, as on CUDA) through the same code path on CPU."""
    from ragloom.config import EngineSettings
    from ragloom.generation.runner.engine import LLMEngine

    bf16 = LLMEngine(EngineSettings(device="cpu", dtype="bfloat16", kv_cache_tokens=256))
    assert bf16.kv.k.dtype == torch.bfloat16
    ids = engine.encode(prompt="The capital of France is")
    ref = prefill_logits(engine, ids)[-1]
    ours = prefill_logits(bf16, ids)[-1]
    assert ours.dtype == torch.float32  # logits are always float32 for the sampler
    assert ours.argmax() == ref.argmax()
    assert torch.nn.functional.cosine_similarity(ours, ref, dim=0) > 0.99
