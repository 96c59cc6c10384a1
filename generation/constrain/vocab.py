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

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np


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


# value holds the tokenizer too, so its id() cannot be reused by another object while cached
_VOCABS: dict[tuple[int, int], tuple[Any, TokenVocab]] = {}


def vocab_for(tokenizer: Any, vocab_size: int) -> TokenVocab:
    """One TokenVocab per (tokenizer, model vocab size), built on first use (~1 s for 50k tokens)."""
    key = (id(tokenizer), vocab_size)
    if key not in _VOCABS:
        _VOCABS[key] = (tokenizer, TokenVocab.from_tokenizer(tokenizer, vocab_size))
    return _VOCABS[key][1]
