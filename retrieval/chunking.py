"""Token-aware chunking with the embedder's own tokenizer, so a chunk never gets truncated.

Windows of `chunk_tokens` tokens advance by `chunk_tokens - overlap`; each chunk's text is the
exact character span of its tokens in the original (offset mapping), so no detokenization
artefacts, and its offsets are stored with it (search hits report them). Chunk ids are stable: `<doc id>#<index>`, plus a content hash to detect changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ragloom.errors import InvalidArgument


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    index: int
    text: str
    # where `text` lies in the document's text, in characters (code points, as Python indexes
    # str): text == document[start:end]
    start: int
    end: int
    content_hash: str


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index}"


def chunk_text(doc_id: str, text: str, tokenizer, chunk_tokens: int, overlap: int) -> list[Chunk]:  # noqa: ANN001
    """Split `text` into overlapping token windows (a transformers fast tokenizer)."""
    if chunk_tokens < 1:
        raise InvalidArgument(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise InvalidArgument(f"chunk_overlap must be in [0, chunk_tokens), got {overlap}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = enc["offset_mapping"]
    if len(offsets) <= chunk_tokens:
        # one chunk: the text without its surrounding whitespace, and the offsets of exactly that
        # span, so that text == document[start:end] holds for every chunk (Hit.start_char/end_char)
        start = len(text) - len(text.lstrip())
        end = max(start, len(text.rstrip()))
        piece = text[start:end]
        return [Chunk(chunk_id(doc_id, 0), 0, piece, start, end, content_hash(piece))]
    chunks: list[Chunk] = []
    step = chunk_tokens - overlap
    start_tok = 0
    while True:
        end_tok = min(start_tok + chunk_tokens, len(offsets))
        start, end = offsets[start_tok][0], offsets[end_tok - 1][1]
        piece = text[start:end]
        i = len(chunks)
        chunks.append(Chunk(chunk_id(doc_id, i), i, piece, start, end, content_hash(piece)))
        if end_tok >= len(offsets):
            break
        start_tok += step
    return chunks
