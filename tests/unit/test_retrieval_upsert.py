"""UpsertTransaction: one upsert request, invisible until its commit, gone without trace otherwise
(SQLite store, bundled embedder, real index files)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from ragloom.errors import Cancelled, FailedPrecondition, NotFound
from ragloom.retrieval.collections import CollectionManager, Document
from ragloom.retrieval.embed import Embedder

OLD = [
    Document("cat", "The cat sat on the mat and purred.", {"rev": 1}),
    Document("bread", "Knead the dough, let it rise, then bake the bread at 220 degrees.", {"rev": 1}),
]
NEW = [
    Document("cat", "Volcanoes erupt molten lava over the village.", {"rev": 2}),  # replaces "cat"
    Document("ash", "Volcanic ash clouds ground flights across Europe.", {"rev": 2}),
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(device="cpu")


class CountingEmbedder:
    """The real embedder, counting encode() calls and running a hook after each one."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self.calls = 0
        self.after_encode: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, texts: Any, show_progress: bool = False) -> np.ndarray:
        out = self._inner.encode(texts, show_progress)
        self.calls += 1
        if self.after_encode is not None:
            self.after_encode()
        return out


@pytest.fixture
def counting(embedder: Embedder) -> CountingEmbedder:
    return CountingEmbedder(embedder)


@pytest.fixture
def mgr(tmp_path, counting):  # noqa: ANN001, ANN201
    m = CollectionManager(tmp_path, embedder=counting)  # type: ignore[arg-type]
    m.create_collection("c")
    m.upsert("c", OLD)
    yield m
    m.close()


def _state(m: CollectionManager) -> tuple[int, int, list[tuple[str, str, Any]]]:
    info = m.get_collection("c")
    hits = m.search("c", "volcano eruption lava", k=5)
    return info.documents, info.chunks, sorted((h.id, h.text, h.metadata["rev"]) for h in hits)


def test_nothing_is_visible_before_the_commit(mgr: CollectionManager) -> None:
    before = _state(mgr)
    with mgr.begin_upsert("c") as tx:
        assert tx.add(NEW[:1]).documents == 1 and tx.add(NEW[1:]).documents == 1
        assert (tx.documents, tx.chunks) == (2, 2)
        assert _state(mgr) == before  # searches keep working, and see the old state
        result = tx.commit()
    assert (result.documents, result.chunks) == (2, 2)
    docs, chunks, hits = _state(mgr)
    assert (docs, chunks) == (3, 3)
    assert ("cat", NEW[0].text, 2) in hits and ("ash", NEW[1].text, 2) in hits


def test_rollback_leaves_no_trace_also_after_reopening(mgr: CollectionManager, tmp_path, counting) -> None:  # noqa: ANN001
    before = _state(mgr)
    with mgr.begin_upsert("c") as tx:
        tx.add(NEW)
        tx.add_vectors([Document("v", "a precomputed one")], np.ones((1, 384), np.float32))
    assert tx.state == "rolled back"  # leaving the block without commit()
    with pytest.raises(Cancelled):
        tx.add(NEW)
    assert _state(mgr) == before and ("cat", OLD[0].text, 1) in before[2]
    mgr.close()
    again = CollectionManager(tmp_path, embedder=counting)  # type: ignore[arg-type]
    try:
        assert _state(again) == before
    finally:
        again.close()


def test_rollback_from_another_thread_stops_embedding(mgr: CollectionManager, counting: CountingEmbedder) -> None:
    before = _state(mgr)
    many = [Document(f"d{i}", f"Document {i} is about topic {i % 7} and rather short.") for i in range(500)]
    tx = mgr.begin_upsert("c")
    counting.calls = 0

    def leave() -> None:  # after the first embedder batch the client "leaves": rollback on another thread
        if counting.calls == 1:
            t = threading.Thread(target=tx.rollback)
            t.start()
            t.join()

    counting.after_encode = leave
    with pytest.raises(Cancelled):
        tx.add(many)
    batches = -(-len(many) // counting.batch_size)
    assert batches > 2 and counting.calls == 1  # stopped at the next batch, not after all of them
    counting.after_encode = None
    assert _state(mgr) == before


def test_a_rollback_during_the_commit_wins(mgr: CollectionManager) -> None:
    before = _state(mgr)
    tx = mgr.begin_upsert("c")
    tx.add(NEW)
    mgr._fault = lambda stage: tx.rollback() if stage == "store" else None  # inside the store transaction
    try:
        with pytest.raises(Cancelled, match="nothing stored"):
            tx.commit()
    finally:
        mgr._fault = None
    assert tx.state == "rolled back" and _state(mgr) == before


def test_collection_recreated_meanwhile_is_not_written(mgr: CollectionManager) -> None:
    tx = mgr.begin_upsert("c")
    tx.add(NEW)
    mgr.delete_collection("c")
    mgr.create_collection("c")
    with pytest.raises(NotFound, match="re-created"):
        tx.commit()
    assert mgr.get_collection("c").documents == 0


def test_repeated_ids_last_wins_and_a_transaction_ends_once(mgr: CollectionManager) -> None:
    with mgr.begin_upsert("c") as tx:
        tx.add([Document("y", "first version")])
        tx.add([Document("y", "second version")])
        assert tx.commit().documents == 2  # both acknowledged, as sequential upserts would be
    assert tx.document_ids == ["y"]
    assert [h.text for h in mgr.search("c", "version", k=5) if h.id == "y"] == ["second version"]
    assert mgr.get_collection("c").documents == 3
    with pytest.raises(FailedPrecondition, match="committed"):
        tx.add([Document("z", "too late")])
    with pytest.raises(FailedPrecondition, match="committed"):
        tx.commit()
    with pytest.raises(NotFound):
        mgr.begin_upsert("missing")
