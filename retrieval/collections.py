"""The facade the gRPC Retrieval service calls: named collections of documents, upsert, search.

Consistency model: the store (SQLite/PostgreSQL) is the truth, the index folder a cache of it.
An upsert or delete commits to the store first (one transaction), then applies the change to the
in-memory index and saves it atomically, recording the store version it reflects. If anything
fails after the commit, the in-memory index is dropped and the call still succeeds (the change is
stored); the next access sees a saved version older than the store's and rebuilds from the stored
vectors (no re-embedding). If the transaction fails, nothing changed anywhere.

An upsert of many batches is one UpsertTransaction (upsert.py, `begin_upsert`): its batches are
embedded and staged as they arrive and written by one commit, so a cancelled or failed request
leaves nothing behind.

Thread-safety: every operation on a collection holds that collection's lock (faiss indexes must
not be searched while ids are added or removed); different collections proceed in parallel.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, select

from ragloom.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from ragloom.retrieval.chunking import Chunk, content_hash
from ragloom.retrieval.embed import Embedder
from ragloom.retrieval.index import KINDS, VectorIndex, resolve_kind, saved_kind
from ragloom.retrieval.search import matches, search, validate_filter
from ragloom.retrieval.store import (
    ChunkRow,
    CollectionRow,
    DocumentRow,
    Store,
    blob_vector,
    sqlite_url,
    vector_blob,
)

if TYPE_CHECKING:
    from ragloom.retrieval.upsert import UpsertTransaction

log = logging.getLogger(__name__)

MAX_UPSERT_BATCH = 10_000
MAX_K = 1000
MAX_OVERSAMPLE = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str  # document id
    chunk_id: str  # "<document id>#<chunk_index>"
    score: float  # cosine similarity of the embeddings, higher is more similar
    text: str
    metadata: dict[str, Any]
    chunk_index: int = 0  # the chunk's position in its document, from 0
    # Where `text` lies in the document's text, in characters: text == document[start_char:end_char].
    # None for chunks stored before the store kept offsets (their document text is not stored,
    # so they cannot be recovered); re-upserting the document fills them in.
    start_char: int | None = None
    end_char: int | None = None


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    model: str
    documents: int
    chunks: int
    index: str  # the kind in use ("flat" | "ivf"); for "auto", what the last build chose
    created_at: datetime
    chunk_tokens: int = 256
    chunk_overlap: int = 32
    metadata: dict[str, Any] = field(default_factory=dict)
    index_requested: str = "auto"  # as given on create: "auto" | "flat" | "ivf"


@dataclass(frozen=True)
class UpsertResult:
    documents: int
    chunks: int


class CollectionManager:
    def __init__(
        self,
        data_dir: Path,
        store_url: str | None = None,
        embedder: Embedder | None = None,
        *,
        store_schema: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(store_url or sqlite_url(self.data_dir), schema=store_schema)
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._device = device  # binary search device ("cuda": faiss-gpu or the torch kernel)
        self._indexes: dict[str, VectorIndex] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        # Fault injection for tests: called with a stage name ("store": inside the transaction,
        # "index": after the commit, before the index is saved).
        self._fault: Callable[[str], None] | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def embedder(self) -> Embedder:
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = Embedder()
            return self._embedder

    def _lock(self, name: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.RLock())

    def _row(self, session, name: str, for_update: bool = False) -> CollectionRow:  # noqa: ANN001
        q = select(CollectionRow).where(CollectionRow.name == name)
        if for_update:
            q = q.with_for_update()
        row = session.scalars(q).one_or_none()
        if row is None:
            raise collection_not_found(name)
        return row

    def _folder(self, row: CollectionRow) -> Path:
        # The row id in the name keeps a re-created collection from picking up an old folder.
        return self.data_dir / "indexes" / f"{row.name}-{row.id}"

    def _index(self, row: CollectionRow) -> VectorIndex:
        """The index reflecting the store's current version: cached, loaded, or rebuilt."""
        idx = self._indexes.get(row.name)
        if idx is not None and idx.store_version == row.version and idx.folder == self._folder(row):
            return idx
        if idx is not None:
            idx.close()
        idx = VectorIndex.load(self._folder(row), device=self._device)
        if idx is None or idx.store_version != row.version:
            if idx is not None:
                log.warning("index of %r is at store version %d, store at %d: rebuilding", row.name,
                            idx.store_version, row.version)
                idx.close()
            idx = self._rebuild(row)
        self._indexes[row.name] = idx
        return idx

    def _rebuild(self, row: CollectionRow) -> VectorIndex:
        with self.store.session() as s:
            pairs = s.execute(
                select(ChunkRow.slot, ChunkRow.vector).where(ChunkRow.collection_id == row.id).order_by(ChunkRow.slot)
            ).all()
        slots = np.array([p[0] for p in pairs], dtype=np.int64)
        vectors = (
            np.stack([blob_vector(p[1], row.dim) for p in pairs]) if pairs else np.zeros((0, row.dim), np.float32)
        )
        idx = VectorIndex(self._folder(row), row.dim, row.index_kind, device=self._device)
        idx.build(slots, vectors)
        idx.save(row.version)
        return idx

    def warm(self) -> int:
        """Bring every collection's index up to the store's version (loaded, or rebuilt from the
        stored vectors); how many collections there are. Searches check the version anyway, so
        this only moves the catching up before a replica reports ready."""
        with self.store.session() as s:
            names = list(s.scalars(select(CollectionRow.name)).all())
        for name in names:
            with self._lock(name), self.store.session() as s:
                row = s.scalars(select(CollectionRow).where(CollectionRow.name == name)).one_or_none()
                if row is not None:  # else deleted meanwhile
                    self._index(row)
        return len(names)

    def rebuild_index(self, name: str) -> None:
        """Throw the index files away and rebuild them from the stored vectors."""
        with self._lock(name):
            with self.store.session() as s:
                row = self._row(s, name)
            old = self._indexes.pop(name, None)
            if old is not None:
                old.close()
            shutil.rmtree(self._folder(row), ignore_errors=True)
            self._indexes[name] = self._rebuild(row)

    def _info(self, session, row: CollectionRow) -> CollectionInfo:  # noqa: ANN001
        docs = session.scalar(select(func.count()).select_from(DocumentRow).where(DocumentRow.collection_id == row.id))
        chunks = session.scalar(select(func.count()).select_from(ChunkRow).where(ChunkRow.collection_id == row.id))
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        return CollectionInfo(
            row.name, row.dim, row.model, int(docs or 0), int(chunks or 0), self._kind_in_use(row, int(chunks or 0)),
            created, row.chunk_tokens, row.chunk_overlap, dict(row.meta or {}), row.index_kind,
        )

    def _kind_in_use(self, row: CollectionRow, chunks: int) -> str:
        """The index kind searches use: the loaded index's, else the saved manifest's, else what a
        build of `chunks` vectors would pick. Never loads or rebuilds an index (listing stays cheap)."""
        idx = self._indexes.get(row.name)
        if idx is not None and idx.folder == self._folder(row):
            return idx.kind
        return saved_kind(self._folder(row)) or resolve_kind(row.index_kind, chunks)

    # ------------------------------------------------------------------ collections

    def create_collection(
        self,
        name: str,
        *,
        index: str = "auto",
        chunk_tokens: int = 256,
        chunk_overlap: int = 32,
        metadata: dict | None = None,
    ) -> CollectionInfo:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgument(
                f"collection name {name!r} is invalid: 1-128 characters of letters, digits, '_', '-', '.', "
                "starting with a letter or digit",
                field="name",
            )
        if index not in KINDS:
            raise InvalidArgument(f"index must be one of {', '.join(KINDS)}, got {index!r}", field="index")
        if not isinstance(chunk_tokens, int) or not 8 <= chunk_tokens <= 8192:
            raise InvalidArgument(
                f"chunk_tokens must be an integer in [8, 8192], got {chunk_tokens!r}", field="chunk_tokens"
            )
        if not isinstance(chunk_overlap, int) or not 0 <= chunk_overlap < chunk_tokens:
            raise InvalidArgument(
                f"chunk_overlap must be in [0, chunk_tokens={chunk_tokens}), got {chunk_overlap!r}",
                field="chunk_overlap",
            )
        _check_json(metadata or {}, f"metadata of collection {name!r}", "metadata")
        emb = self.embedder
        with self._lock(name), self.store.session() as s, s.begin():
            if s.scalars(select(CollectionRow).where(CollectionRow.name == name)).one_or_none() is not None:
                raise AlreadyExists(
                    f"collection {name!r} already exists", reason="COLLECTION_EXISTS", metadata={"collection": name}
                )
            row = CollectionRow(
                name=name, dim=emb.dim, model=emb.model_id, index_kind=index, chunk_tokens=chunk_tokens,
                chunk_overlap=chunk_overlap, meta=dict(metadata or {}), created_at=datetime.now(UTC),
                version=0, next_slot=0,
            )
            s.add(row)
            s.flush()
            return self._info(s, row)

    def delete_collection(self, name: str) -> None:
        with self._lock(name):
            with self.store.session() as s, s.begin():
                row = self._row(s, name, for_update=True)
                folder = self._folder(row)
                # Explicit deletes: not every backend enforces ON DELETE CASCADE.
                s.execute(delete(ChunkRow).where(ChunkRow.collection_id == row.id))
                s.execute(delete(DocumentRow).where(DocumentRow.collection_id == row.id))
                s.delete(row)
            idx = self._indexes.pop(name, None)
            if idx is not None:
                idx.close()
            shutil.rmtree(folder, ignore_errors=True)

    def list_collections(self) -> list[CollectionInfo]:
        with self.store.session() as s:
            rows = s.scalars(select(CollectionRow).order_by(CollectionRow.name)).all()
            return [self._info(s, r) for r in rows]

    def get_collection(self, name: str) -> CollectionInfo:
        with self.store.session() as s:
            return self._info(s, self._row(s, name))

    def chunk_texts(self, name: str, doc_ids: Iterable[str] | None = None) -> list[str]:
        """The stored chunk texts of a collection (of the given documents only, when doc_ids is
        given), in document and chunk order: exactly the texts search returns as Hit.text."""
        with self.store.session() as s:
            row = self._row(s, name)
            query = (
                select(ChunkRow.text)
                .join(DocumentRow, ChunkRow.document_id == DocumentRow.id)
                .where(ChunkRow.collection_id == row.id)
                .order_by(DocumentRow.doc_id, ChunkRow.idx)
            )
            if doc_ids is None:
                return list(s.scalars(query))
            ids = list(dict.fromkeys(doc_ids))
            texts: list[str] = []
            for start in range(0, len(ids), 500):  # bounded IN lists
                texts.extend(s.scalars(query.where(DocumentRow.doc_id.in_(ids[start : start + 500]))))
            return texts

    # ------------------------------------------------------------------ writes

    def begin_upsert(self, name: str) -> UpsertTransaction:
        """A transaction for one upsert request: add() batches, then commit() (or rollback())."""
        from ragloom.retrieval.upsert import UpsertTransaction  # it builds on this module

        return UpsertTransaction(self, name)

    def upsert(self, name: str, docs: Iterable[Document]) -> UpsertResult:
        """Chunk, embed and store these documents in one transaction."""
        with self.begin_upsert(name) as tx:
            tx.add(docs)
            return tx.commit()

    def upsert_vectors(self, name: str, docs: Iterable[Document], vectors: np.ndarray) -> UpsertResult:
        """Precomputed embeddings, one per document (each document becomes one chunk)."""
        with self.begin_upsert(name) as tx:
            tx.add_vectors(docs, vectors)
            return tx.commit()

    def _write(
        self,
        name: str,
        docs: list[Document],
        per_doc: list[list[Chunk]],
        vectors: np.ndarray,
        before_commit: Callable[[CollectionRow], None] | None = None,
    ) -> UpsertResult:
        """Store these documents (replacing same ids) in one transaction, then update the index.
        before_commit(row) runs inside the transaction, last; raising there rolls it back."""
        with self._lock(name):
            with self.store.session() as s, s.begin():
                row = self._row(s, name, for_update=True)
                _, old_slots = self._delete_docs(s, row, [d.id for d in docs])
                slot = row.next_slot
                new_slots = []
                vi = 0
                for d, chunks in zip(docs, per_doc):
                    drow = DocumentRow(
                        collection_id=row.id, doc_id=d.id, meta=dict(d.metadata), content_hash=content_hash(d.text),
                        updated_at=datetime.now(UTC),
                    )
                    for c in chunks:
                        drow.chunks.append(
                            ChunkRow(
                                collection_id=row.id, chunk_id=c.chunk_id, idx=c.index, text=c.text,
                                content_hash=c.content_hash, slot=slot, vector=vector_blob(vectors[vi]),
                                start_char=c.start, end_char=c.end,
                            )
                        )
                        new_slots.append(slot)
                        slot += 1
                        vi += 1
                    s.add(drow)
                row.next_slot = slot
                row.version += 1
                s.flush()
                if self._fault:
                    self._fault("store")
                if before_commit is not None:
                    before_commit(row)
            self._apply_committed(row, old_slots, np.array(new_slots, np.int64), vectors)
        return UpsertResult(len(docs), len(new_slots))

    def _delete_docs(self, s, row: CollectionRow, doc_ids: list[str]) -> tuple[int, np.ndarray]:  # noqa: ANN001
        """Delete these documents and their chunks inside the caller's transaction:
        (documents deleted, their chunks' slots)."""
        if not doc_ids:
            return 0, np.zeros(0, np.int64)
        slots: list[int] = []
        found: list[int] = []
        for start in range(0, len(doc_ids), 500):  # bounded IN lists
            batch = doc_ids[start : start + 500]
            rows = s.execute(
                select(DocumentRow.id, ChunkRow.slot)
                .outerjoin(ChunkRow, ChunkRow.document_id == DocumentRow.id)
                .where(DocumentRow.collection_id == row.id, DocumentRow.doc_id.in_(batch))
            ).all()
            found.extend({r[0] for r in rows})
            slots.extend(r[1] for r in rows if r[1] is not None)
        if found:
            s.execute(delete(ChunkRow).where(ChunkRow.document_id.in_(found)))
            s.execute(delete(DocumentRow).where(DocumentRow.id.in_(found)))
        return len(found), np.array(slots, dtype=np.int64)

    def _apply(self, row: CollectionRow, removed: np.ndarray, slots: np.ndarray, vectors: np.ndarray) -> None:
        """Bring the index from version-1 to the committed version; on failure, drop it (rebuild later)."""
        try:
            idx = self._indexes.get(row.name)
            if idx is None or idx.store_version != row.version - 1:
                # Not in memory or behind: loading/rebuilding yields the committed state directly.
                self._indexes.pop(row.name, None)
                self._index(row)
                return
            idx.remove(removed)
            if len(slots):
                idx.add(slots, vectors)
            if self._fault:
                self._fault("index")
            if idx.needs_recalibration():
                idx.close()
                self._indexes[row.name] = self._rebuild(row)
            else:
                idx.save(row.version)
        except BaseException:
            stale = self._indexes.pop(row.name, None)
            if stale is not None:
                stale.close()
            raise

    def _apply_committed(self, row: CollectionRow, removed: np.ndarray, slots: np.ndarray, vectors: np.ndarray) -> None:
        """_apply after a commit: the change is stored, so an index failure does not fail the call
        (that would tell the caller "not stored"); the dropped index is rebuilt on next use."""
        try:
            self._apply(row, removed, slots, vectors)
        except Exception:
            log.warning("index of %r not updated after commit %d; it is rebuilt from the store on next use",
                        row.name, row.version, exc_info=True)

    def delete(self, name: str, ids: list[str]) -> int:
        if isinstance(ids, str):
            raise InvalidArgument("ids must be a list of document ids, not one string", field="ids")
        for n, i in enumerate(ids):
            if not isinstance(i, str) or not i:
                raise InvalidArgument(f"ids[{n}] must be a non-empty document id string, got {i!r}", field=f"ids[{n}]")
        with self._lock(name):
            with self.store.session() as s, s.begin():
                row = self._row(s, name, for_update=True)
                n, slots = self._delete_docs(s, row, list(dict.fromkeys(ids)))
                if n:
                    row.version += 1
            if n:
                self._apply_committed(row, slots, np.zeros(0, np.int64), np.zeros((0, row.dim), np.float32))
            return n

    # ------------------------------------------------------------------ search

    def search(
        self,
        name: str,
        query: str,
        *,
        k: int = 10,
        filter: dict | None = None,
        oversample: int | None = None,
        group_by_document: bool = False,
    ) -> list[Hit]:
        """The k chunks most similar to query, best first; with group_by_document, the k documents
        with the most similar chunks, each once as its best chunk, ranked by that chunk's score
        (the search goes as deep as it takes to find k documents, or the collection runs out)."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidArgument("query must be a non-empty string", field="query")
        _check_search_args(k, oversample, filter)
        with self.store.session() as s:
            row = self._row(s, name)
        emb = self.embedder
        if row.model != emb.model_id:
            raise FailedPrecondition(f"collection {name!r} was embedded with {row.model}, this server has {emb.model_id}")
        return self._search(name, emb.encode([query])[0], k, filter, oversample, group_by_document)

    def search_vector(
        self,
        name: str,
        vector: np.ndarray,
        *,
        k: int = 10,
        filter: dict | None = None,
        oversample: int | None = None,
        group_by_document: bool = False,
    ) -> list[Hit]:
        _check_search_args(k, oversample, filter)
        with self.store.session() as s:
            row = self._row(s, name)
        q = _as_vectors(vector, row.dim, "vector", lambda _: "vector")[0]
        return self._search(name, q, k, filter, oversample, group_by_document)

    def _search(
        self, name: str, q: np.ndarray, k: int, flt: dict | None, oversample: int | None, group_by_document: bool
    ) -> list[Hit]:
        with self._lock(name), self.store.session() as s:
            row = self._row(s, name)
            idx = self._index(row)
            cache: dict[int, _ChunkView] = {}

            def fetch(slots: np.ndarray) -> None:
                need = [int(x) for x in slots if int(x) not in cache]
                for start in range(0, len(need), 900):
                    for r in s.execute(
                        select(
                            ChunkRow.slot, ChunkRow.chunk_id, ChunkRow.text, DocumentRow.doc_id, DocumentRow.meta,
                            ChunkRow.idx, ChunkRow.start_char, ChunkRow.end_char,
                        )
                        .join(DocumentRow, ChunkRow.document_id == DocumentRow.id)
                        .where(ChunkRow.collection_id == row.id, ChunkRow.slot.in_(need[start : start + 900]))
                    ):
                        cache[r[0]] = _ChunkView(*r[1:])

            keep = None
            if flt:

                def keep(slots: np.ndarray) -> np.ndarray:
                    fetch(slots)
                    return np.array([int(x) in cache and matches(cache[int(x)].meta or {}, flt) for x in slots])

            group = None
            if group_by_document:

                def group(slots: np.ndarray) -> list[Hashable]:
                    fetch(slots)
                    # a slot missing from the store (cannot happen while store and index agree) is
                    # its own group, and is dropped below like any other such slot
                    return [cache[int(x)].doc_id if int(x) in cache else ("missing", int(x)) for x in slots]

            scored = search(idx, q, k, oversample, keep, group)  # None: default_oversample(size)
            fetch(np.array([h.slot for h in scored], np.int64))
            hits = []
            for h in scored:
                if h.slot not in cache:  # cannot happen while store and index agree; never invent a hit
                    continue
                c = cache[h.slot]
                hits.append(
                    Hit(c.doc_id, c.chunk_id, h.score, c.text, dict(c.meta or {}), c.idx, c.start_char, c.end_char)
                )
            return hits

    def close(self) -> None:
        for idx in self._indexes.values():
            idx.close()
        self._indexes.clear()
        self.store.close()

    def __enter__(self) -> CollectionManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- validation


def collection_not_found(name: str) -> NotFound:
    """The error for a collection that does not exist (RagService's Ask answers it too)."""
    return NotFound(f"collection {name!r} does not exist", reason="COLLECTION_NOT_FOUND", metadata={"collection": name})


@dataclass(frozen=True)
class _ChunkView:
    """What search reads of a chunk and its document."""

    chunk_id: str
    text: str
    doc_id: str
    meta: dict[str, Any] | None
    idx: int
    start_char: int | None
    end_char: int | None


def _check_json(value: Any, what: str, field: str) -> None:
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{what} must be an object, got {type(value).__name__}", field=field)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{what} is not JSON-serializable: {e}", field=field) from None


