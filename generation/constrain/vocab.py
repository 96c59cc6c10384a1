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
    def by_length(self) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
        """The tokens with text, longest first, and their characters column by column:
        (order, counts, columns) where columns[j][i] is character j of token order[i] for the
        counts[j] tokens longer than j. Column j of the first n tokens is then a contiguous slice."""
        order = self.nonempty[np.argsort(-self.lengths[self.nonempty], kind="stable")]
        lengths = self.lengths[order]
        width = int(lengths[0]) if len(lengths) else 0
        counts = [int(np.count_nonzero(lengths > j)) for j in range(width)]
        columns = [self.chars[self.starts[order[:n]] + j] for j, n in enumerate(counts)]
        return order, counts, columns

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
    def word_start(self) -> np.ndarray:
        """Packed bits of the tokens whose text starts with a word character (letter, digit, _)."""
        word = np.array([c.isalnum() or c == "_" for c in self.alphabet], bool)
        return pack(self.valid & word[self.first_char])

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
    def partial_by_text(self) -> dict[str, list[tuple[int, bytes]]]:
        """partial_split grouped by the complete characters: the grammar reads each group's once."""
        out: dict[str, list[tuple[int, bytes]]] = {}
        for tid, text, tail in self.partial_split:
            out.setdefault(text, []).append((tid, tail))
        return out


# value holds the tokenizer too, so its id() cannot be reused by another object while cached
_VOCABS: dict[tuple[int, int], tuple[Any, TokenVocab]] = {}


def vocab_for(tokenizer: Any, vocab_size: int) -> TokenVocab:
    """One TokenVocab per (tokenizer, model vocab size), built on first use (~1 s for 50k tokens)."""
    key = (id(tokenizer), vocab_size)
    if key not in _VOCABS:
        vocab = TokenVocab.from_tokenizer(tokenizer, vocab_size)
        vocab.by_length, vocab.prefix_range("")  # the masks' indexes, now rather than in a first mask
        _VOCABS[key] = (tokenizer, vocab)
    return _VOCABS[key][1]
