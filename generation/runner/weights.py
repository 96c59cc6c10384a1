"""Model configuration and weights for Llama-family checkpoints (Llama, Qwen2, Mistral).

The three share one decoder shape; they differ in biases (Qwen2 has q/k/v biases), sliding
windows (Mistral, some Qwen2) and RoPE scaling. Everything the forward pass needs is read here
once, so model.py never looks at a raw HF config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ragloom.errors import ModelError
from ragloom.generation.runner import quant
from ragloom.models import ARCHITECTURE_BY_MODEL_TYPE


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    sliding_window: int | None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    bos_token_id: int | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> ModelConfig:
        raw = json.loads((folder / "config.json").read_text())
        gen_file = folder / "generation_config.json"
        gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
        return cls.from_dict(raw, gen)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelConfig:
        arch = (raw.get("architectures") or [ARCHITECTURE_BY_MODEL_TYPE.get(raw.get("model_type", ""), "?")])[0]
        if raw.get("hidden_act", "silu") != "silu":
            raise ModelError(f"activation {raw['hidden_act']!r} is not supported (only silu/SwiGLU)")
        # transformers >= 5 nests RoPE settings in rope_parameters; older configs keep them flat.
        rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling = None if rope_type in (None, "default") else {**rope, "rope_type": rope_type}
        eos: list[int] = []
        for source in (raw, generation or {}):
            value = source.get("eos_token_id")
            eos += value if isinstance(value, list) else [] if value is None else [value]
        heads = raw["num_attention_heads"]
        use_window = raw.get("use_sliding_window", True)  # Qwen2 has the key; Mistral doesn't
        return cls(
            architecture=arch,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", arch == "Qwen2ForCausalLM")),
            sliding_window=raw.get("sliding_window") if use_window else None,
            eos_token_ids=tuple(dict.fromkeys(eos)),
            bos_token_id=raw.get("bos_token_id"),
        )


def load_state_dict(folder: Path, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint, cast to dtype on device."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} has no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                state[name] = f.get_tensor(name).to(device=device, dtype=dtype)
    return state


# ---- weights in the runner's own layout and formats ----------------------------------------------
#
# The model's parameters under the runner's names (model.py), fused as it runs them:
#   embed, lm_head (untied only), norm, layers.{i}.{qkv,o,gate_up,down} (each a stored weight, see
#   quant.py; qkv may have .bias), layers.{i}.{input_norm,post_norm}.
# A stored weight is a few tensors named "<prefix>.<part>" (weight | qweight, scale, zero).


# Bump when build_state's output changes: packed caches of another version are rebuilt.
PACK_VERSION = "2"


@dataclass
class SourceTensor:
    """One checkpoint tensor: float (safetensors, GGUF F32/F16) or GGUF blocks kept raw."""

    ggml_type: int | None  # None: a float tensor
    rows: int
    cols: int
    raw: np.ndarray | None = None  # GGUF bytes [rows, bytes per row]
    tensor: torch.Tensor | None = None  # float tensors

    def dense(self) -> torch.Tensor:
        """The float32 values (GGUF blocks dequantized by the gguf package's reference code)."""
        if self.tensor is not None:
            return self.tensor.float()
        from gguf import GGMLQuantizationType, quants

        assert self.raw is not None and self.ggml_type is not None
        values = quants.dequantize(self.raw, GGMLQuantizationType(self.ggml_type))
        return torch.from_numpy(values).float().reshape(self.rows, self.cols)

    def int4_groups(self) -> quant.Int4Groups | None:
        if self.ggml_type not in quant.EXACT_INT4_TYPES or self.raw is None:
            return None
        return quant.gguf_int4_groups(self.raw, self.ggml_type, self.cols)


_GGUF_LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)  # model.layers.{i}.<module>.<weight|bias>
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_LAYER[module]}.{kind}"


def _unpermute_rows(rows: int, heads: int) -> np.ndarray:
    # llama.cpp's converter interleaves the two RoPE halves of each Llama q/k head; transformers
    # (and so our float32 cache) undo it. The permutation moves whole rows, and GGUF blocks lie
    # within a row, so it applies to the raw blocks as well: quantized data stays untouched.
    dim = rows // heads // 2
    return np.arange(rows).reshape(heads, dim, 2).swapaxes(2, 1).reshape(rows)


