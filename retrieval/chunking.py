"""Token-aware chunking with the embedder's own tokenizer, so a chunk never gets truncated.

Windows of `chunk_tokens` tokens advance by `chunk_tokens - overlap`; each chunk's text is the
exact character span of its tokens in the original (offset mapping), so no detokenization
artefacts. Chunk ids are stable: `<doc id>#<index>`, plus a content hash to detect changes.
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
    start: int  # character offsets into the document text
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
        stripped = text.strip()
        return [Chunk(chunk_id(doc_id, 0), 0, stripped, 0, len(text), content_hash(stripped))]
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
