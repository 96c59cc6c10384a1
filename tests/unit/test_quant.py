"""Quantized weights (generation/runner/quant.py): GGUF blocks -> packed int4/int8, the kernels per
device, the model on packed weights, the --weights setting and the packed cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prefill_logits
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, quants

from ragloom.config import EngineSettings, load_settings
from ragloom.errors import InvalidArgument, ModelError
from ragloom.generation.runner import engine as engine_module
from ragloom.generation.runner import quant, weights
from ragloom.generation.runner.batch import ForwardBatch
from ragloom.generation.runner.model import LlamaModel
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.quant import Kernel, QuantLinear
from ragloom.generation.runner.weights import ModelConfig, SourceTensor
from ragloom.models import bundled_gguf_path, cached_artifact

T = GGMLQuantizationType
CPU = torch.device("cpu")
RNG = np.random.default_rng(0)


def synthetic(qtype: GGMLQuantizationType, rows: int, cols: int, rng: np.random.Generator = RNG) -> SourceTensor:
    """Raw GGUF blocks of `qtype`: from the gguf package's quantizer where it has one, else random
    bytes with sane float16 scales (every byte pattern of the codes is a valid block)."""
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    try:
        raw = quants.quantize(w, qtype)
    except NotImplementedError:
        block, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
        # weights of ~0.01-0.05, like a trained model's (Q6_K's int8 sub-block scales reach 127)
        top = 2e-5 if qtype == T.Q6_K else 2e-4
        halves = rng.uniform(top / 10, top, (rows, cols // block, 2)).astype(np.float16).view(np.uint8)
        if qtype in (T.Q4_K, T.Q5_K):  # d, dmin lead the block
            raw[..., 0:4] = halves.reshape(rows, cols // block, 4)
        elif qtype == T.Q6_K:  # d ends it (the 16 sub-block scales are int8, any value)
            raw[..., -2:] = halves[..., 0:2]
        raw = raw.reshape(rows, -1)
    return SourceTensor(int(qtype), rows, cols, raw=np.ascontiguousarray(raw))


@pytest.fixture(scope="module")
def gguf_tensors() -> dict[str, object]:
    return {t.name: t for t in GGUFReader(bundled_gguf_path()).tensors}


def real(tensors: dict[str, object], name: str) -> SourceTensor:
    t = tensors[name]
    cols, rows = (int(s) for s in t.shape)  # type: ignore[attr-defined]
    return SourceTensor(int(t.tensor_type), rows, cols, raw=np.asarray(t.data).reshape(rows, -1))  # type: ignore[attr-defined]


def _matmul_error(lin: QuantLinear, w: torch.Tensor) -> tuple[float, float]:
    x = torch.randn(5, w.shape[1], generator=torch.Generator().manual_seed(1))
    ref = x.to(lin.kernel.compute_dtype).float() @ w.T  # the kernel sees rounded activations
    return (lin(x) - ref).abs().max().item(), ref.abs().max().item()


# ---- exact formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q4_K])
def test_4bit_blocks_map_exactly_onto_int4_groups(qtype, gguf_tensors):
    sources = [synthetic(qtype, 96, 512)]
    if qtype == T.Q4_1:  # the bundled model's own layers
        sources += [real(gguf_tensors, "blk.0.ffn_down.weight"), real(gguf_tensors, "blk.3.attn_k.weight")]
    for src in sources:
        ref = src.dense()
        groups = src.int4_groups()
        assert groups is not None
        stored = quant.int4_state(groups)
        # The same values as the gguf package's reference dequantizer (Q4_K's zero is one float32
        # rounding of 8*d*sc - dmin*m, hence the tiny slack there).
        assert torch.allclose(quant.dequantize_state(stored), ref, rtol=0, atol=1e-6 * ref.abs().max().item())

        # The CPU kernel with float32 activations computes exactly x @ W^T (up to summation order).
        exact = QuantLinear(stored, CPU, kernel=Kernel("int4-cpu", torch.float32))
        err, scale = _matmul_error(exact, ref)
        assert err <= 2e-5 * scale, (qtype, err, scale)
        # bf16 activations round the scales and zeros to bf16 too: ~0.5% of the output range.
        fast = QuantLinear(stored, CPU)
        assert fast.kernel == Kernel("int4-cpu", torch.bfloat16)
        err, scale = _matmul_error(fast, ref)
        assert err <= 1.5e-2 * scale, (qtype, err, scale)


def test_scales_must_be_contiguous_for_the_kernel():
    """Why QuantLinear makes [K/g, N, 2] contiguous: the kernel reads a transposed view as garbage."""
    src = synthetic(T.Q4_1, 64, 256)
    stored = quant.int4_state(src.int4_groups())  # type: ignore[arg-type]
    lin = QuantLinear(stored, CPU, kernel=Kernel("int4-cpu", torch.float32))
    x = torch.randn(2, 256)
    strided = torch.stack([stored["scale"], stored["zero"]], -1).transpose(0, 1)
    assert not strided.is_contiguous()
    bad = torch.ops.aten._weight_int4pack_mm_for_cpu(x, lin.qweight, 32, strided)
    assert not torch.allclose(bad, lin(x), atol=1e-3)


# ---- requantized formats: the error they cost ---------------------------------------------------


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_0, T.Q5_K, T.Q6_K])
def test_wider_blocks_requantize_with_bounded_error(qtype, gguf_tensors):
    src = real(gguf_tensors, "token_embd.weight") if qtype == T.Q8_0 else synthetic(qtype, 128, 512)
    w = src.dense()
    if qtype == T.Q8_0:
        w = w[:4096]  # the embedding table, its first 4k rows
    assert src.int4_groups() is None  # no exact int4 mapping: these are requantized

    int8 = quant.convert(w, "int8")
    d8 = quant.dequantize_state(int8)
    # symmetric per-row int8: every value within half a step of its row's scale
    assert ((d8 - w).abs() <= int8["scale"][:, None] / 2 + 1e-7).all()
    int4 = quant.convert(w, "int4")
    d4 = quant.dequantize_state(int4)
    # min/max groups of 32: within half a step (range / 15 / 2) of the group's own range
    assert ((d4 - w).abs().view(w.shape[0], -1, 32) <= int4["scale"][..., None] / 2 + 1e-6).all()

    rel8 = ((d8 - w).norm() / w.norm()).item()
    rel4 = ((d4 - w).norm() / w.norm()).item()
    print(f"{qtype.name}: relative weight error int8/channel {rel8:.4f}, int4/g32 {rel4:.4f}")
    assert rel8 < rel4  # int8 keeps more of a 5-8 bit tensor than int4 does

    lin = QuantLinear(int8, CPU, kernel=Kernel("int8-cpu", torch.float32))
    err, scale = _matmul_error(lin, d8)
    assert err <= 2e-5 * scale


# ---- kernels per device ---------------------------------------------------------------------------


def test_cuda_dispatch_and_tinygemm_packing_decisions():
    cuda = torch.device("cuda")
    # SmolLM2's linears on an H100: tinygemm, k-tiles as large as K allows
    assert quant.choose_kernel("int4", cuda, 960, 576, cuda_capability=(9, 0)) == Kernel("int4-tinygemm", torch.bfloat16, 4)
    assert quant.choose_kernel("int4", cuda, 576, 1536, cuda_capability=(8, 0)) == Kernel("int4-tinygemm", torch.bfloat16, 8)
    assert quant.choose_kernel("int8", cuda, 576, 576, cuda_capability=(9, 0)).name == "int8-dequant"
    assert quant.choose_kernel("bf16", cuda, 576, 576) == Kernel("dense", torch.bfloat16)
    with pytest.raises(ModelError, match="bf16"):  # pre-Ampere has no tinygemm
        quant.choose_kernel("int4", cuda, 960, 576, cuda_capability=(7, 5))
    with pytest.raises(ModelError):  # N not a multiple of 8
        quant.choose_kernel("int4", cuda, 100, 576, cuda_capability=(9, 0))
    assert quant.tinygemm_inner_k_tiles(1536, 1536, 32) == 8
    assert quant.tinygemm_inner_k_tiles(8, 96, 32) == 2
    assert quant.tinygemm_inner_k_tiles(8, 576, 48) is None
    # auto on CUDA runs dense bf16 whatever the GGUF holds
    assert weights.linear_format("auto", [synthetic(T.Q4_1, 8, 32)], cuda) == "bf16"

    # tinygemm's input layout: even column in the high nibble (ours keeps it low)
    stored = quant.int4_state(synthetic(T.Q4_0, 8, 64).int4_groups())  # type: ignore[arg-type]
    codes = quant.unpack_int4(stored)
    tg = quant.tinygemm_layout(stored).to(torch.int32)
    assert torch.equal(tg >> 4, codes[:, 0::2]) and torch.equal(tg & 15, codes[:, 1::2])


def test_cpu_dispatch():
    # bf16 activations on every CPU: with float32 ones the int kernels are 10-100x slower.
    assert quant.choose_kernel("int4", CPU, 960, 576) == Kernel("int4-cpu", torch.bfloat16)
    assert quant.choose_kernel("int8", CPU, 960, 576) == Kernel("int8-cpu", torch.bfloat16)
    assert quant.choose_kernel("float32", CPU, 960, 576) == Kernel("dense", torch.float32)


def test_dense_prefill_is_bf16_only_where_the_cpu_has_native_bf16():
    """oneDNN's own probe says yes on plain AVX-512, where bf16 is emulated and a prefill-sized
    matmul is 4x slower than float32: the dense path must follow the CPU's flags instead."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(cpuinfo.read_text().split())
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    quant.cpu_bf16_supported.cache_clear()
    assert quant.cpu_bf16_supported() == native
    assert quant.dense_dtype() == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_large_batches_run_dense_on_the_dequantized_weight(fmt, monkeypatch):
    """From DENSE_ROWS rows on, a CPU int linear runs F.linear on its dequantized weight (the int
    kernels lose to a dense matmul at prefill sizes); both paths compute the same product."""
    src = synthetic(T.Q4_K, 96, 512)
    stored = quant.convert(src.dense(), fmt, src.int4_groups() if fmt == "int4" else None)
    lin = QuantLinear(stored, CPU)
    # The dense path uses the values the int kernel uses (its bf16 scales): the dequantized
    # weight matches the stored one to bf16 rounding of the scales.
    ref = quant.dequantize_state(stored)
    w = lin.dequantized(torch.float32)
    assert (w - ref).abs().max() <= 8e-3 * ref.abs().max()
    rows = torch.randn(quant.DENSE_ROWS, 512)
    dense = lin(rows)  # the dense path
    per_row = torch.cat([lin(rows[i : i + 8]) for i in range(0, len(rows), 8)])  # the int kernel
    exact = rows @ w.T
    assert (dense - exact).abs().max() <= 1e-2 * exact.abs().max()  # float32 here, bf16 on bf16 CPUs
    assert (per_row - exact).abs().max() <= 2e-2 * exact.abs().max()
    # Row blocks of the weight (96 rows in blocks of 16, or of 40 with a shorter last one) and the
    # whole weight at once give the same product, in float32 to float32 rounding.
    for block, n_rows in ((16 * 512, quant.DENSE_ROWS), (40 * 512, quant.DENSE_ROWS), (16 * 512, quant.BLOCKED_ROWS_MAX)):
        monkeypatch.setattr(quant, "DEQUANT_BLOCK", block)
        x = torch.randn(n_rows, 512)
        assert torch.allclose(lin.dense_matmul(x, torch.float32), x @ w.T, rtol=1e-4, atol=1e-4)
    assert torch.equal(lin.dequantized(torch.float32, 10, 40), w[10:40])