def hf_names(cfg: ModelConfig) -> list[str]:
    """The HF names of every tensor the runner takes from a checkpoint of this shape."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_layers):
        names += [f"model.layers.{i}.{module}.weight" for module in _GGUF_LAYER]
        if cfg.attention_bias:
            names += [f"model.layers.{i}.self_attn.{n}_proj.bias" for n in "qkv"]
    return names


def gguf_tensors(path: Path, cfg: ModelConfig) -> dict[str, SourceTensor]:
    """A GGUF's tensors under HF names, quantized blocks kept raw (q/k rows un-permuted for Llama)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())
    by_name = {t.name: t for t in reader.tensors}
    out: dict[str, SourceTensor] = {}
    for hf in hf_names(cfg):
        t = by_name.get(_gguf_name(hf))
        if t is None:
            raise ModelError(f"{path.name} has no tensor {_gguf_name(hf)} (for {hf})")
        shape = [int(s) for s in t.shape]  # GGUF lists the fastest dimension first
        rows, cols = (shape[1] if len(shape) > 1 else 1), shape[0]
        data = np.asarray(t.data).reshape(rows, -1)
        heads = {"self_attn.q_proj": cfg.num_heads, "self_attn.k_proj": cfg.num_kv_heads}.get(hf.split(".", 3)[-1].rsplit(".", 1)[0])
        if arch == "llama" and heads is not None and hf.endswith(".weight"):
            data = data[_unpermute_rows(rows, heads)]
        if int(t.tensor_type) in (0, 1):  # F32, F16
            tensor = torch.from_numpy(np.array(data, dtype=np.float32))  # a copy: the GGUF is mapped read-only
            out[hf] = SourceTensor(None, rows, cols, tensor=tensor.reshape(-1) if len(shape) == 1 else tensor)
        else:
            out[hf] = SourceTensor(int(t.tensor_type), rows, cols, raw=np.ascontiguousarray(data))
    return out


def float_tensors(state: dict[str, torch.Tensor]) -> dict[str, SourceTensor]:
    return {k: SourceTensor(None, v.shape[0], v.shape[-1], tensor=v) for k, v in state.items()}


def linear_format(requested: str, sources: list[SourceTensor], device: torch.device) -> quant.Format:
    """The one format of a (fused) linear. `auto`: CUDA runs bf16 (a small model there is bound by
    kernel launches, not weight bytes); on CPU GGUF blocks stay quantized: int4 when every member
    is a 4-bit block type (exact), int8 when any member has more bits (Q5/Q6/Q8: a Q4_K_M file's
    Q6_K v or down projections) so that no member loses precision to int4; float checkpoints stay
    float32."""
    if requested != "auto":
        return quant.parse_format(requested)
    if device.type == "cuda":
        return "bf16"
    if any(s.ggml_type is None for s in sources):
        return "float32"
    return "int4" if all(s.ggml_type in quant.EXACT_INT4_TYPES for s in sources) else "int8"


def table_format(requested: str, source: SourceTensor, device: torch.device) -> quant.Format:
    """Embedding / LM-head table: no int4 (int8 is as fast for the head and keeps 8 bits)."""
    fmt = linear_format(requested, [source], device)
    return "int8" if fmt == "int4" else fmt


def _stored(prefix: str, fmt: quant.Format, members: list[SourceTensor]) -> dict[str, torch.Tensor]:
    groups = [m.int4_groups() for m in members] if fmt == "int4" else []
    if groups and all(g is not None for g in groups):  # exact: GGUF 4-bit blocks used as they are
        gs = [g for g in groups if g is not None]
        fused = quant.Int4Groups(*(np.concatenate([getattr(g, f) for g in gs]) for f in ("codes", "scale", "zero")))
        parts = quant.convert(None, fmt, fused)
    elif fmt == "int4":  # each member on its own: exact where it can be, requantized where not
        each = [quant.convert(m.dense() if g is None else None, fmt, g) for m, g in zip(members, groups)]
        parts = {k: torch.cat([e[k] for e in each]) for k in each[0]}
    else:
        parts = quant.convert(torch.cat([m.dense() for m in members]), fmt)
    return {f"{prefix}.{k}": v for k, v in parts.items()}


def build_state(sources: dict[str, SourceTensor], cfg: ModelConfig, requested: str,
                device: torch.device) -> dict[str, torch.Tensor]:
    """The runner's parameters (names above) in the formats `requested` resolves to."""
    def take(name: str) -> SourceTensor:
        try:
            return sources[name]
        except KeyError:
            raise ModelError(f"checkpoint is missing {name}") from None

    embed = take("model.embed_tokens.weight")
    state = _stored("embed", table_format(requested, embed, device), [embed])
    state["norm"] = take("model.norm.weight").dense()
    if not cfg.tie_word_embeddings:
        head = take("lm_head.weight")
        state.update(_stored("lm_head", table_format(requested, head, device), [head]))
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        fused = {
            "qkv": [p + f"self_attn.{n}_proj.weight" for n in "qkv"],
            "o": [p + "self_attn.o_proj.weight"],
            "gate_up": [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
            "down": [p + "mlp.down_proj.weight"],
        }
        for name, members in fused.items():
            srcs = [take(m) for m in members]
            state.update(_stored(f"layers.{i}.{name}", linear_format(requested, srcs, device), srcs))
        if cfg.attention_bias:
            state[f"layers.{i}.qkv.bias"] = torch.cat([take(p + f"self_attn.{n}_proj.bias").dense() for n in "qkv"])
        state[f"layers.{i}.input_norm"] = take(p + "input_layernorm.weight").dense()
        state[f"layers.{i}.post_norm"] = take(p + "post_attention_layernorm.weight").dense()
    return state


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "ragloom"})


def load_state(path: Path) -> dict[str, torch.Tensor]:
    # aligned here, once, so that a tied head and the embedding keep sharing one table
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {name: quant.aligned(f.get_tensor(name)) for name in f.keys()}
