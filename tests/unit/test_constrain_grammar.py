"""The grammar engine: char-level lexing/parsing semantics, and token masks against brute force."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ragloom.errors import GrammarError
from ragloom.generation.constrain.grammar import Grammar
from ragloom.generation.constrain.masks import (
    TokenMasks,
    advance_bytes,
    apply_mask,
    pack,
    packed_to_bool,
    unpack,
)
from ragloom.generation.constrain.processor import Constraint
from ragloom.generation.constrain.vocab import TokenVocab, vocab_for

JSON = r"""
start: value
value: obj | arr | NUMBER | STRING | "true" | "false" | "null"
obj: "{" [pair ("," pair)*] "}"
arr: "[" [value ("," value)*] "]"
pair: STRING ":" value
STRING: /"([^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/
NUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/
WS: /[ \t\n\r]{1,8}/
%ignore WS
"""


@pytest.fixture(scope="module")
def json_grammar() -> Grammar:
    return Grammar.from_lark(JSON)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"a": 1}', True),
        ('{\n  "a": [\n    1,\n    2.5e3\n  ]\n}', True),
        ("[true,false,null]", True),
        ('{"a":        1}', True),
        ('{"a":         1}', False),  # 9 spaces: the gap is bounded by WS{1,8}; two WS in a row are not allowed
        ('{"a" 1}', False),
        ("[01]", False),  # maximal munch: 0 is a complete NUMBER and 1 cannot start a new one here
        ('"caf\\u00e9"', True),
        ("tru", False),
        ("", False),
    ],
)
def test_accepts_text(json_grammar: Grammar, text: str, ok: bool) -> None:
    assert json_grammar.accepts_text(text) is ok


def test_prefixes_are_viable(json_grammar: Grammar) -> None:
    text = '{"key": [1, {"x": "y"}], "z": null}'
    for i in range(len(text) + 1):
        assert json_grammar.accepts_prefix(text[:i])
    assert not json_grammar.accepts_prefix('{"key" ]')
    assert not json_grammar.accepts_prefix("]")


def test_literal_beats_regex_on_a_tie() -> None:
    g = Grammar.from_lark(
        r"""
        start: KW NAME | NAME NAME
        KW: "if"
        NAME: /[a-z]+/
        %ignore " "
        """
    )
    assert g.accepts_text("if x")  # "if" is lexed as KW (literal wins), then NAME
    assert not g.accepts_text("if")  # ... so "if" alone is KW and the grammar needs a NAME after it


def test_forced_text_and_next_chars(json_grammar: Grammar) -> None:
    state = json_grammar.advance(json_grammar.initial, '{"a": tr')
    assert state is not None
    assert json_grammar.forced_text(state) == "ue"
    # after a complete number, whitespace is open-ended: nothing is forced
    state = json_grammar.advance(json_grammar.initial, "[1")
    assert state is not None and json_grammar.forced_text(state) == ""
    assert json_grammar.next_chars(state) >= {",", "]", "0", "."}


def test_shortest_completion_closes_every_prefix(json_grammar: Grammar) -> None:
    """Output cut off anywhere (a token limit) closes from the LR items, however deep it nests."""
    text = '{"key": [1, {"x": "y\\n"}], "z": [[[[null]]]], "w": -2.5e3, "v": true}'
    for i in range(len(text)):
        state = json_grammar.advance(json_grammar.initial, text[:i])
        assert state is not None
        rest = json_grammar._planned_completion(state)
        assert rest is not None, text[:i]
        assert json_grammar.accepts_text(text[:i] + rest), (text[:i], rest)
    cut = '{"a": [1, [2'
    assert json_grammar.shortest_completion(json_grammar.advance(json_grammar.initial, cut)) == "]]}"
    deep = "[" * 300
    assert json_grammar.shortest_completion(json_grammar.advance(json_grammar.initial, deep)) == "]" * 300
    empty = json_grammar.shortest_completion(json_grammar.initial)
    assert empty is not None and len(empty) == 1 and json_grammar.accepts_text(empty)  # a digit


def test_bad_grammars_raise_grammar_error() -> None:
    with pytest.raises(GrammarError, match="LALR"):
        Grammar.from_lark('start: a | b\na: "x"\nb: "x"\n')  # reduce/reduce conflict
    with pytest.raises(GrammarError, match="not supported"):
        Grammar.from_lark(r'start: X' + "\n" + r'X: /(?<=a)b/' + "\n")  # lookbehind
    with pytest.raises(GrammarError):
        Grammar.from_lark("start: undefined_rule\n")


# ---- token level -------------------------------------------------------------------------------


def _brute_force(g: Grammar, vocab: TokenVocab, state, eos: frozenset[int]) -> np.ndarray:
    out = np.zeros(vocab.size, bool)
    for i, text in enumerate(vocab.texts):
        out[i] = bool(text) and g.advance(state, text) is not None
    if g.can_end(state):
        out[sorted(eos)] = True
    return out


def test_masks_equal_brute_force_on_a_toy_vocab(json_grammar: Grammar) -> None:
    texts: list[str | None] = [None, '{"', '":', '",', '"}', ' "', "1", "12", ".", "e", "},{", "[", "]", "true", "tr",
                               "ue", "  ", "\n  ", "         ", "a", 'a"', '"a":1}', ",", ":", "null", ' ', "\\u", "00e9"]
    vocab = TokenVocab.from_texts(texts)
    masks = TokenMasks(json_grammar, vocab, frozenset({0}))
    rng = random.Random(0)
    for doc in ['{"a": [1, 12.5e1, true], "b": null}', '[{"a":1},{"a":"\\u00e9"}]', '"x"']:
        for cut in sorted({rng.randrange(len(doc) + 1) for _ in range(12)} | {0, len(doc)}):
            state = json_grammar.advance(json_grammar.initial, doc[:cut])
            assert state is not None
            np.testing.assert_array_equal(masks.allowed(state), _brute_force(json_grammar, vocab, state, frozenset({0})))


@pytest.fixture(scope="module")
def tokenizer(engine):
    return engine.tokenizer


def test_masks_equal_brute_force_on_the_real_vocab(json_grammar: Grammar, tokenizer) -> None:
    vocab = vocab_for(tokenizer, 49152)
    masks = TokenMasks(json_grammar, vocab, frozenset({0}))
    doc = '{"name": "Ann", "tags": [1, 2.5], "ok": true}'
    ids = tokenizer.encode(doc, add_special_tokens=False)
    rng = np.random.default_rng(0)
    sample = rng.choice(vocab.size, 4000, replace=False)
    state = json_grammar.initial
    for tid in ids:
        allowed = masks.allowed(state)
        assert allowed[tid]
        for j in sample:
            text = vocab.texts[j]
            if j in vocab.partial:  # part of a multi-byte character: joined into characters first
                expected = advance_bytes(json_grammar, state, b"", vocab.partial[j]) is not None
            else:
                expected = bool(text) and json_grammar.advance(state, text) is not None
            assert allowed[j] == expected, (state, text)
        state = json_grammar.advance(state, vocab.texts[tid])
    assert masks.allowed(state)[0]  # a complete value: EOS allowed


def test_matcher_rollback_and_eos(json_grammar: Grammar, tokenizer) -> None:
    vocab = vocab_for(tokenizer, 49152)
    eos = frozenset({tokenizer.eos_token_id})
    c = Constraint(json_grammar, TokenMasks(json_grammar, vocab, eos), "lark_grammar")
    m = c.matcher()
    ids = tokenizer.encode('[1, 2]', add_special_tokens=False)
    first = m.mask().copy()
    for t in ids:
        assert m.is_allowed(t) and m.accept_token(t)
    assert m.can_end() and m.is_allowed(tokenizer.eos_token_id)
    assert not m.accept_token(tokenizer.encode("]", add_special_tokens=False)[0])  # "[1, 2]]" is not JSON
    m.rollback(len(ids))
    np.testing.assert_array_equal(m.mask(), first)
    assert not m.is_allowed(tokenizer.eos_token_id)


def test_pack_and_apply_mask() -> None:
    allowed = np.zeros(21, bool)
    allowed[[0, 7, 8, 20]] = True
    packed = pack(allowed)
    assert packed.size == 3
    np.testing.assert_array_equal(unpack(packed, 21), allowed)
    assert packed_to_bool(torch.from_numpy(packed), 21).tolist() == allowed.tolist()
    logits = torch.zeros(24)  # padded vocabulary: ids 21..23 are never allowed
    out = apply_mask(logits, packed)
    assert torch.isfinite(out).nonzero().flatten().tolist() == [0, 7, 8, 20]


def test_characters_split_across_tokens(tokenizer) -> None:
    """Byte-level BPE splits an emoji into tokens that are not UTF-8 on their own: the matcher joins
    them, inside a string where any character fits, and refuses them where no such character can."""
    grammar = Grammar.from_lark(JSON)
    vocab = vocab_for(tokenizer, 49152)
    c = Constraint(grammar, TokenMasks(grammar, vocab, frozenset({tokenizer.eos_token_id})), "lark_grammar")
    ids = tokenizer.encode('["💩 ok"]', add_special_tokens=False)
    assert any(t in vocab.partial for t in ids)
    m = c.matcher()
    for t in ids:
        assert m.is_allowed(t) and m.accept_token(t)
    assert m.is_allowed(tokenizer.eos_token_id)
    start = c.matcher()
    assert not any(start.is_allowed(t) for t in vocab.partial)  # a JSON value cannot start with one


def test_regex_terminal_automata_match_like_python_re() -> None:
    """Terminal automata come from regex.py's own builder: on random regexes with classes, groups,
    bounded and open repetition, lark's scoped flags (?i:...) and (?s:...), they accept exactly what
    Python's re.fullmatch accepts (with ASCII classes: \\d \\w \\s are ASCII here, as they were with
    interegular)."""
    import random
    import re

    from ragloom.generation.constrain.grammar import _regex_tables

    rng = random.Random(7)
    pieces = ["a", "B", "\\.", ".", "[a-c]", "[^a\\n]", "\\d", "\\s", "\\w"]

    def rnd(depth: int = 0) -> str:
        k = rng.randint(0, 6 if depth < 3 else 0)
        if k == 0:
            return rng.choice(pieces)
        if k == 1:
            return rnd(depth + 1) + rnd(depth + 1)
        if k == 2:
            return f"(?:{rnd(depth + 1)}|{rnd(depth + 1)})"
        if k == 3:
            return f"(?:{rnd(depth + 1)}){rng.choice(['*', '+', '?', '{1,3}', '{2}'])}"
        if k == 4:
            return f"(?i:{rnd(depth + 1)})"
        if k == 5:
            return f"(?s:{rnd(depth + 1)})"
        return f"(?is:{rnd(depth + 1)})"

    alphabet = "aAbBcC.1 \n_é"
    checked = 0
    for _ in range(300):
        pattern = rnd()
        if re.fullmatch(pattern, "", re.ASCII):
            continue  # a terminal may not match the empty string
        trans, accepting, class_of, other, _ = _regex_tables(pattern)
        for _ in range(30):
            s = "".join(rng.choices(alphabet, k=rng.randint(1, 5)))
            q = 0
            for ch in s:
                q = int(trans[q, class_of.get(ch, other)]) if q >= 0 else -1
            assert (q >= 0 and bool(accepting[q])) == bool(re.fullmatch(pattern, s, re.ASCII)), (pattern, s)
            checked += 1
    assert checked > 1000
