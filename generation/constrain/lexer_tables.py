"""What one terminal's DFA does to every token of a vocabulary, shared by every grammar.

A token mask starts by running each live lexer candidate (terminal DFA, state) over the whole
vocabulary. That run depends on the DFA and the state alone, not on the grammar around it, and
JSON schemas and SQL grammars keep using the same terminals (JSON strings, numbers, whitespace,
`"key"` literals, identifiers), so the runs are cached here per (vocabulary, DFA structure, state)
for the whole process, as XGrammar's adaptive token mask cache is per grammar and llguidance's
lexer is per tokenizer. A new schema then starts with most of its lexer work done.

- Literal terminals are answered from the vocabulary's sorted texts (`TokenVocab.prefix_range`):
  the tokens sharing a prefix with the rest of the literal are a few nested ranges, found by
  binary search, so `"name"` costs microseconds instead of a pass over 50k-150k tokens.
- Other terminals run vectorized: over the vocabulary's trie one level at a time when most tokens
  get past their first character (each distinct prefix stepped once), else over the few tokens
  that do, one character position at a time.

Runs are kept sparse: only the tokens that consumed at least one character. Every other token
stopped at offset 0 in the start state.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ragloom.generation.constrain.grammar import TerminalDFA
from ragloom.generation.constrain.vocab import TokenVocab, pack

# Bytes of cached runs and scans kept per process; a run is ~10 bytes per token it keeps (a JSON
# string's content state keeps nearly every token: ~0.5 MB for 49k tokens, ~1.5 MB for 152k).
CACHE_BYTES = 256 << 20
# Entries of the per-DFA lookup tables (an alphabet-long class map is 70 KB for Qwen2.5's vocabulary).
_SMALL_CACHE = 512


@dataclass(frozen=True)
class Run:
    """One DFA from one state over every token, from the token's first character."""

    tok: np.ndarray  # int64, ascending: the tokens that consumed >= 1 character
    consumed: np.ndarray  # int64: characters consumed (the DFA died on the next one, or the token ended)
    state: np.ndarray  # int32: the state after them

    @property
    def nbytes(self) -> int:
        return self.tok.nbytes + self.consumed.nbytes + self.state.nbytes


@dataclass(frozen=True)
class SingleScan:
    """A lexeme with one live candidate, over every token (see TokenMasks._scan_full)."""

    inside: np.ndarray  # packed bits: tokens the candidate consumes entirely (they stay in the lexeme)
    done_tok: np.ndarray  # tokens on which it completes after >= 1 character and a character remains
    done_off: np.ndarray  # where the next lexeme starts in each of them
    zero: np.ndarray | None  # packed bits of the tokens it cannot take a first character of,
    # when the lexeme may end here (they start the next lexeme); None when it may not

    @property
    def nbytes(self) -> int:
        return self.inside.nbytes + self.done_tok.nbytes + self.done_off.nbytes + (
            self.zero.nbytes if self.zero is not None else 0)


class _Cache:
    """A byte-bounded LRU shared by threads (compiles and engine steps run on different ones)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._items: OrderedDict[tuple, Run | SingleScan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Run | SingleScan | None:
        with self._lock:
            got = self._items.get(key)
            if got is not None:
                self._items.move_to_end(key)
            return got

    def put(self, key: tuple, value: Run | SingleScan) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.used += value.nbytes
            while self.used > self.limit and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.used -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0


_CACHE = _Cache(CACHE_BYTES)
_CLASSES: OrderedDict[tuple[int, bytes], np.ndarray] = OrderedDict()
_TABLES: OrderedDict[bytes, np.ndarray] = OrderedDict()
_LOCK = threading.Lock()


def clear() -> None:
    """Forget every cached run (benchmarks measuring a cold process)."""
    _CACHE.clear()
    with _LOCK:
        _CLASSES.clear()
        _TABLES.clear()


def dfa_key(dfa: TerminalDFA) -> bytes:
    """A digest of what the DFA does (its name and priority do not matter to a run), kept on the
    DFA itself so that nothing here keeps a grammar's automata alive."""
    key: bytes | None = getattr(dfa, "_run_key", None)
    if key is None:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((dfa.trans.shape, dfa.other_class, sorted(dfa.class_of.items()))).encode())
        h.update(np.ascontiguousarray(dfa.trans, np.int32).tobytes())
        h.update(np.ascontiguousarray(dfa.accepting, bool).tobytes())
        key = h.digest()
        setattr(dfa, "_run_key", key)  # noqa: B010 - not a dataclass field: a cache
    return key