# ---- the model on packed weights (a tiny synthetic model with a Q4_K_M-like mix) -----------------


TINY = ModelConfig(
    architecture="LlamaForCausalLM", vocab_size=64, hidden_size=256, intermediate_size=512, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
    max_position_embeddings=128, tie_word_embeddings=True, attention_bias=False, sliding_window=None,
)


def tiny_sources() -> dict[str, SourceTensor]:
    h, f = TINY.hidden_size, TINY.intermediate_size
    rng = np.random.default_rng(7)  # the same model whatever ran before

    def synthetic(qtype: GGMLQuantizationType, rows: int, cols: int) -> SourceTensor:
        return globals()["synthetic"](qtype, rows, cols, rng)

    src = {"model.embed_tokens.weight": synthetic(T.Q8_0, TINY.vocab_size, h),
           "model.norm.weight": SourceTensor(None, 1, h, tensor=torch.ones(h))}
    for i in range(TINY.num_layers):
        p = f"model.layers.{i}."
        src |= {
            p + "self_attn.q_proj.weight": synthetic(T.Q4_K, 256, h),
            p + "self_attn.k_proj.weight": synthetic(T.Q4_K, 128, h),
            p + "self_attn.v_proj.weight": synthetic(T.Q6_K, 128, h),  # as in Q4_K_M files
            p + "self_attn.o_proj.weight": synthetic(T.Q4_K, h, 256),
            p + "mlp.gate_proj.weight": synthetic(T.Q4_K, f, h),
            p + "mlp.up_proj.weight": synthetic(T.Q4_K, f, h),
            p + "mlp.down_proj.weight": synthetic(T.Q6_K, h, f),
            p + "input_layernorm.weight": SourceTensor(None, 1, h, tensor=torch.ones(h)),
            p + "post_attention_layernorm.weight": SourceTensor(None, 1, h, tensor=torch.ones(h)),
        }
    return src


