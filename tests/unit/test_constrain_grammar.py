"""The grammar engine: char-level lexing/parsing semantics, and token masks against brute force."""

from __future__ import annotations

import random
import time

import grpc
import numpy as np
import pytest
import torch

from ragloom.errors import CompileTimeout, DeadlineExceeded, GrammarError, InvalidArgument
from ragloom.generation.constrain import automata, deadline
from ragloom.generation.constrain.grammar import Grammar
from ragloom.generation.constrain.masks import (
    TokenMasks,
    advance_bytes,
    apply_mask,
    pack,
    packed_to_bool,
    unpack,
)
from ragloom.generation.constrain.processor import Constraint, compile_constraint
from ragloom.generation.constrain.regex_parser import parse_pattern
from ragloom.generation.constrain.vocab import TokenVocab, vocab_for
from ragloom.services.status import grpc_code

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


# ---- compile-time bounds -------------------------------------------------------------------------

JSON_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\\x2fbfnrt]|\\u[0-9a-fA-F]{4})'  # \x2f: a / would end a lark regex


def _trimmed(table: automata.Table) -> bool:
    """Every state reachable from the start and able to reach a final state."""
    succ = [set(row[row >= 0].tolist()) for row in table.trans]
    pred: list[set[int]] = [set() for _ in succ]
    for q, ts in enumerate(succ):
        for t in ts:
            pred[t].add(q)

    def closure(seeds: set[int], edges: list[set[int]]) -> set[int]:
        seen, todo = set(seeds), list(seeds)
        while todo:
            for t in edges[todo.pop()] - seen:
                seen.add(t)
                todo.append(t)
        return seen

    n = len(succ)
    finals = set(np.nonzero(table.finals)[0].tolist())
    return n == 0 or len(closure({0}, succ)) == n == len(closure(finals, pred))


@pytest.mark.parametrize("pattern", [
    f'"{JSON_CHAR}{{0,5}}"', f'"{JSON_CHAR}{{2,}}"', "(?:ab){2,5}", "(?:a|ab){0,5}", "x(?:ab)?y", "a{3}b*",
    '(?:"[^"]{0,3}")?', "[a-c]{0,4}[c-e]", "(?:ab*c){1,}", "(?:(?:ab){0,2}c){0,3}", "(?:ab|cd){3,4}x?",
    "(?:a[bc]?d){0,3}", "(?:x(?:ab){1,3}y){2,4}z", "q(?:a(?:bc){0,2}){0,2}", r"\d{1,3}(?:\.\d{1,3}){3}",
    "(?:(?:ab)?c){0,4}", "(?:[de]*c){2,4}", "x(?:a*b)?c",
])
def test_automata_put_together_from_parts_equal_the_subset_construction(pattern: str, monkeypatch) -> None:
    x = parse_pattern(pattern, flavor="python", search=False)
    reference = automata.to_dfa(x)  # small: Thompson NFA, subset construction, minimization
    monkeypatch.setattr(automata, "_DIRECT_MIN", 0)  # every concatenation and repetition from its parts
    atoms, table = automata.dfa_tables(x)
    built = table.dfa(atoms)
    assert automata.product(built, reference, "minus").is_empty(), pattern
    assert automata.product(reference, built, "minus").is_empty(), pattern
    assert _trimmed(table), pattern


def test_a_long_counted_string_is_one_exact_terminal() -> None:
    # thousands of copies of a character-or-escape automaton: put together directly, not refused as too large
    g = Grammar.from_lark(f'start: S\nS: /"{JSON_CHAR}{{0,8192}}"/\n')
    assert g.accepts_text('"' + "a" * 8192 + '"')
    assert not g.accepts_text('"' + "a" * 8193 + '"')
    assert g.accepts_text('"' + "\\u00e9" * 8192 + '"')  # an escape is one character
    assert not g.accepts_text('"' + "\\u00e9" * 8192 + 'a"')
    assert not g.accepts_text('"\\u00e"') and not g.accepts_text('"\\x"')


def test_a_slow_terminal_stops_at_the_time_limit(monkeypatch) -> None:
    # 2**18 subset states once the size limit is lifted: many seconds of work without the time limit
    monkeypatch.setattr(automata, "_MAX_DFA", 10**6)
    started = time.monotonic()
    with deadline.limit(0.2, "the test grammar"), pytest.raises(CompileTimeout) as info:
        Grammar.from_lark("start: T\nT: /[ab]*a[ab]{17}/\n")
    assert time.monotonic() - started < 1.0
    assert str(info.value).startswith("compiling the test grammar: terminal T /[ab]*a[ab]{17}/ exceeded the 0.2s limit")


def test_a_compile_timeout_answers_deadline_exceeded() -> None:
    with pytest.raises(CompileTimeout) as info:  # a pattern no other test compiles: nothing cached
        compile_constraint("regex", "[ab]*a[ab]{9}timeout", None, 0, frozenset(), timeout_s=1e-6)
    assert isinstance(info.value, DeadlineExceeded) and not isinstance(info.value, InvalidArgument)
    assert grpc_code(info.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert str(info.value).startswith("compiling the regex constraint"), str(info.value)
    assert "1e-06s limit" in str(info.value)


def test_cancel_all_stops_a_compile_in_progress(monkeypatch) -> None:
    # what the server's stop does: a compile on a worker thread ends at its next check, not at its limit
    import threading

    from ragloom.errors import Unavailable

    monkeypatch.setattr(automata, "_MAX_DFA", 10**6)
    outcome: list[BaseException] = []

    def work() -> None:
        try:
            with deadline.limit(60, "the test grammar"):
                Grammar.from_lark("start: T\nT: /[ab]*b[ab]{17}/\n")
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(0.3)
    assert deadline.cancel_all("the server is shutting down") == 1
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], Unavailable), outcome
    assert "shutting down" in str(outcome[0])
    assert deadline.cancel_all("nothing running") == 0
