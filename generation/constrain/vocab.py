"""The text of every token of a tokenizer, laid out for vectorized scanning.

A grammar matches characters, the model emits token ids, so each id needs its exact decoded text
(with its leading space). Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) stores bytes as printable
characters; SentencePiece (Llama 2, Mistral) writes spaces as '▁' and raw bytes as <0xNN>.
A token whose bytes are not complete UTF-8 on their own (part of a multi-byte character, as
byte-level BPE splits emoji and rare CJK characters) is kept apart as raw bytes (`partial`); the
matcher joins such bytes into characters before the grammar sees them (processor.py).
Special tokens (EOS, chat markers) are never part of the text either; EOS is allowed separately
where the grammar accepts.
"""

from __future__ import annotations

import bisect
import codecs
import itertools
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np


def pack(allowed: np.ndarray) -> np.ndarray:
    """bool [V] -> uint8 [ceil(V/8)], bit i of byte j is token 8j+i."""
    return np.packbits(allowed, bitorder="little")


def unpack(packed: np.ndarray, size: int) -> np.ndarray:
    return np.unpackbits(packed, count=size, bitorder="little").astype(bool)


_UIDS = itertools.count()


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible byte <-> printable-character table
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes(tokenizer: Any, vocab_size: int) -> list[bytes | None]:
    """Raw bytes of each id in [0, vocab_size); None for special, unused or padding ids."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            special.add(tid)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    byte_level = _is_byte_level(tokenizer)
    dec = _byte_decoder()
    out: list[bytes | None] = [None] * vocab_size
    for tid, piece in enumerate(pieces):
        if piece is None or tid in special:
            continue
        if byte_level:
            try:
                out[tid] = bytes(dec[c] for c in piece)
            except KeyError:  # an added (non-byte-level) token: its text is literal
                out[tid] = piece.encode()
        elif m := _SP_BYTE.match(piece):
            out[tid] = bytes([int(m.group(1), 16)])
        else:
            out[tid] = piece.replace("▁", " ").encode()
    return out


@dataclass
class Trie:
    """Token texts as a trie, one level per character position: node i of depth j spells
    parent's text + alphabet[chars[j][i]]; parents[j][i] indexes depth j - 1 (0 at depth 0). A
    DFA run over the trie steps each distinct prefix once: 2.8x fewer steps than over every token's
    characters for Qwen2.5's vocabulary (279k nodes, 774k characters)."""

    parents: list[np.ndarray]  # int32 per depth
    chars: list[np.ndarray]  # int32 alphabet index per depth
    offsets: list[int]  # depth j's nodes are offsets[j] ... offsets[j + 1] - 1 in a flat numbering
    token_node: np.ndarray  # int64 [size]: the flat node of each token's whole text (0 for none)