def test_fused_linear_format_is_chosen_per_fused_linear():
    src = tiny_sources()
    state = weights.build_state(src, TINY, "auto", CPU)
    fmt = {k.rsplit(".", 1)[0]: quant.stored_format({k.rsplit(".", 1)[1]: v})
           for k, v in state.items() if k.endswith((".qweight", ".weight")) and "norm" not in k}
    # Q4_K+Q4_K+Q6_K q/k/v -> int8 (no member loses bits to int4); all-Q4_K -> exact int4
    assert fmt["layers.0.qkv"] == "int8" and fmt["layers.0.down"] == "int8" and fmt["embed"] == "int8"
    assert "layers.0.o.zero" in state and "layers.0.gate_up.zero" in state

    # --weights int4 forces int4 everywhere: the Q4_K members keep their exact codes, Q6_K is requantized
    forced = weights.build_state(src, TINY, "int4", CPU)
    codes = quant.unpack_int4({"qweight": forced["layers.0.qkv.qweight"]})
    q_groups = src["model.layers.0.self_attn.q_proj.weight"].int4_groups()
    assert q_groups is not None and torch.equal(codes[:256], torch.from_numpy(q_groups.codes).to(torch.int32))
    assert forced["embed.qweight"].dtype == torch.int8  # tables are int8 at most


