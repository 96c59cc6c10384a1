"""Shared fixtures. The bundled model is converted once into the user's ragloom cache
(~/.cache/ragloom or $RAGLOOM_DATA_DIR) and reused by every test session after that.

The evaluation data (../shared/data, see its README.md) lives beside the checkout, not in it: tests
that read it go through `shared_data()`, the one place that decides what a missing folder means."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
# A checkout that carries its own shared/ (the device machine) is looked at first, then ../shared.
SHARED_DATA = next(
    (p for p in (_REPO / "shared" / "data", _REPO.parent / "shared" / "data") if p.is_dir()),
    _REPO.parent / "shared" / "data",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def shared_data(subpath: str) -> Path:
    """The path of `subpath` under the shared evaluation data, which must exist.

    Missing data fails the test in CI (CI=true), where a silent skip would hide a broken setup,
    and skips it elsewhere (a clone outside the usual workspace), saying what is missing and why."""
    path = SHARED_DATA / subpath
    if not path.exists():
        reason = (f"evaluation data {subpath!r} not found at {path}: these tests read ../shared/data "
                  "beside the checkout (see that folder's README.md)")
        if in_ci():
            pytest.fail(f"{reason}; CI=true, so missing data is an error", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def engine():
    from ragloom.config import EngineSettings
    from ragloom.generation.runner.engine import LLMEngine

    # float32 weights: the reference the runner tests compare with transformers (auto may pack int4)
    return LLMEngine(EngineSettings(device="cpu", weights="float32", kv_cache_tokens=8192, max_num_seqs=16))


@pytest.fixture(scope="session")
def hf_model(engine):
    """transformers' own implementation on the same converted weights: the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragloom.models import resolve_model

    folder = resolve_model(engine.settings.model, engine.settings.data_dir)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def prefill_logits(engine, ids: list[int]):
    """The engine's model run over one prompt from position 0: logits for every position. The KV
    blocks it uses are released again, so the engine's cache is as before."""
    import torch

    from ragloom.generation.runner.batch import ForwardBatch

    blocks: list[int] = []
    engine.kv.reserve(blocks, len(ids))
    try:
        batch = ForwardBatch.build([ids], [0], [blocks], engine.kv, [len(ids)])
        with torch.inference_mode():
            return engine.model(batch, engine.kv)
    finally:
        engine.kv.release(blocks)
