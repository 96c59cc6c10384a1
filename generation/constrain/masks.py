"""Token masks for a Grammar over a TokenVocab, and applying them to logits.

A mask answers "which tokens can come next" for a matcher state (LALR stack, live lexer
candidates). Computing it walks the whole vocabulary, vectorized with numpy rather than token by
token in Python:

1. Scan every token's characters through the DFAs of the live candidates at once. A token that
   some candidate consumes entirely stays inside the current lexeme: allowed. (This scan depends
   only on the lexer candidates, not on the parser, so it is cached per candidate set.)
2. A token on which all candidates die at character b, where a candidate was complete, ends the
   lexeme there. Tokens are grouped by the terminal that completes; each group is fed to the
   parser once, and the rest of each token is scanned again from the new lexeme's start: this
   repeats for tokens that span three, four, ... terminals (`":"`, `"},{"`).
3. EOS is allowed where the grammar may end.

Masks are cached per (stack, candidates) and stored packed (one bit per token, 6 KiB for a 49k
vocabulary); unpacking on the logits' device is a shift and an AND, on CPU or CUDA alike.
"""

from __future__ import annotations

import codecs
from collections import OrderedDict

import numpy as np
import torch

from ragloom.generation.constrain.grammar import Cands, Grammar, Stack, State, is_word_char
from ragloom.generation.constrain.vocab import TokenVocab


def pack(allowed: np.ndarray) -> np.ndarray:
    """bool [V] -> uint8 [ceil(V/8)], bit i of byte j is token 8j+i."""
    return np.packbits(allowed, bitorder="little")


