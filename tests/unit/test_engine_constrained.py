"""Constrained decoding in the engine, on the bundled model: offline generate() with a different
constraint per prompt in one batch, jump-forward on and off, matcher rollback, EOS placement.

Outputs are judged by independent checkers (lark's own parser, `re.fullmatch`, the `jsonschema`
package), not by the constraint engine itself.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema
import lark
import numpy as np
import pytest
import torch

from ragloom.generation.constrain.masks import unpack
from ragloom.generation.constrain.processor import Constraint
from ragloom.generation.runner.engine import LLMEngine, Request
from ragloom.generation.runner.params import SamplingParams

# forces `{"answer": "` and `"}` around a short free word: jump-forward has text to append
ANSWER_GRAMMAR = r"""
start: "{\"answer\": \"" WORD "\"}"
WORD: /[a-z]{1,12}/
"""
NUMBERS_GRAMMAR = r"""
start: NUMBER (", " NUMBER)~0..4
NUMBER: /[1-9][0-9]{0,2}/
"""
DATE_REGEX = r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
COLOURS = ["red", "green", "blue", "yellow"]
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0)


def _lark_accepts(grammar: str, text: str) -> bool:
    try:
        lark.Lark(grammar, parser="lalr").parse(text)
    except lark.exceptions.LarkError:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Decode with one intra-op thread in this module, then restore the setting.

    On a small shared CPU box (2 cores, other test runs competing) two OpenMP threads made each
    decode step about 10x slower than one (4.6 s vs 0.46 s for 6 sequences); these tests check
    outputs, not speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def jump_forward(engine: LLMEngine) -> Iterator[None]:
    """Leave the shared engine's jump_forward setting as it was found."""
    before = engine.settings.jump_forward
    yield
    engine.settings.jump_forward = before


def test_offline_batch_with_a_different_constraint_per_prompt(engine: LLMEngine) -> None:
    specs: list[tuple[str, Any]] = [
        ("lark_grammar", ANSWER_GRAMMAR),
        ("lark_grammar", NUMBERS_GRAMMAR),
        ("regex", DATE_REGEX),
        ("choices", COLOURS),
        ("json_schema", PERSON_SCHEMA),
    ]
    constraints: list[Constraint | None] = [engine.compile_constraint(k, s) for k, s in specs]
    constraints.append(None)  # an unconstrained neighbour in the same batch
    prompts = [
        "Is the sky blue? Answer in JSON:",
        "Count from one:",
        "The date of the moon landing is",
        "The colour of grass is",
        "Alice is 31 years old. As JSON:",
        "The capital of France is",
    ]
    # each stops well within its budget; the JSON one may trail whitespace until max_tokens
    budgets = [16, 20, 16, 8, 24, 8]
    outs = engine.generate(prompts, [_greedy(n) for n in budgets], constraints)
    for (kind, spec), out in zip(specs, outs, strict=False):
        if kind == "json_schema":
            # the value may be followed by whitespace (bounded) until max_tokens: it must be whole
            jsonschema.validate(json.loads(out.text), spec)
            continue
        assert out.finish_reason == "stop", (kind, out.text, out.finish_reason)
        if kind == "lark_grammar":
            assert _lark_accepts(spec, out.text), (kind, out.text)
        elif kind == "regex":
            assert re.fullmatch(spec, out.text), out.text
        else:
            assert out.text in spec
    assert "Paris" in outs[-1].text  # the unconstrained neighbour was not masked by the others


def _run_counting_steps(
    engine: LLMEngine, prompt: str, constraint: Constraint, max_tokens: int
) -> tuple[str, list[int], int]:
    """Generate one request alone; returns (text, token ids, engine steps it took)."""
    rid = uuid.uuid4().hex
    engine.add_request(Request(rid, engine.encode(prompt=prompt), _greedy(max_tokens), constraint=constraint))
    texts: list[str] = []
    ids: list[int] = []
    steps = 0
    while engine.has_unfinished():
        steps += 1
        for out in engine.step():
            if out.request_id == rid:
                texts.append(out.text)
                ids.extend(out.token_ids)
    return "".join(texts), ids, steps


def test_jump_forward_on_and_off_both_valid(engine: LLMEngine, jump_forward: None) -> None:
    c = engine.compile_constraint("lark_grammar", ANSWER_GRAMMAR)
    prompt = "Is water wet? Answer in JSON:"
    engine.settings.jump_forward = False
    text_off, ids_off, steps_off = _run_counting_steps(engine, prompt, c, 24)
    engine.settings.jump_forward = True
    text_on, ids_on, steps_on = _run_counting_steps(engine, prompt, c, 24)
    assert _lark_accepts(ANSWER_GRAMMAR, text_off), text_off
    assert _lark_accepts(ANSWER_GRAMMAR, text_on), text_on
    assert steps_on < steps_off, "jump-forward appended no forced tokens"
    # Jump-forward writes forced text in the tokenizer's canonical split ('answer' as one token).
    # Without it, greedy decoding may spell forced text in odd pieces ('a', 'ns', 'w', 'er' on
    # the bundled model here), which changes the context and so the free part: the texts are not
    # required to be equal, only valid.
    eos = engine.eos_ids
    assert [t for t in ids_on if t not in eos] == engine.tokenizer.encode(text_on, add_special_tokens=False)


