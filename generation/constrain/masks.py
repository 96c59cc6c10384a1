"""Token masks for a Grammar over a TokenVocab, and applying them to logits.

A mask answers "which tokens can come next" for a matcher state (LALR stack, live lexer
candidates). It is assembled from pieces that are mostly computed once and reused, as XGrammar's
adaptive token mask cache splits context-independent tokens from the rest:

1. Run each live candidate's DFA over the vocabulary (lexer_tables.py: cached per process, per
   DFA structure and state, shared by every grammar using the terminal). A token some candidate
   consumes entirely stays inside the current lexeme: allowed, whatever the parser holds.
2. A token on which all candidates die at character b >= 1, where a candidate was complete, ends
   the lexeme there. Tokens are grouped by the terminal that completes; each group is fed to the
   parser once, and the rest of each token is scanned again from the new lexeme's start: this
   repeats for tokens that span three, four, ... terminals (`":"`, `"},{"`). These groups are
   small (the tokens holding a lexeme boundary).
3. A token none of the candidates can take a first character of, where the lexeme may end, starts
   the next lexeme: such tokens are allowed exactly when the next lexer state allows them from
   their start, which is that state's own (cached) set. One AND of packed bits instead of a
   rescan of the vocabulary.
4. EOS where the grammar may end; tokens holding part of a multi-byte character by the characters
   they would start.

Per grammar, sets are cached per lexer state and masks per (stack, candidates), packed (one bit
per token, 6 KiB for a 49k vocabulary); unpacking on the logits' device is a shift and an AND, on
CPU or CUDA alike.
"""

from __future__ import annotations

import codecs
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ragloom.generation.constrain import deadline, lexer_tables
from ragloom.generation.constrain.grammar import Cands, Grammar, Stack, State
from ragloom.generation.constrain.vocab import TokenVocab, pack, unpack

__all__ = ["TokenMasks", "advance_bytes", "apply_mask", "pack", "packed_to_bool", "unpack"]

# Groups up to this many tokens are set bit by bit; larger ones through a bool array.
_SPARSE_IDS = 4096

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


