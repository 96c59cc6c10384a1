"""The packaged Qwen2.5-Coder models end to end (slow: `make test-all`, after `make models`).

Per model (0.5B first, then 1.5B, one loaded at a time): the converted config carries the Qwen2
specifics (q/k/v biases, RoPE theta 1e6, untied head, 151,936-token vocabulary, ChatML); the
runner's greedy tokens equal transformers' greedy tokens on the same converted HF folder; a chat
answer is sane; a JSON-Schema-constrained answer is valid JSON. The regex and SQL constraints
compile for the Qwen vocabulary too (times printed, not asserted: shared machines).
"""

from __future__ import annotations

import gc
import json
import time
from typing import Any

import jsonschema
import pytest
import torch
from conftest import in_ci

from ragloom.config import EngineSettings, default_data_dir
from ragloom.generation.runner.engine import LLMEngine
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.weights import ModelConfig
from ragloom.model_packages import PACKAGED_MODELS, is_assembled, missing_parts
from ragloom.models import resolve_model

pytestmark = pytest.mark.slow

MODELS = ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
PROMPTS: list[Any] = [
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    "def quicksort(arr):\n",
]
NEW_TOKENS = 12
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


def _settings(name: str) -> EngineSettings:
    kw: dict[str, Any] = {}
    # Compared with transformers' float32 reference: pin float32 weights where the setting exists
    # (issue 15 adds it; its `auto` may pick int4, whose tokens are allowed to differ).
    if "weights" in EngineSettings.model_fields:
        kw["weights"] = "float32"
    return EngineSettings(model=name, device="cpu", dtype="float32", kv_cache_tokens=4096, max_num_seqs=4, **kw)


@pytest.fixture(scope="module", params=MODELS)
def name(request: pytest.FixtureRequest) -> str:
    model = PACKAGED_MODELS[request.param]
    data_dir = default_data_dir()
    if not is_assembled(model, data_dir) and missing_parts(model):
        reason = f"{request.param} is not installed: run `ragloom models install {request.param}` (or `make models`)"
        if in_ci():
            pytest.fail(f"{reason}; CI=true, so a missing model is an error", pytrace=False)
        pytest.skip(reason)
    return str(request.param)


@pytest.fixture(scope="module")
def folder(name: str):
    return resolve_model(name, default_data_dir())  # assembles and converts on first use


@pytest.fixture(scope="module")
def reference(name: str, folder) -> list[list[int]]:
    """transformers' greedy tokens on the converted folder, computed before the runner loads
    (and freed after) so that the 1.5B's two float32 copies never sit in memory together."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for p in PROMPTS:
        if isinstance(p, str):
            ids = tok.encode(p)
        else:
            ids = list(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        # Plain argmax over transformers' logits, past EOS like the runner's ignore_eos: generate()'s
        # min_new_tokens would instead forbid EOS and pick the runner-up after "Paris."
        new: list[int] = []
        with torch.inference_mode():
            for _ in range(NEW_TOKENS):
                logits = hf(torch.tensor([ids + new])).logits[0, -1]
                new.append(int(logits.argmax()))
        out.append(new)
    del hf
    gc.collect()
    return out


@pytest.fixture(scope="module")
def engine(name: str, reference: list[list[int]]):
    llm = LLMEngine(_settings(name))
    yield llm
    del llm
    gc.collect()


def test_qwen2_config_and_chat_template(name: str, folder) -> None:
    cfg = ModelConfig.from_folder(folder)
    assert cfg.architecture == "Qwen2ForCausalLM"
    assert cfg.attention_bias and cfg.rope_theta == 1e6
    assert cfg.vocab_size == 151_936 and cfg.num_kv_heads == 2
    assert not cfg.tie_word_embeddings  # both GGUFs carry their own output.weight
    assert cfg.sliding_window is None  # use_sliding_window is false in Qwen2.5
    expect = {"qwen2.5-coder-0.5b": (24, 896, 14), "qwen2.5-coder-1.5b": (28, 1536, 12)}[name]
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == expect


def test_greedy_tokens_equal_transformers(engine: LLMEngine, reference: list[list[int]]) -> None:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    ids = [engine.encode(messages=p) if isinstance(p, list) else engine.encode(prompt=p) for p in PROMPTS]
    ours = engine.generate(ids, params)
    assert [c.token_ids for c in ours] == reference


def test_chatml_prompt_and_sane_answer(engine: LLMEngine) -> None:
    ids = engine.encode(messages=[{"role": "user", "content": "What is the capital of France? One word."}])
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nWhat is the capital of "
                                                                      "France? One word.<|im_end|>\n<|im_start|>assistant\n")
    assert engine.tokenizer.convert_tokens_to_ids("<|im_end|>") in engine.eos_ids
    [answer] = engine.generate([ids], SamplingParams(max_tokens=16, temperature=0.0))
    print(f"{engine.model_id}: {answer.text!r}")
    assert "Paris" in answer.text and answer.finish_reason == "stop"  # ended by <|im_end|>


def test_json_schema_constrained_answer_is_valid(engine: LLMEngine) -> None:
    started = time.perf_counter()
    constraint = engine.compile_constraint("json_schema", PERSON)
    compiled = time.perf_counter() - started
    ids = engine.encode(messages=[{"role": "user", "content": "Describe a software engineer as JSON."}])
    [answer] = engine.generate([ids], SamplingParams(max_tokens=96, temperature=0.0), constraint)
    print(f"{engine.model_id}: json_schema compile + first mask {compiled:.2f}s; {answer.text!r}")
    assert answer.finish_reason == "stop"
    jsonschema.validate(json.loads(answer.text), PERSON)


def test_regex_and_sql_constraints_compile_for_qwen_vocab(engine: LLMEngine) -> None:
    """Token-level walks through each constraint with Qwen's tokenizer: every token of a valid
    text is allowed by the mask, and EOS at its end."""
    tok = engine.tokenizer
    cases = [
        ("regex", r"[0-9]{3}-[0-9]{4}", "555-1234"),
        ("sql", {"tables": {"orders": ["id", "customer", "total"], "customers": ["id", "name"]}, "dialect": "sqlite"},
         "SELECT name, SUM(total) FROM orders JOIN customers ON orders.customer = customers.id GROUP BY name"),
        # not PERSON: compiled constraints are cached, and this one's time is to be measured
        ("json_schema", {**PERSON, "required": ["name"]}, '{"name": "Ada", "age": 36, "languages": ["Python", "C"]}'),
    ]
    timings = []
    for kind, spec, valid in cases:
        started = time.perf_counter()
        c = engine.compile_constraint(kind, spec)
        timings.append(f"{kind} {time.perf_counter() - started:.2f}s")
        assert c.masks.vocab.size == engine.vocab_size == 151_936
        m = c.matcher()
        started = time.perf_counter()
        for tid in tok.encode(valid, add_special_tokens=False):
            assert m.is_allowed(tid), (kind, tok.decode([tid]))
            assert m.accept_token(tid)
        assert m.can_end() and any(m.is_allowed(e) for e in engine.eos_ids), kind
        timings[-1] += f" (walk {time.perf_counter() - started:.2f}s)"
    print(f"{engine.model_id}: compile + first mask: " + ", ".join(timings))