def _validate_docs(docs: Iterable[Document]) -> list[Document]:
    """The documents to store, checked (InvalidArgument naming "documents[i]..."); a repeated id's
    last version wins, as sequential upserts would have it."""
    return [d for _, d in _validated_docs(docs)]


def _validated_docs(docs: Iterable[Document]) -> list[tuple[int, Document]]:
    """_validate_docs with each document's position in `docs` (where its vector is)."""
    out: dict[str, tuple[int, Document]] = {}
    for n, d in enumerate(docs):
        if n >= MAX_UPSERT_BATCH:
            raise ResourceExhausted(
                f"at most {MAX_UPSERT_BATCH} documents per upsert batch (message); split the batch",
                reason="REQUEST_TOO_LARGE", field="documents", metadata={"limit": str(MAX_UPSERT_BATCH)},
            )
        if not isinstance(d, Document):
            raise InvalidArgument(f"document #{n} is a {type(d).__name__}, not a Document", field=f"documents[{n}]")
        if not isinstance(d.id, str) or not d.id:
            raise InvalidArgument(f"document #{n} has an empty id", field=f"documents[{n}].id")
        if len(d.id) > 512:
            raise InvalidArgument(
                f"document {d.id[:40]!r}...: id longer than 512 characters", field=f"documents[{n}].id"
            )
        if not isinstance(d.text, str) or not d.text.strip():
            raise InvalidArgument(f"document {d.id!r} has empty text", field=f"documents[{n}].text")
        _check_json(d.metadata, f"metadata of document {d.id!r}", f"documents[{n}].metadata")
        out[d.id] = (n, d)  # a repeated id within one batch: the last one wins, as sequential upserts would
    return list(out.values())


def _as_vectors(v: np.ndarray, dim: int, what: str, field: Callable[[int], str]) -> np.ndarray:
    """Vectors as normalized float32 rows; InvalidArgument naming field(row) for a bad row."""
    a = np.asarray(v, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != dim:
        raise InvalidArgument(f"{what}: expected dimension {dim}, got shape {tuple(np.shape(v))}", field=field(0))
    finite = np.isfinite(a).all(axis=1)
    if not finite.all():
        raise InvalidArgument(f"{what} contains NaN or infinity", field=field(int(np.argmin(finite))))
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidArgument(f"{what} contains a zero vector", field=field(int(np.argmax(norms[:, 0] == 0))))
    # Normalized like the embedder's output, so scores are cosines on both paths.
    return (a / norms).astype(np.float32)


def _check_search_args(k: int, oversample: int | None, flt: dict | None) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be in [1, {MAX_K}], got {k!r}", field="k")
    if oversample is not None and (
        not isinstance(oversample, int) or isinstance(oversample, bool) or not 1 <= oversample <= MAX_OVERSAMPLE
    ):
        raise InvalidArgument(f"oversample must be in [1, {MAX_OVERSAMPLE}], got {oversample!r}", field="oversample")
    validate_filter(flt)
