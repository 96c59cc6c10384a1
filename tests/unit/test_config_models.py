from __future__ import annotations

import json
import shutil

import pytest

from ragloom.config import load_settings
from ragloom.errors import InvalidArgument, ModelError, NotFound
from ragloom.models import BUNDLED_LLM, MANIFEST, _manifest_ok, bundled_gguf_path, list_models, resolve_model


def test_settings_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "ragloom.toml"
    cfg.write_text('port = 7000\nhost = "0.0.0.0"\nmax_num_seqs = 3\n')
    assert load_settings(cfg).port == 7000  # file over default
    monkeypatch.setenv("RAGLOOM_PORT", "7100")
    s = load_settings(cfg)
    assert s.port == 7100 and s.host == "0.0.0.0"  # env over file
    assert load_settings(cfg, port=7200, host=None).port == 7200  # flag over env; None = not given
    with pytest.raises(InvalidArgument, match="not found"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(InvalidArgument, match="port"):
        load_settings(port=-1)


def test_cached_model_is_complete_and_corruption_detected(engine, tmp_path):
    folder = resolve_model(BUNDLED_LLM, engine.settings.data_dir)
    gguf = bundled_gguf_path()
    assert _manifest_ok(folder, gguf)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        if f.is_dir():  # packed/: the runner's packed weights, covered by their own manifests
            continue
        if f.suffix == ".safetensors":
            (copy / f.name).symlink_to(f)  # 540 MB: link, don't copy
        else:
            shutil.copy(f, copy / f.name)
    assert _manifest_ok(copy, gguf)
    (copy / "tokenizer.json").write_text("{}")  # corrupt a small file
    assert not _manifest_ok(copy, gguf)
    (copy / MANIFEST).unlink()  # an interrupted conversion never wrote its manifest
    assert not _manifest_ok(copy, gguf)


def test_local_folder_errors(tmp_path):
    with pytest.raises(NotFound, match="neither a bundled model"):
        resolve_model(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path / "m"), tmp_path)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelError, match="not supported"):
        resolve_model(str(tmp_path / "m"), tmp_path)


def test_local_folder_loads_by_path(engine):
    """The converted cache is itself a plain HF folder: loading it by path is the local-model path."""
    from ragloom.config import EngineSettings
    from ragloom.generation.runner.engine import LLMEngine
    from ragloom.generation.runner.params import SamplingParams

    folder = resolve_model(BUNDLED_LLM, engine.settings.data_dir)
    local = LLMEngine(EngineSettings(model=str(folder), device="cpu", kv_cache_tokens=256))
    assert local.model_id == folder.name
    p = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    assert local.generate(["Hello there"], p)[0].token_ids == engine.generate(["Hello there"], p)[0].token_ids


def test_list_models(engine):
    names = {m.name: m for m in list_models(engine.settings.data_dir)}
    assert names[BUNDLED_LLM].cached and names["all-minilm-l6-v2"].path.is_dir()


def test_qwen2_and_mistral_configs_parse():
    from ragloom.generation.runner.weights import ModelConfig

    qwen = ModelConfig.from_dict({
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 1e6,
        "sliding_window": 4096, "use_sliding_window": False, "eos_token_id": [1, 2],
    })
    assert qwen.attention_bias and qwen.sliding_window is None and qwen.eos_token_ids == (1, 2)
    mistral = ModelConfig.from_dict({
        "architectures": ["MistralForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "sliding_window": 4096,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    })
    assert not mistral.attention_bias and mistral.sliding_window == 4096
    assert mistral.rope_scaling and mistral.rope_scaling["rope_type"] == "llama3"
