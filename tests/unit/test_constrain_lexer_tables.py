"""Process-wide lexer tables (lexer_tables.py) and the masks built from them (masks.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ragloom.generation.constrain import lexer_tables
from ragloom.generation.constrain.grammar import Grammar, TerminalDFA
from ragloom.generation.constrain.masks import TokenMasks
from ragloom.generation.constrain.vocab import TokenVocab, vocab_for


@pytest.fixture(scope="module")
def vocab(engine) -> TokenVocab:
    return vocab_for(engine.tokenizer, 49152)


def _by_token(run: lexer_tables.Run, size: int) -> tuple[np.ndarray, np.ndarray]:
    consumed = np.zeros(size, np.int64)
    state = np.full(size, -1, np.int64)
    consumed[run.tok] = run.consumed
    state[run.tok] = run.state
    return consumed, state


def _reference(vocab: TokenVocab, dfa: TerminalDFA, q: int) -> tuple[np.ndarray, np.ndarray]:
    """The DFA run one token at a time in Python."""
    consumed = np.zeros(vocab.size, np.int64)
    state = np.full(vocab.size, -1, np.int64)
    for i, text in enumerate(vocab.texts):
        s, n = q, 0
        for ch in text or "":
            nxt = dfa.step(s, ch)
            if nxt < 0:
                break
            s, n = nxt, n + 1
        if n:
            consumed[i], state[i] = n, s
    return consumed, state


@pytest.mark.parametrize("text", ['"name"', "true", "SELECT", ",", '"first_name"'])
def test_literal_runs_from_sorted_prefixes_equal_a_token_by_token_run(vocab: TokenVocab, text: str) -> None:
    dfa = TerminalDFA.literal("T", text, 0)
    assert lexer_tables.literal_text(dfa) == text
    for q in range(len(text)):
        got = _by_token(lexer_tables.terminal_run(vocab, dfa, q), vocab.size)
        want = _reference(vocab, dfa, q)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1][want[0] > 0], want[1][want[0] > 0])


@pytest.mark.parametrize("pattern, states", [
    (r'"([^"\\]|\\["\\/bfnrt])*"', (0, 1)),  # most tokens go on: the column-at-a-time path
    (r"-?(0|[1-9][0-9]*)(\.[0-9]+)?", (0, 2)),  # few do: the path following only those
    (r'"[a-z]{1,5}"', (1, 3)),
])
def test_regex_runs_equal_a_token_by_token_run(vocab: TokenVocab, pattern: str, states: tuple[int, ...]) -> None:
    dfa = TerminalDFA.regex("T", pattern, 0)
    for q in states:
        got = _by_token(lexer_tables.terminal_run(vocab, dfa, q), vocab.size)
        want = _reference(vocab, dfa, q)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1][want[0] > 0], want[1][want[0] > 0])


def test_grammars_with_the_same_terminals_share_their_runs(vocab: TokenVocab) -> None:
    lexer_tables.clear()
    a = Grammar.from_lark('start: "{" KEY ":" NUM "}"\nKEY: /"[a-z]+"/\nNUM: /[0-9]+/\n')
    b = Grammar.from_lark('start: "[" NAME "," INT "]"\nNAME: /"[a-z]+"/\nINT: /[0-9]+/\n')
    ma = TokenMasks(a, vocab, frozenset({0}))
    ma.mask(a.advance(a.initial, '{"ab'))
    runs_after_a = {k for k in lexer_tables._CACHE._items if k[0] == "run"}
    mb = TokenMasks(b, vocab, frozenset({0}))
    state = b.advance(b.initial, '["ab')
    allowed = mb.allowed(state)
    new = {k for k in lexer_tables._CACHE._items if k[0] == "run"} - runs_after_a
    # b's string and number terminals are a's under other names: only its own literals ran
    shared = {lexer_tables.dfa_key(t) for t in a.terminals}
    assert all(k[2] not in shared for k in new)
    assert allowed[vocab.texts.index('",')] and not allowed[vocab.texts.index('":')]


def test_vocabularies_do_not_share_runs() -> None:
    # a freed vocabulary's id() may be reused; its runs must not answer for the next one
    dfa = TerminalDFA.literal("T", "ab", 0)
    for texts in (["a", "ab", "abc"], ["x", "ab"], ["ab", "b", "a"]):
        vocab = TokenVocab.from_texts(list(texts))
        run = lexer_tables.terminal_run(vocab, dfa, 0)
        assert sorted(vocab.texts[i] for i in run.tok) == sorted(t for t in texts if t[0] == "a")
        del vocab


def test_the_cache_stays_within_its_byte_budget() -> None:
    cache = lexer_tables._Cache(limit=1000)
    for i in range(50):
        cache.put(("run", i), lexer_tables.Run(np.zeros(10, np.int64), np.zeros(10, np.int64), np.zeros(10, np.int32)))
    assert cache.used <= 1000 and cache.get(("run", 49)) is not None and cache.get(("run", 0)) is None