def _tiny_logits(state: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    from ragloom.generation.runner.kv import KVCache

    model = LlamaModel(TINY, 128, CPU, torch.float32)
    model.load_state(state)
    kv = KVCache(TINY.num_layers, 8, 16, TINY.num_kv_heads, TINY.head_dim, torch.float32, CPU)
    blocks: list[int] = []
    kv.reserve(blocks, len(ids))
    batch = ForwardBatch.build([ids], [0], [blocks], kv, [len(ids)])
    with torch.inference_mode():
        return model(batch, kv)


def test_mixed_model_forward_tracks_float32():
    src = tiny_sources()
    ids = [1, 5, 9, 33, 2, 60, 7, 7, 3]
    ref = _tiny_logits(weights.build_state(src, TINY, "float32", CPU), ids)
    rel = {}
    for fmt in ("auto", "int8", "int4", "bf16"):
        out = _tiny_logits(weights.build_state(src, TINY, fmt, CPU), ids)
        rel[fmt] = ((out - ref).norm() / ref.norm()).item()
        print(f"tiny Q4_K/Q6_K/Q8_0 model, {fmt}: relative logit error {rel[fmt]:.4f}")
    assert rel["auto"] < 0.05 and rel["int8"] < 0.05 and rel["bf16"] < 0.05
    # Forcing the Q6_K members into int4 costs several times more: why auto makes those linears int8.
    assert rel["int4"] > 3 * rel["auto"]


def test_float_checkpoint_requantizes_on_request():
    """An HF folder (float safetensors) stays dense under auto and is requantized under int8/int4."""
    hf = {k: v.dense() for k, v in tiny_sources().items()}
    for requested, expected in ((None, "float32"), ("int8", "int8"), ("int4", "int4")):
        model = LlamaModel(TINY, 128, CPU, torch.float32)
        model.load_hf_state(hf, requested)
        assert model.decoder_layers[0].qkv.format == expected
        assert model.head.format == ("int8" if expected == "int4" else expected)


# ---- the bundled model: int4 against its float32 dequantized weights -----------------------------


@pytest.fixture(scope="module")
def int4_engine():
    return engine_module.LLMEngine(EngineSettings(device="cpu", weights="int4", kv_cache_tokens=2048, max_num_seqs=4))


def test_weights_setting_reaches_the_linears(int4_engine):
    formats = int4_engine.model.weight_formats
    kernel = "int4-cpu"
    assert all(formats[f"layers.{i}.{n}"] == f"int4 via {kernel}"
               for i in range(int4_engine.config.num_layers) for n in ("qkv", "o", "gate_up", "down"))
    assert formats["head"] == "int8 via int8-cpu"  # the tied Q8_0 table: int8 per row


def test_setting_from_env_and_bad_value(monkeypatch):
    monkeypatch.setenv("RAGLOOM_WEIGHTS", "int8")
    assert EngineSettings().weights == "int8"
    assert load_settings().weights == "int8"
    with pytest.raises(InvalidArgument, match="weights"):
        load_settings(weights="int3")


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at", "Paris, London, Berlin,"]


def test_int4_model_matches_float32_greedy_and_logits(int4_engine, engine):
    assert engine.settings.weights == "float32"  # conftest's reference engine
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    ours = [c.token_ids for c in int4_engine.generate(PROMPTS, params)]
    ref = [c.token_ids for c in engine.generate(PROMPTS, params)]
    # Greedy outputs agree until a near-tie: bf16 activations may flip a choice whose float32
    # logits are within a fraction of a logit (vLLM's check_logprobs_close, by margin).
    for prompt, a, b in zip(PROMPTS, ours, ref):
        split = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if split is not None:
            logits = prefill_logits(engine, engine.encode(prompt=prompt) + b[:split])[-1]
            margin = (logits[b[split]] - logits[a[split]]).item()
            print(f"{prompt!r}: int4 leaves float32's greedy path at token {split}, margin {margin:.3f}")
            assert margin < 0.5, (prompt, split, margin)
    assert sum(a == b for a, b in zip(ours, ref)) >= len(PROMPTS) - 1
    worst = 0.0
    for p in PROMPTS:
        ids = engine.encode(prompt=p)
        a, b = prefill_logits(int4_engine, ids), prefill_logits(engine, ids)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
        worst = max(worst, (a - b).abs().max().item())
    print(f"int4 vs float32 max abs logit diff: {worst:.3f}")
    assert worst < 1.5  # measured ~0.9 (bf16 activations and scales; logits span ~30)


def test_packed_cache_round_trip(int4_engine, monkeypatch):
    folder = int4_engine.settings.data_dir / "models" / int4_engine.model_id / "packed"
    manifest = json.loads((folder / "weights-int4-cpu.safetensors.manifest.json").read_text())
    assert manifest["version"] == weights.PACK_VERSION

    def no_conversion(*args, **kwargs):
        raise AssertionError("the packed cache should have been used")

    monkeypatch.setattr(engine_module, "build_state", no_conversion)
    again = engine_module.LLMEngine(EngineSettings(device="cpu", weights="int4", kv_cache_tokens=256, max_num_seqs=2))
    assert again.model.weight_formats == int4_engine.model.weight_formats
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    assert again.generate(PROMPTS[:1], params)[0].token_ids == int4_engine.generate(PROMPTS[:1], params)[0].token_ids


def test_cached_artifact_detects_interrupted_and_stale_builds(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"gguf")
    builds: list[str] = []

    def build(path):
        builds.append(path.name)
        path.write_bytes(b"packed")

    out = cached_artifact(tmp_path / "c", "w.bin", source, "1", build)
    assert out.read_bytes() == b"packed" and len(builds) == 1
    cached_artifact(tmp_path / "c", "w.bin", source, "1", build)
    assert len(builds) == 1  # reused
    (tmp_path / "c" / "w.bin.manifest.json").unlink()  # as if interrupted before the manifest
    cached_artifact(tmp_path / "c", "w.bin", source, "1", build)
    assert len(builds) == 2
    cached_artifact(tmp_path / "c", "w.bin", source, "2", build)  # another pack version
    assert len(builds) == 3

    def fail(path):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    (tmp_path / "c" / "w.bin.manifest.json").unlink()
    with pytest.raises(KeyboardInterrupt):
        cached_artifact(tmp_path / "c", "w.bin", source, "1", fail)
    assert not (tmp_path / "c" / "w.bin.manifest.json").exists()
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["w.bin"]  # no temp file left behind


def test_cli_weights_flag(capsys, monkeypatch):
    from ragloom import cli

    for command in (["serve"], ["generate", "--local", "hi"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--weights", "int3"])
        assert exit_info.value.code == 2
        assert "invalid choice: 'int3'" in capsys.readouterr().err
    # a valid value reaches the settings the command builds
    seen = {}
    monkeypatch.setattr("ragloom.services.server.serve", lambda settings, *a, **k: seen.setdefault("w", settings.weights))
    cli.main(["serve", "--weights", "int8", "--port", "0"])
    assert seen["w"] == "int8"


def test_unaligned_weights_are_realigned():
    """safetensors can hand out tensors at any address; the int8 kernel segfaults on those."""
    raw = torch.zeros(64 * 1536 + 8, dtype=torch.int8)
    w = raw[8:].view(64, 1536)  # 8 bytes past an aligned allocation
    w.copy_(torch.randint(-127, 128, (64, 1536), dtype=torch.int8))
    assert w.data_ptr() % 64 != 0
    lin = QuantLinear({"qweight": w, "scale": torch.rand(64)}, CPU)
    assert lin.qweight is not None and lin.qweight.data_ptr() % 64 == 0
    assert torch.equal(lin.qweight, w)
    assert quant.aligned(lin.qweight) is lin.qweight  # aligned tensors are not copied