def char_classes(vocab: TokenVocab, dfa: TerminalDFA) -> np.ndarray:
    """int32 [alphabet]: the DFA's character class of each of the vocabulary's characters."""
    key = (vocab.uid, dfa_key(dfa))
    with _LOCK:
        got = _CLASSES.get(key)
    if got is not None:
        return got
    out = np.full(len(vocab.alphabet), dfa.other_class, np.int32)
    for ch, cls in dfa.class_of.items():  # a DFA names few characters; the rest are other_class
        i = vocab.char_index.get(ch)
        if i is not None:
            out[i] = cls
    with _LOCK:
        _CLASSES[key] = out
        while len(_CLASSES) > _SMALL_CACHE:
            _CLASSES.popitem(last=False)
    return out


def run_tokens(
    vocab: TokenVocab, dfa: TerminalDFA, q: int | np.ndarray, tok: np.ndarray, off: np.ndarray | int, rem: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Characters each token consumes from offset `off` in the DFA from state q (one for all, or
    one per token; at most `rem`), and the state it stops in (the last live one)."""
    trans, cls = dfa.trans, char_classes(vocab, dfa)
    n = len(tok)
    consumed = np.zeros(n, np.int64)
    state = np.full(n, q, np.int32) if isinstance(q, int) else q.astype(np.int32)
    base = vocab.starts[tok] + off
    act = np.nonzero(rem > 0)[0]
    chars = vocab.chars
    while act.size:
        nxt = trans[state[act], cls[chars[base[act] + consumed[act]]]]
        live = nxt >= 0
        act = act[live]
        state[act] = nxt[live]
        consumed[act] += 1
        act = act[consumed[act] < rem[act]]
    return consumed, state


def terminal_run(vocab: TokenVocab, dfa: TerminalDFA, q: int) -> Run:
    """The DFA from state q over every token of the vocabulary (cached per process)."""
    key = ("run", vocab.uid, dfa_key(dfa), q)
    got = _CACHE.get(key)
    if got is None:
        got = _literal_run(vocab, dfa, q) if dfa.is_literal else _regex_run(vocab, dfa, q)
        _CACHE.put(key, got)
    assert isinstance(got, Run)
    return got


def single_scan(vocab: TokenVocab, dfa: TerminalDFA, q: int) -> SingleScan:
    """A lexeme whose only live candidate is this DFA in state q, over every token (cached)."""
    key = ("single", vocab.uid, dfa_key(dfa), q)
    got = _CACHE.get(key)
    if got is None:
        run = terminal_run(vocab, dfa, q)
        rem = vocab.lengths[run.tok]
        inside = run.consumed == rem
        done = ~inside & dfa.accepting[run.state]
        bits = np.zeros(vocab.size, bool)
        bits[run.tok[inside]] = True
        zero = None
        if dfa.accepting[q]:
            z = vocab.valid.copy()
            z[run.tok] = False
            zero = pack(z)
        got = SingleScan(pack(bits), run.tok[done], run.consumed[done], zero)
        _CACHE.put(key, got)
    assert isinstance(got, SingleScan)
    return got


def _absorbing(dfa: TerminalDFA) -> tuple[np.ndarray, int]:
    """(flat transition table with dead = an extra state that loops on itself, that state)."""
    key = dfa_key(dfa)
    with _LOCK:
        got = _TABLES.get(key)
    if got is not None:
        return got, len(dfa.accepting)
    dead = len(dfa.accepting)
    table = np.vstack([dfa.trans, np.full((1, dfa.trans.shape[1]), dead, np.int32)])
    table[table < 0] = dead
    flat = table.ravel().astype(np.int32)
    with _LOCK:
        _TABLES[key] = flat
        while len(_TABLES) > _SMALL_CACHE:
            _TABLES.popitem(last=False)
    return flat, dead


def _regex_run(vocab: TokenVocab, dfa: TerminalDFA, q: int) -> Run:
    cls = char_classes(vocab, dfa)
    trie = vocab.trie
    if not trie.parents:
        return Run(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))
    table, dead = _absorbing(dfa)
    width = dfa.trans.shape[1]
    takes = table[q * width + cls] != dead  # per alphabet character: does the DFA take it first?
    if np.count_nonzero(takes[vocab.first_char[vocab.nonempty]]) * 4 < len(vocab.nonempty):
        # few tokens get past their first character (a number, a keyword): follow those alone
        tok = vocab.nonempty[takes[vocab.first_char[vocab.nonempty]]]
        consumed, state = run_tokens(vocab, dfa, q, tok, 0, vocab.lengths[tok])
        keep = consumed > 0
        return Run(tok[keep], consumed[keep], state[keep])
    # most do (inside a string): step every prefix of the vocabulary once, a trie level at a time;
    # dead is absorbing, so a level needs no filtering
    got = np.empty(trie.offsets[-1], np.int32)
    last = np.empty(trie.offsets[-1], np.int32)
    cur = table[q * width + cls[trie.chars[0]]]
    live = cur != dead
    n = len(cur)
    got[:n] = live
    last[:n] = np.where(live, cur, q)
    for j in range(1, len(trie.parents)):
        up, a, b = trie.parents[j], trie.offsets[j], trie.offsets[j + 1]
        cur = table[cur[up] * width + cls[trie.chars[j]]]
        live = cur != dead
        got[a:b] = got[trie.offsets[j - 1] + up] + live
        last[a:b] = np.where(live, cur, last[trie.offsets[j - 1] + up])
    consumed = np.where(vocab.valid, got[trie.token_node], 0)
    tok = np.nonzero(consumed)[0]
    return Run(tok, consumed[tok].astype(np.int64), last[trie.token_node[tok]])


def literal_text(dfa: TerminalDFA) -> str:
    """The string a literal terminal's DFA spells (state i has one way out, to i + 1)."""
    out = []
    for q in range(len(dfa.accepting) - 1):
        (cls,) = np.nonzero(dfa.trans[q] >= 0)[0]
        chars = dfa.class_chars[int(cls)]
        assert chars is not None and len(chars) == 1
        out.append(next(iter(chars)))
    return "".join(out)


def _literal_run(vocab: TokenVocab, dfa: TerminalDFA, q: int) -> Run:
    rest = literal_text(dfa)[q:]
    lo, hi = vocab.prefix_range(rest[:1])
    first = lo
    ids = vocab.sorted_ids[lo:hi]
    consumed = np.zeros(len(ids), np.int64)
    # Tokens starting with rest[:k] form a range of the sorted texts, nested in the one for k - 1;
    # a token consumes the longest k whose range holds it (or all of its own characters).
    for k in range(1, len(rest) + 1):
        a, b = vocab.prefix_range(rest[:k], lo, hi)
        if a == b:
            break
        consumed[a - first : b - first] = k
        lo, hi = a, b
    keep = consumed > 0
    order = np.argsort(ids[keep], kind="stable")
    tok = ids[keep][order].astype(np.int64)
    consumed = consumed[keep][order]
    return Run(tok, consumed, (q + consumed).astype(np.int32))