def with_tokens(bits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """A copy of packed `bits` with the tokens `ids` set too."""
    if len(ids) > _SPARSE_IDS:
        dense = np.zeros(bits.size * 8, bool)
        dense[ids] = True
        return bits | pack(dense)
    out = bits.copy()
    np.bitwise_or.at(out, ids >> 3, np.left_shift(1, ids & 7).astype(np.uint8))
    return out


@dataclass(frozen=True)
class Scan:
    """A lexer state's candidates over every token (steps 1-3 of the module docstring)."""

    inside: np.ndarray  # packed: tokens staying inside the lexeme
    groups: list[tuple[int, np.ndarray, np.ndarray]]  # (completed terminal, tokens, offset after it)
    zero: tuple[int, np.ndarray] | None  # (terminal completing at offset 0, packed tokens) or None


class TokenMasks:
    """Masks of one grammar over one vocabulary; shared by every sequence using that pair."""

    def __init__(self, grammar: Grammar, vocab: TokenVocab, eos_ids: frozenset[int], cache_size: int = 4096) -> None:
        self.grammar = grammar
        self.vocab = vocab
        self.eos_ids = sorted(i for i in eos_ids if i < vocab.size)
        self._scans: OrderedDict[Cands, Scan] = OrderedDict()
        # scans of the tokens that went on past a lexeme, by how they got there (see _continue)
        self._continued: OrderedDict[tuple, tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]] = OrderedDict()
        # packed text tokens allowed from a lexer state (no EOS, no partial characters)
        self._bodies: OrderedDict[tuple[Stack, Cands], np.ndarray] = OrderedDict()
        self._masks: OrderedDict[tuple[State, bytes], np.ndarray] = OrderedDict()
        self._heads: dict[frozenset[str], frozenset[bytes]] = {}
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0

    # ---- scanning ----------------------------------------------------------------------------

    def _scan(
        self, cands: Cands, tok: np.ndarray, off: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
        """Scan tokens `tok` from char offset `off` with lexer candidates `cands`:
        (tokens that stay inside the lexeme, [(completed terminal, its tokens, offset after it)])."""
        if not cands or not len(tok):  # nothing can start here (e.g. only the end may follow)
            return tok[:0], []
        rem = self.vocab.lengths[tok] - off
        runs = [(t, *lexer_tables.run_tokens(self.vocab, self.grammar.terminals[t], q, tok, off, rem))
                for t, q in cands]
        best = np.max([c for _, c, _ in runs], axis=0)
        inside = best == rem
        chosen = np.full(len(tok), -1, np.int64)
        for t, consumed, state in sorted(runs, key=lambda r: self.grammar.rank[r[0]]):
            done = (consumed == best) & self.grammar.terminals[t].accepting[state] & ~inside & (chosen < 0)
            chosen[done] = t
        groups = []
        for t in sorted({t for t, _ in cands}):
            sel = chosen == t
            if sel.any():
                groups.append((t, tok[sel], off[sel] + best[sel]))
        return tok[inside], groups

    def _scan_all(self, cands: Cands) -> Scan:
        """`_scan` over the whole vocabulary from each token's start, from the cached runs."""
        g, vocab = self.grammar, self.vocab
        if len(cands) == 1:  # the common case, cached per process (lexer_tables.single_scan)
            t, q = cands[0]
            one = lexer_tables.single_scan(vocab, g.terminals[t], q)
            return Scan(one.inside, [(t, one.done_tok, one.done_off)] if len(one.done_tok) else [],
                        (t, one.zero) if one.zero is not None else None)
        got = self._scans.get(cands)
        if got is not None:
            return got
        runs = [lexer_tables.terminal_run(vocab, g.terminals[t], q) for t, q in cands]
        member = np.zeros(vocab.size, bool)
        for run in runs:
            member[run.tok] = True
        union = np.nonzero(member)[0]  # (np.unique would hash: slower)
        where = np.empty(vocab.size, np.int32)
        where[union] = np.arange(len(union), dtype=np.int32)
        consumed = np.zeros((len(cands), len(union)), np.int64)
        state = np.empty((len(cands), len(union)), np.int32)
        for i, (run, (_, q)) in enumerate(zip(runs, cands, strict=True)):
            state[i] = q
            at = where[run.tok]
            consumed[i, at] = run.consumed
            state[i, at] = run.state
        best = consumed.max(axis=0)
        inside = best == vocab.lengths[union]
        chosen = np.full(len(union), -1, np.int64)
        for i in sorted(range(len(cands)), key=lambda i: g.rank[cands[i][0]]):
            t = cands[i][0]
            done = (consumed[i] == best) & g.terminals[t].accepting[state[i]] & ~inside & (chosen < 0)
            chosen[done] = t
        groups = []
        for t in sorted({t for t, _ in cands}):
            sel = chosen == t
            if sel.any():
                groups.append((t, union[sel], best[sel]))
        zero = None
        t0 = g.completed(cands)  # tokens no candidate takes a character of end the lexeme first
        if t0 is not None:
            zero = (t0, pack(vocab.valid & ~member))
        member[union[~inside]] = False
        got = self._scans[cands] = Scan(pack(member), groups, zero)
        if len(self._scans) > 256:
            self._scans.popitem(last=False)
        return got

    def _body(self, stack: Stack, cands: Cands) -> np.ndarray:
        """Packed: the tokens with text allowed in lexer state (stack, cands)."""
        key = (stack, cands)
        got = self._bodies.get(key)
        if got is not None:
            self._bodies.move_to_end(key)
            return got
        deadline.check()  # the first mask is part of compiling; outside a compile this does nothing
        scan = self._scan_all(cands)
        found: list[np.ndarray] = []
        for t, tok, off in scan.groups:
            self._continue(stack, t, tok, off, found, (cands, t))
        bits = with_tokens(scan.inside, np.concatenate(found)) if found else scan.inside
        if scan.zero is not None:
            bits = bits | self._after(stack, *scan.zero)
        self._bodies[key] = bits
        if len(self._bodies) > self.cache_size:
            self._bodies.popitem(last=False)
        return bits

    def _next_lexeme(self, stack: Stack, t: int) -> tuple[Stack, Cands] | None:
        """After a lexeme completing as terminal t: the parser stack and the next lexeme's
        candidates, or None when the parser refuses t or nothing may follow."""
        g = self.grammar
        if t in g.ignored:
            stack2, after_ignored = stack, True
        else:
            nxt = g.feed(stack, g.terminals[t].name)
            if nxt is None:
                return None
            stack2, after_ignored = nxt, False
        start = g.start_cands(stack2, after_ignored)
        return (stack2, start) if start else None

    def _after(self, stack: Stack, t: int, tokens: np.ndarray) -> np.ndarray:
        """Packed: of `tokens` (packed), those allowed as the start of what follows a lexeme
        completing as terminal t before their first character. (No terminal matches "", so the
        next lexer state is never the one asking: the recursion ends.)"""
        nxt = self._next_lexeme(stack, t)
        if nxt is None:
            return np.zeros_like(tokens)
        if self.grammar.ends_word[t]:  # word boundaries: no word character right after this lexeme
            tokens = tokens & ~self.vocab.word_start
        return self._body(*nxt) & tokens

    def _continue(
        self, stack: Stack, t: int, tok: np.ndarray, off: np.ndarray, found: list[np.ndarray], path: tuple
    ) -> None:
        """Tokens whose current lexeme completed as terminal t, `off` chars into each token; the
        allowed ones are appended to `found`.

        `path` (the candidates of the first scan, then the terminal and the next candidates at each
        step) determines `tok` and `off`, so the scan from here is cached by it: states with other
        parser stacks but the same lexemes in the way reuse it (the grammar's follow sets are large
        in SQL: every keyword and name that may come after a table name, say)."""
        g = self.grammar
        nxt = self._next_lexeme(stack, t)
        if nxt is None:
            return
        stack2, start = nxt
        key = (path, start)
        scan = self._continued.get(key)
        if scan is None:
            if g.ends_word[t]:  # word boundaries: no word character right after this lexeme
                keep = ~self.vocab.word_char[self.vocab.chars[self.vocab.starts[tok] + off]]
                tok, off = tok[keep], off[keep]
            scan = self._continued[key] = self._scan(start, tok, off)
            if len(self._continued) > 1024:
                self._continued.popitem(last=False)
        inside, groups = scan
        if len(inside):
            found.append(inside)
        for t2, tok2, off2 in groups:
            self._continue(stack2, t2, tok2, off2, found, (key, t2))

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
        extra: list[int] = []
        if not pending:
            bits = self._body(stack, cands or self.grammar.start_cands(stack, False))
            if self.grammar.can_end(state):
                extra.extend(self.eos_ids)
            extra.extend(self._partial_starts(state).tolist())
        else:
            bits = np.zeros((self.vocab.size + 7) // 8, np.uint8)
            extra.extend(tid for tid, raw in self.vocab.partial.items()
                         if advance_bytes(self.grammar, state, pending, raw) is not None)
        packed = with_tokens(bits, np.asarray(extra, np.int64)) if extra else bits.copy()
        self._masks[key] = packed
        if len(self._masks) > self.cache_size:
            self._masks.popitem(last=False)
        return packed

    def _partial_starts(self, state: State) -> np.ndarray:
        """The partial-character tokens allowed at a character boundary (as advance_bytes decides
        one by one), read by the complete characters they start with, then by their last bytes."""
        first = self.grammar.next_chars(state)  # None: any character may come next
        out: list[np.ndarray] = []
        for text, (ids, by_tail) in self.vocab.partial_by_text.items():
            if text and first is not None and text[0] not in first:
                continue  # advance() would refuse the first character
            nxt = self.grammar.advance(state, text) if text else state
            if nxt is None:
                continue
            chars = self.grammar.next_chars(nxt)
            if chars is None:
                out.append(ids)
                continue
            heads = self._heads.get(chars)
            if heads is None:
                heads = self._heads[chars] = frozenset(
                    e[:k] for c in chars if len(e := c.encode()) > 1 for k in range(1, len(e)))
                if len(self._heads) > 4096:
                    self._heads.clear()
            out.extend(tids for tail, tids in by_tail.items() if not tail or tail in heads)
        return np.concatenate(out) if out else np.zeros(0, np.int64)


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
