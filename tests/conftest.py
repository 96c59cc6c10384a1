"""Shared fixtures. The bundled model is converted once into the user's ragloom cache
(~/.cache/ragloom or $RAGLOOM_DATA_DIR) and reused by every test session after that."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def engine():
    from ragloom.config import EngineSettings
    from ragloom.generation.runner.engine import LLMEngine

    return LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=8192, max_num_seqs=16))


@pytest.fixture(scope="session")
def hf_model(engine):
    """transformers' own implementation on the same converted weights: the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragloom.models import resolve_model

    folder = resolve_model(engine.settings.model, engine.settings.data_dir)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
