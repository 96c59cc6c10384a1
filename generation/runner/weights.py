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

import torch
from safetensors import safe_open

from ragloom.errors import ModelError
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