def unpack(packed: np.ndarray, size: int) -> np.ndarray:
    return np.unpackbits(packed, count=size, bitorder="little").astype(bool)


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def packed_to_bool(packed: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [..., ceil(V/8)] on any device -> bool [..., V] on the same device."""
    shifts = _SHIFTS.get(packed.device)
    if shifts is None:
        shifts = _SHIFTS[packed.device] = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :size].bool()


def apply_mask(logits: torch.Tensor, packed: np.ndarray) -> torch.Tensor:
    """logits [V] with every token outside the packed mask set to -inf, in place.

    V may exceed the mask (padded vocabulary rows): those ids never win. On CPU the bits are
    unpacked by numpy; on CUDA the 6 KiB packed mask is copied and unpacked on the device.
    """
    vocab = logits.shape[-1]
    n = min(vocab, packed.size * 8)
    if logits.device.type == "cpu":
        allowed = torch.from_numpy(unpack(packed, n))
    else:
        allowed = packed_to_bool(torch.from_numpy(packed).to(logits.device, non_blocking=True), n)
    logits[:n].masked_fill_(~allowed, float("-inf"))
    if n < vocab:
        logits[n:] = float("-inf")
    return logits


class TokenMasks:
    """Masks of one grammar over one vocabulary; shared by every sequence using that pair."""

    def __init__(self, grammar: Grammar, vocab: TokenVocab, eos_ids: frozenset[int], cache_size: int = 4096) -> None:
        self.grammar = grammar
        self.vocab = vocab
        self.eos_ids = sorted(i for i in eos_ids if i < vocab.size)
        alphabet = vocab.alphabet
        # per terminal: dense vocab char id -> DFA class
        self.char_class = [
            np.array([dfa.class_of.get(c, dfa.other_class) for c in alphabet], np.int32) for dfa in grammar.terminals
        ]
        self.all_tokens = np.nonzero(vocab.valid)[0]
        self.word_char = np.array([is_word_char(c) for c in alphabet], bool)
        self._scans: OrderedDict[Cands, tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]] = OrderedDict()
        # scans of the tokens that went on past a lexeme, by how they got there (see _continue)
        self._continued: OrderedDict[tuple, tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]] = OrderedDict()
        self._masks: OrderedDict[tuple[State, bytes], np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0

    # ---- scanning ----------------------------------------------------------------------------

    def _run(self, t: int, q: int, tok: np.ndarray, off: np.ndarray, rem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Chars each token consumes from offset `off` in terminal t's DFA from state q, and the
        state it stops in (the last live one)."""
        dfa = self.grammar.terminals[t]
        trans, cls = dfa.trans, self.char_class[t]
        n = len(tok)
        consumed = np.zeros(n, np.int64)
        state = np.full(n, q, np.int32)
        base = self.vocab.starts[tok] + off
        act = np.arange(n)
        chars = self.vocab.chars
        while act.size:
            nxt = trans[state[act], cls[chars[base[act] + consumed[act]]]]
            act = act[nxt >= 0]
            state[act] = nxt[nxt >= 0]
            consumed[act] += 1
            act = act[consumed[act] < rem[act]]
        return consumed, state

    def _scan(
        self, cands: Cands, tok: np.ndarray, off: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
        """Scan tokens `tok` from char offset `off` with lexer candidates `cands`:
        (tokens that stay inside the lexeme, [(completed terminal, its tokens, offset after it)])."""
        if not cands or not len(tok):  # nothing can start here (e.g. only the end may follow)
            return tok[:0], []
        rem = self.vocab.lengths[tok] - off
        runs = [(t, *self._run(t, q, tok, off, rem)) for t, q in cands]
        best = np.max([c for _, c, _ in runs], axis=0)
        inside = best == rem
        chosen = np.full(len(tok), -1, np.int64)
        for t, consumed, state in sorted(runs, key=lambda r: self.grammar.rank[r[0]]):
            done = (consumed == best) & self.grammar.terminals[t].accepting[state] & ~inside & (chosen < 0)
            chosen[done] = t
        groups = []
        for t in np.unique(chosen[chosen >= 0]):
            sel = chosen == t
            groups.append((int(t), tok[sel], off[sel] + best[sel]))
        return tok[inside], groups

    def _allowed(self, stack: Stack, cands: Cands, out: np.ndarray) -> None:
        scan = self._scans.get(cands)
        if scan is None:  # the whole vocabulary from a lexer state: cached, it does not need the parser
            scan = self._scan(cands, self.all_tokens, np.zeros(len(self.all_tokens), np.int64))
            self._scans[cands] = scan
            if len(self._scans) > 256:
                self._scans.popitem(last=False)
        inside, groups = scan
        out[inside] = True
        for t, tok, off in groups:
            self._continue(stack, t, tok, off, out, (cands, t))

    def _continue(
        self, stack: Stack, t: int, tok: np.ndarray, off: np.ndarray, out: np.ndarray, path: tuple
    ) -> None:
        """Tokens whose current lexeme completed as terminal t, `off` chars into each token.

        `path` (the candidates of the first scan, then the terminal and the next candidates at each
        step) determines `tok` and `off`, so the scan from here is cached by it: states with other
        parser stacks but the same lexemes in the way reuse it (the grammar's follow sets are large
        in SQL: every keyword and name that may come after a table name, say)."""
        g = self.grammar
        if t in g.ignored:
            stack2, after_ignored = stack, True
        else:
            nxt = g.feed(stack, g.terminals[t].name)
            if nxt is None:
                return
            stack2, after_ignored = nxt, False
        start = g.start_cands(stack2, after_ignored)
        if not start:
            return
        key = (path, start)
        scan = self._continued.get(key)
        if scan is None:
            if g.ends_word[t]:  # word boundaries: no word character right after this lexeme
                keep = ~self.word_char[self.vocab.chars[self.vocab.starts[tok] + off]]
                tok, off = tok[keep], off[keep]
            scan = self._continued[key] = self._scan(start, tok, off)
            if len(self._continued) > 1024:
                self._continued.popitem(last=False)
        inside, groups = scan
        out[inside] = True
        for t2, tok2, off2 in groups:
            self._continue(stack2, t2, tok2, off2, out, (key, t2))

    # ---- masks -------------------------------------------------------------------------------

    def allowed(self, state: State, pending: bytes = b"") -> np.ndarray:
        """bool [V]: the tokens that keep `state` a viable prefix, plus EOS where it may end."""
        return unpack(self.mask(state, pending), self.vocab.size)

    def mask(self, state: State, pending: bytes = b"") -> np.ndarray:
        """Packed mask for `state` (see pack()). `pending` holds the first bytes of a character
        that partial tokens have started and not finished: then only bytes completing it fit."""
        key = (state, pending)
        got = self._masks.get(key)
        if got is not None:
            self.hits += 1
            self._masks.move_to_end(key)
            return got
        self.misses += 1
        stack, cands = state
        out = np.zeros(self.vocab.size, bool)
        if not pending:
            if cands:
                self._allowed(stack, cands, out)
            else:
                self._allowed(stack, self.grammar.start_cands(stack, False), out)
            if self.grammar.can_end(state):
                out[self.eos_ids] = True
        for tid, raw in self.vocab.partial.items():
            out[tid] = advance_bytes(self.grammar, state, pending, raw) is not None
        packed = pack(out)
        self._masks[key] = packed
        if len(self._masks) > self.cache_size:
            self._masks.popitem(last=False)
        return packed


def advance_bytes(grammar: Grammar, state: State, pending: bytes, raw: bytes) -> tuple[State, bytes] | None:
    """Feed raw token bytes after `pending` ones: the complete characters go to the grammar, an
    unfinished one stays pending. None when the bytes are not UTF-8 or the grammar refuses.

    A pending character is allowed when some character the grammar may take next starts with
    those bytes; where the next characters are an open set (inside a JSON string), any is assumed
    to fit, and the exact check happens when the character is complete.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(pending + raw, final=False)
    except UnicodeDecodeError:
        return None
    tail = decoder.getstate()[0]
    nxt = grammar.advance(state, text) if text else state
    if nxt is None:
        return None
    if tail:
        chars = grammar.next_chars(nxt)
        if chars is not None and not any(c.encode().startswith(tail) for c in chars):
            return None
    return nxt, tail