def test_matcher_rollback_restores_masks(engine: LLMEngine) -> None:
    c = engine.compile_constraint("lark_grammar", ANSWER_GRAMMAR)
    m = c.matcher()
    ids = engine.tokenizer.encode('{"answer": "yes"}', add_special_tokens=False)
    masks = [m.mask().copy()]
    for tid in ids:
        assert m.accept_token(tid), engine.tokenizer.decode([tid])
        masks.append(m.mask().copy())
    eos = min(m.eos_ids)
    assert m.is_allowed(eos) and m.accept_token(eos) and m.finished
    m.rollback(1)  # un-accept EOS
    assert not m.finished and np.array_equal(m.mask(), masks[-1])
    for back in range(len(ids), 0, -1):
        m.rollback(1)
        assert m.num_tokens == back - 1
        assert np.array_equal(m.mask(), masks[back - 1]), f"mask differs after rolling back to {back - 1} tokens"
    # a rejected token changes nothing
    bad = engine.tokenizer.encode("]", add_special_tokens=False)[0]
    assert not m.accept_token(bad) and m.num_tokens == 0 and np.array_equal(m.mask(), masks[0])


def _feed(c: Constraint, engine: LLMEngine, text: str) -> Any:
    m = c.matcher()
    for tid in engine.tokenizer.encode(text, add_special_tokens=False):
        assert m.accept_token(tid), (text, engine.tokenizer.decode([tid]))
    return m


def test_eos_only_where_the_json_value_is_complete(engine: LLMEngine) -> None:
    c = engine.compile_constraint("json_schema", PERSON_SCHEMA)
    eos = min(engine.eos_ids)
    assert not c.matcher().is_allowed(eos)  # nothing written yet
    for partial in ('{"name": "Al', '{"name": "Al", "age": 3'):
        m = _feed(c, engine, partial)
        assert not m.is_allowed(eos), partial
    done = _feed(c, engine, '{"name": "Al", "age": 31}')
    assert done.can_end() and done.is_allowed(eos)
    # a top-level number may end after any digit, or go on
    num = engine.compile_constraint("json_schema", {"type": "integer", "minimum": 0})
    m = _feed(num, engine, "12")
    assert m.is_allowed(eos)


def test_only_tokens_with_text_or_character_bytes_are_allowed(engine: LLMEngine) -> None:
    c = engine.compile_constraint("lark_grammar", 'start: TEXT\nTEXT: /[^\\n]{1,40}/\n')
    allowed = unpack(c.matcher().mask(), engine.vocab_size)
    vocab = c.masks.vocab
    no_text = np.array([t is None for t in vocab.texts])
    partial = np.zeros(engine.vocab_size, bool)
    partial[list(vocab.partial)] = True
    assert allowed.sum() > 1000  # nearly any token may start free text
    # special tokens and padding rows never; pieces of multi-byte characters may start one here
    assert not (allowed & no_text & ~partial).any(), "a special or padding token is allowed"
    assert (allowed & partial).any()


def test_masks_prepared_beside_the_forward_pass_change_nothing(engine: LLMEngine, monkeypatch) -> None:
    import threading

    from ragloom.generation.constrain.processor import GrammarProcessor

    threads: set[str] = set()
    prepare = GrammarProcessor.prepare

    def spy(self: GrammarProcessor, output_ids: list[int]) -> None:
        threads.add(threading.current_thread().name)
        prepare(self, output_ids)

    monkeypatch.setattr(GrammarProcessor, "prepare", spy)
    prompts = ["Alice is 31 years old. As JSON:", "The date of the moon landing is", "Count from one:"]
    specs: list[tuple[str, Any]] = [("json_schema", PERSON_SCHEMA), ("regex", DATE_REGEX),
                                    ("lark_grammar", NUMBERS_GRAMMAR)]
    params = [_greedy(20), _greedy(12), _greedy(16)]
    beside = engine.generate(prompts, params, [engine.compile_constraint(k, s) for k, s in specs])
    assert any(name.startswith("ragloom-masks") for name in threads), threads
    monkeypatch.setattr(engine.settings, "overlap_masks", False)
    threads.clear()
    inline = engine.generate(prompts, params, [engine.compile_constraint(k, s) for k, s in specs])
    assert not threads
    assert [o.token_ids for o in beside] == [o.token_ids for o in inline]
