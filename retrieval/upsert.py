"""One upsert request as one transaction: staged as it arrives, visible only once committed.

`CollectionManager.begin_upsert(name)` opens an UpsertTransaction; `add()` chunks, embeds and
stages documents, `commit()` writes all of them at once, `rollback()` (also from another
thread, or by leaving the `with` block without a commit) drops them. Until the commit nothing
of the request is anywhere a reader or a restart could see it: no SQL rows, no faiss ids, no
int8 rows. Documents it would have replaced keep their old version.

Why stage in memory rather than hold a database transaction open for the whole request:
SQLite has one writer per database, so a transaction held open while a long request embeds
would stall every other write (other collections too) past the busy timeout, and on PostgreSQL
the collection row's lock would have to be taken before the in-process index lock, inverting
the order every other writer uses. Staged work is written at commit in one short transaction,
exactly as a single batch was before. The price is memory: a request holds its chunks (text and
a float32 vector, ~2-3 KB each for a 384-d model) until it commits, so a caller ingesting
millions of documents sends several requests, each of them atomic.

Crash safety needs nothing new: a process that dies before the commit wrote nothing, and one
that dies during it leaves the store's transaction to the database; the index folder records the
store version it reflects and is rebuilt from the store when they differ (see collections.py).

Cancellation: `rollback()` is safe from any thread. An `add()` in progress stops between two
embedding slices (one embedder batch each) and raises Cancelled; `commit()` checks it inside the
database transaction, right before committing, so a request cancelled before that point is
never stored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ragloom.errors import Cancelled, FailedPrecondition, InvalidArgument, NotFound
from ragloom.retrieval.chunking import Chunk, chunk_id, chunk_text, content_hash
from ragloom.retrieval.collections import (
    CollectionManager,
    Document,
    UpsertResult,
    _as_vectors,
    _validate_docs,
    _validated_docs,
    collection_not_found,
)
from ragloom.retrieval.store import CollectionRow


@dataclass(frozen=True)
class _Staged:
    doc: Document
    chunks: list[Chunk]
    vectors: np.ndarray  # (len(chunks), dim) float32, normalized


class UpsertTransaction:
    """Documents embedded and held for one collection; written by commit(), dropped otherwise."""

    def __init__(self, manager: CollectionManager, name: str) -> None:
        self._mgr = manager
        self.name = name
        with manager.store.session() as s:
            row = manager._row(s, name)  # NotFound now, not after the first batch was embedded
        # SQLite may hand a re-created collection the same row id: the creation time tells them apart
        self._identity = (row.id, row.created_at)
        self._dim = row.dim
        self._model = row.model
        self._chunk_tokens = row.chunk_tokens
        self._chunk_overlap = row.chunk_overlap
        # doc id -> its latest version in this request (a repeated id: the last one wins)
        self._staged: dict[str, _Staged] = {}
        self._guard = threading.Lock()  # _staged and _state, between add/commit and cancel
        self._cancel = threading.Event()
        self._state = "open"  # -> "committing" -> "committed" | "rolled back"
        # Acknowledged so far: every document received and staged (a repeated id counts each
        # time, as sequential upserts would), and the chunks made for them.
        self.documents = 0
        self.chunks = 0
        self.document_ids: list[str] = []  # once committed: the distinct ids stored

    # ------------------------------------------------------------------ staging

    def add(self, docs: Iterable[Document]) -> UpsertResult:
        """Chunk, embed and stage these documents; returns this batch's counts."""
        batch = _validate_docs(docs)
        self._check_open()
        emb = self._mgr.embedder
        if self._model != emb.model_id or self._dim != emb.dim:
            raise FailedPrecondition(
                f"collection {self.name!r} was built with {self._model} ({self._dim}-d); this server embeds with "
                f"{emb.model_id} ({emb.dim}-d)"
            )
        # The embedder truncates past its window; never make chunks it would cut.
        window = min(self._chunk_tokens, max(8, emb.max_seq_length - 2))
        overlap = min(self._chunk_overlap, window - 1)
        per_doc = [chunk_text(d.id, d.text, emb.tokenizer, window, overlap) for d in batch]
        texts = [c.text for chunks in per_doc for c in chunks]
        # One embedder batch at a time: a cancel waits for at most one batch, and searches
        # (which embed their query on the same, serialized embedder) interleave with a long add.
        step = max(1, int(getattr(emb, "batch_size", 64)))
        parts = []
        for start in range(0, len(texts), step):
            self._check_open()
            parts.append(emb.encode(texts[start : start + step]))
        vectors = np.concatenate(parts) if parts else np.zeros((0, self._dim), np.float32)
        return self._stage(batch, per_doc, vectors)

    def add_vectors(self, docs: Iterable[Document], vectors: np.ndarray) -> UpsertResult:
        """Precomputed embeddings, one per document (each document becomes one chunk: its whole text)."""
        docs = list(docs)
        positioned = _validated_docs(docs)
        vectors = _as_vectors(vectors, self._dim, "vectors", lambda row: f"documents[{row}].vector")
        if len(vectors) != len(docs):
            raise InvalidArgument(f"got {len(vectors)} vectors for {len(docs)} documents", field="documents")
        batch = [d for _, d in positioned]
        # a repeated id keeps its last version, and that version's vector
        kept = vectors[[n for n, _ in positioned]] if positioned else vectors[:0]
        per_doc = [[Chunk(chunk_id(d.id, 0), 0, d.text, 0, len(d.text), content_hash(d.text))] for d in batch]
        return self._stage(batch, per_doc, kept)

    def _stage(self, docs: list[Document], per_doc: list[list[Chunk]], vectors: np.ndarray) -> UpsertResult:
        with self._guard:
            self._check_open()
            at = 0
            for d, chunks in zip(docs, per_doc):
                self._staged.pop(d.id, None)  # re-inserted: commit writes in last-write order
                self._staged[d.id] = _Staged(d, chunks, vectors[at : at + len(chunks)])
                at += len(chunks)
            self.documents += len(docs)
            self.chunks += at
        return UpsertResult(len(docs), at)

    # ------------------------------------------------------------------ ending

    def commit(self) -> UpsertResult:
        """Write everything staged in one store transaction, then the index; the counts acknowledged."""
        with self._guard:
            self._check_open()
            self._state = "committing"
            staged = list(self._staged.values())
        try:
            if staged:
                vectors = np.concatenate([st.vectors for st in staged]).astype(np.float32, copy=False)
                self._mgr._write(
                    self.name, [st.doc for st in staged], [st.chunks for st in staged], vectors,
                    before_commit=self._before_commit,
                )
            else:
                self._before_commit(None)  # an empty request commits nothing, but a cancel still wins
        except BaseException:
            self._end("rolled back")
            raise
        self.document_ids = [st.doc.id for st in staged]
        self._end("committed")
        return UpsertResult(self.documents, self.chunks)

    def _before_commit(self, row: CollectionRow | None) -> None:
        """Called inside the store transaction, right before it commits."""
        if self._cancel.is_set():
            raise Cancelled(f"upsert into {self.name!r} cancelled before its commit: nothing stored")
        if row is not None and (row.id, row.created_at) != self._identity:
            gone = collection_not_found(self.name)
            raise NotFound(
                f"collection {self.name!r} was deleted (and re-created) during the upsert: nothing stored",
                reason=gone.reason, metadata=gone.metadata,
            )

    def rollback(self) -> None:
        """Drop everything staged; safe from any thread. An add() in progress stops at its next
        embedding batch, a commit in progress fails before the store commits; a no-op once committed."""
        self._cancel.set()
        with self._guard:
            if self._state == "open":
                self._state = "rolled back"
                self._staged.clear()

    def _check_open(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"upsert into {self.name!r} cancelled: nothing stored")
        if self._state != "open":
            raise FailedPrecondition(f"upsert into {self.name!r} is {self._state}; start a new one")

    def _end(self, state: str) -> None:
        with self._guard:
            self._state = state
            self._staged.clear()

    @property
    def state(self) -> str:
        return self._state

    def __enter__(self) -> UpsertTransaction:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state != "committed":
            self.rollback()