@dataclass
class TokenVocab:
    """Token texts as one flat array of dense character ids.

    chars[starts[i] : starts[i] + lengths[i]] are token i's characters, as indices into `alphabet`
    (the distinct characters of the vocabulary). Tokens without text have length 0 and `valid` False.
    """

    size: int  # the model's vocabulary size (may exceed the tokenizer's: padded rows)
    texts: list[str | None]
    alphabet: list[str]
    char_index: dict[str, int]
    chars: np.ndarray  # int32 [total chars]
    starts: np.ndarray  # int64 [size]
    lengths: np.ndarray  # int64 [size]
    valid: np.ndarray  # bool [size]
    partial: dict[int, bytes]  # tokens holding part of a multi-byte character: their raw bytes
    # names this vocabulary in process-wide caches (an id() could be reused after it is freed)
    uid: int = field(default_factory=lambda: next(_UIDS), init=False, repr=False, compare=False)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int) -> TokenVocab:
        texts: list[str | None] = []
        partial: dict[int, bytes] = {}
        for tid, b in enumerate(token_bytes(tokenizer, vocab_size)):
            try:
                texts.append(b.decode("utf-8") if b else None)
            except UnicodeDecodeError:
                texts.append(None)
                partial[tid] = b  # type: ignore[assignment]
        return cls.from_texts(texts, partial)

    @classmethod
    def from_texts(cls, texts: list[str | None], partial: dict[int, bytes] | None = None) -> TokenVocab:
        char_index: dict[str, int] = {}
        flat: list[int] = []
        starts = np.zeros(len(texts), np.int64)
        lengths = np.zeros(len(texts), np.int64)
        for i, t in enumerate(texts):
            starts[i] = len(flat)
            if t:
                flat.extend(char_index.setdefault(c, len(char_index)) for c in t)
                lengths[i] = len(t)
        alphabet = [""] * len(char_index)
        for c, j in char_index.items():
            alphabet[j] = c
        return cls(
            size=len(texts),
            texts=texts,
            alphabet=alphabet,
            char_index=char_index,
            chars=np.asarray(flat, np.int32),
            starts=starts,
            lengths=lengths,
            valid=lengths > 0,
            partial=dict(partial or {}),
        )

    # ---- indexes for masks (built on first use, once per vocabulary) ----------------------------

    @cached_property
    def nonempty(self) -> np.ndarray:
        """int64: the ids of tokens with text."""
        return np.nonzero(self.valid)[0]

    @cached_property
    def first_char(self) -> np.ndarray:
        """int32 [size]: each token's first character (0 for tokens without text)."""
        out = np.zeros(self.size, np.int32)
        out[self.valid] = self.chars[self.starts[self.valid]]
        return out

    @cached_property
    def trie(self) -> Trie:
        """The token texts as a trie, level by level (see Trie)."""
        texts, ids = self._sorted
        lengths = self.lengths[ids]
        parents: list[np.ndarray] = []
        chars: list[np.ndarray] = []
        offsets = [0]
        token_node = np.zeros(self.size, np.int64)
        rows = np.arange(len(ids))  # positions (in sorted order) of the tokens longer than j
        node = np.zeros(0, np.int64)  # each such token's node at depth j - 1
        for j in range(int(lengths.max()) if len(lengths) else 0):
            keep = lengths[rows] > j
            rows, parent = rows[keep], node[keep] if j else np.zeros(int(keep.sum()), np.int64)
            ch = self.chars[self.starts[ids[rows]] + j]
            # sorted texts: the tokens sharing a prefix are neighbours, so a new node starts where
            # the parent or the character changes
            new = np.ones(len(rows), bool)
            new[1:] = (parent[1:] != parent[:-1]) | (ch[1:] != ch[:-1])
            node = np.cumsum(new) - 1
            parents.append(parent[new].astype(np.int32))
            chars.append(ch[new])
            ends = lengths[rows] == j + 1
            token_node[ids[rows[ends]]] = offsets[-1] + node[ends]
            offsets.append(offsets[-1] + int(new.sum()))
        return Trie(parents, chars, offsets, token_node)

    @cached_property
    def _sorted(self) -> tuple[list[str], np.ndarray]:
        order = sorted(self.nonempty.tolist(), key=lambda i: self.texts[i])
        return [self.texts[i] for i in order], np.asarray(order, np.int64)  # type: ignore[misc]

    @property
    def sorted_ids(self) -> np.ndarray:
        """int64: token ids in the order of their texts (code point order)."""
        return self._sorted[1]

    def prefix_range(self, prefix: str, lo: int = 0, hi: int | None = None) -> tuple[int, int]:
        """[a, b): the positions in sorted_ids of the tokens whose text starts with `prefix`
        (searched within [lo, hi))."""
        texts = self._sorted[0]
        hi = len(texts) if hi is None else hi
        a = bisect.bisect_left(texts, prefix, lo, hi)
        return a, bisect.bisect_left(texts, prefix + "\U0010ffff", a, hi)

    @cached_property
    def word_char(self) -> np.ndarray:
        """bool [alphabet]: word characters (letter, digit, _), as grammar.is_word_char."""
        return np.array([c.isalnum() or c == "_" for c in self.alphabet], bool)

    @cached_property
    def word_start(self) -> np.ndarray:
        """Packed bits of the tokens whose text starts with a word character."""
        return pack(self.valid & self.word_char[self.first_char])

    @cached_property
    def valid_bits(self) -> np.ndarray:
        return pack(self.valid)

    @cached_property
    def partial_split(self) -> list[tuple[int, str, bytes]]:
        """(id, complete characters, bytes of the unfinished last one) of each partial token,
        as read from the start of a character."""
        out = []
        for tid, raw in self.partial.items():
            decoder = codecs.getincrementaldecoder("utf-8")()
            try:
                text = decoder.decode(raw, final=False)
            except UnicodeDecodeError:
                continue  # never valid UTF-8 after a character boundary
            out.append((tid, text, decoder.getstate()[0]))
        return out

    @cached_property
    def partial_by_text(self) -> dict[str, tuple[np.ndarray, dict[bytes, np.ndarray]]]:
        """partial_split grouped by the complete characters, then by the unfinished bytes:
        text -> (all its ids, {tail: ids}). The grammar reads each text once per state."""
        groups: dict[str, dict[bytes, list[int]]] = {}
        for tid, text, tail in self.partial_split:
            groups.setdefault(text, {}).setdefault(tail, []).append(tid)
        return {
            text: (np.asarray(sorted(i for ids in tails.values() for i in ids), np.int64),
                   {tail: np.asarray(ids, np.int64) for tail, ids in tails.items()})
            for text, tails in groups.items()
        }


# value holds the tokenizer too, so its id() cannot be reused by another object while cached
_VOCABS: dict[tuple[int, int], tuple[Any, TokenVocab]] = {}


def vocab_for(tokenizer: Any, vocab_size: int) -> TokenVocab:
    """One TokenVocab per (tokenizer, model vocab size), built on first use (~1 s for 50k tokens)."""
    key = (id(tokenizer), vocab_size)
    if key not in _VOCABS:
        vocab = TokenVocab.from_tokenizer(tokenizer, vocab_size)
        vocab.trie, vocab.prefix_range("")  # the masks' indexes, now rather than in a first mask
        _VOCABS[key] = (tokenizer, vocab)
    return _VOCABS[key][1]
