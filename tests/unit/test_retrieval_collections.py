"""CollectionManager end to end on SQLite with the bundled embedder (real model, real files)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ragloom.errors import AlreadyExists, InvalidArgument, NotFound
from ragloom.retrieval.chunking import chunk_text
from ragloom.retrieval.collections import CollectionManager, Document
from ragloom.retrieval.embed import Embedder

DOCS = [
    Document("cat", "The cat sat on the mat and purred.", {"kind": "animal", "lang": "en"}),
    Document("dog", "A dog barked at the postman all morning.", {"kind": "animal", "lang": "en"}),
    Document("qcd", "Quarks interact through the strong force described by QCD.", {"kind": "physics", "lang": "en"}),
    Document("bread", "Knead the dough, let it rise, then bake the bread at 220 degrees.", {"kind": "food", "lang": "en"}),
    Document("hund", "Der Hund schläft im Garten.", {"kind": "animal", "lang": "de"}),
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder(device="cpu")


@pytest.fixture
def mgr(tmp_path, embedder):
    m = CollectionManager(tmp_path, embedder=embedder)
    m.create_collection("c")
    m.upsert("c", DOCS)
    yield m
    m.close()


def _ids(hits):
    return [h.id for h in hits]


def test_embedder_output_is_normalized_float32(embedder):
    v = embedder.encode(["a", "b c"])
    assert v.dtype == np.float32 and v.shape == (2, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)


def test_search_finds_the_relevant_document(mgr):
    hits = mgr.search("c", "a kitten resting on a rug", k=3)
    assert hits[0].id == "cat" and hits[0].chunk_id == "cat#0"
    assert hits[0].text == DOCS[0].text and hits[0].metadata == DOCS[0].metadata
    assert hits[0].score > hits[1].score
    assert mgr.search("c", "baking recipes", k=1)[0].id == "bread"


def test_collection_lifecycle_and_errors(mgr):
    info = mgr.get_collection("c")
    assert (info.name, info.dim, info.model, info.documents, info.chunks) == ("c", 384, "all-minilm-l6-v2", 5, 5)
    assert info.created_at.tzinfo is not None
    with pytest.raises(AlreadyExists):
        mgr.create_collection("c")
    for bad in ("", "a b", "../x", "x" * 200):
        with pytest.raises(InvalidArgument):
            mgr.create_collection(bad)
    with pytest.raises(InvalidArgument):
        mgr.create_collection("d", index="hnsw-nope")
    with pytest.raises(InvalidArgument):
        mgr.create_collection("d", chunk_tokens=64, chunk_overlap=64)
    mgr.create_collection("d")
    assert [c.name for c in mgr.list_collections()] == ["c", "d"]
    mgr.delete_collection("d")
    with pytest.raises(NotFound):
        mgr.get_collection("d")
    with pytest.raises(NotFound):
        mgr.delete_collection("d")
    with pytest.raises(NotFound):
        mgr.search("d", "x")


def test_bad_inputs_are_invalid_argument(mgr):
    with pytest.raises(InvalidArgument, match="empty text"):
        mgr.upsert("c", [Document("ok", "fine"), Document("blank", "  ")])
    with pytest.raises(InvalidArgument, match="empty id"):
        mgr.upsert("c", [Document("", "text")])
    with pytest.raises(InvalidArgument, match="at most"):
        mgr.upsert("c", (Document(str(i), "t") for i in range(10_001)))
    for k in (0, 1001):
        with pytest.raises(InvalidArgument):
            mgr.search("c", "x", k=k)
    with pytest.raises(InvalidArgument):
        mgr.search("c", "   ")
    with pytest.raises(InvalidArgument, match="expected dimension 384"):
        mgr.upsert_vectors("c", [Document("v", "t")], np.ones((1, 12), np.float32))
    with pytest.raises(InvalidArgument, match="operator"):
        mgr.search("c", "x", filter={"kind": {"$regex": "a"}})
    assert mgr.get_collection("c").documents == 5  # nothing was written


def test_upsert_same_id_replaces(mgr):
    mgr.upsert("c", [Document("cat", "Photosynthesis converts light into chemical energy.", {"kind": "plant"})])
    info = mgr.get_collection("c")
    assert (info.documents, info.chunks) == (5, 5)
    hits = mgr.search("c", "a kitten resting on a rug", k=5)
    assert all(h.text != DOCS[0].text for h in hits)
    top = mgr.search("c", "how plants use sunlight", k=1)[0]
    assert top.id == "cat" and top.metadata == {"kind": "plant"}


def test_delete(mgr):
    assert mgr.delete("c", ["cat", "nope", "cat"]) == 1
    assert "cat" not in _ids(mgr.search("c", "a kitten on a rug", k=5))
    assert mgr.get_collection("c").documents == 4
    assert mgr.delete("c", ["nope"]) == 0


def test_filters_equality_and_in(mgr):
    hits = mgr.search("c", "a kitten on a rug", k=5, filter={"kind": "physics"})
    assert _ids(hits) == ["qcd"]
    hits = mgr.search("c", "animals", k=5, filter={"lang": {"$in": ["de"]}, "kind": "animal"})
    assert _ids(hits) == ["hund"]
    hits = mgr.search("c", "animals", k=5, filter={"kind": {"$in": ["food", "physics"]}}, oversample=1)
    assert sorted(_ids(hits)) == ["bread", "qcd"]


def test_persistence_reopen_gives_same_results(mgr, tmp_path, embedder):
    q = "dogs and cats"
    before = mgr.search("c", q, k=5)
    mgr.close()
    again = CollectionManager(tmp_path, embedder=embedder)
    assert again.search("c", q, k=5) == before
    assert again.get_collection("c").documents == 5
    again.close()


def test_rebuild_from_store_without_index_files(mgr, tmp_path, embedder):
    before = mgr.search("c", "strong force", k=5)
    mgr.close()
    shutil.rmtree(tmp_path / "indexes")
    again = CollectionManager(tmp_path, embedder=embedder)
    assert again.search("c", "strong force", k=5) == before
    again.rebuild_index("c")
    assert again.search("c", "strong force", k=5) == before
    again.close()


@pytest.mark.parametrize("stage", ["store", "index"])
def test_interrupted_upsert_leaves_store_and_index_consistent(mgr, tmp_path, embedder, stage):
    def boom(at: str) -> None:
        if at == stage:
            raise RuntimeError(f"injected failure at {stage}")

    mgr._fault = boom
    new = [Document("cat", "Volcanoes erupt molten lava."), Document("new", "Volcanic ash clouds ground flights.")]
    committed = stage == "index"  # the store commit happened before the index step failed
    if committed:
        # stored, so the call succeeds: an error would tell the caller "not stored"
        assert mgr.upsert("c", new).documents == 2
        assert "c" not in mgr._indexes  # the half-updated index was dropped, rebuilt on next use
    else:
        with pytest.raises(RuntimeError, match="injected"):
            mgr.upsert("c", new)
    mgr._fault = None
    info = mgr.get_collection("c")
    assert info.documents == (6 if committed else 5)
    hits = mgr.search("c", "volcano eruption", k=2)
    if committed:
        assert sorted(_ids(hits)) == ["cat", "new"]
    else:
        assert "new" not in _ids(hits) and mgr.search("c", "a kitten on a rug", k=1)[0].id == "cat"
    # A fresh process agrees with this one.
    mgr.close()
    again = CollectionManager(tmp_path, embedder=embedder)
    assert again.search("c", "volcano eruption", k=2) == hits
    again.close()


def test_upsert_vectors_and_search_vector(mgr, embedder):
    mgr.create_collection("v")
    vecs = embedder.encode([d.text for d in DOCS])
    assert mgr.upsert_vectors("v", DOCS, vecs).chunks == 5
    hits = mgr.search_vector("v", vecs[2] * 3.0, k=2)  # scale-free: vectors are normalized
    assert hits[0].id == "qcd" and abs(hits[0].score - 1.0) < 0.02


def test_info_reports_the_index_kind_in_use(tmp_path, embedder, monkeypatch):
    import ragloom.retrieval.index as index_mod
    from ragloom.services.retrieval import info_to_proto

    monkeypatch.setattr(index_mod, "AUTO_IVF_THRESHOLD", 300)  # "auto" switches to IVF at 300 vectors
    m = CollectionManager(tmp_path / "kinds", embedder=embedder)
    info = m.create_collection("small")
    assert (info.index, info.index_requested) == ("flat", "auto")
    m.upsert_vectors("small", DOCS, embedder.encode([d.text for d in DOCS]))
    assert (m.get_collection("small").index, m.get_collection("small").index_requested) == ("flat", "auto")

    m.create_collection("big")
    x = np.random.default_rng(0).standard_normal((400, 384)).astype(np.float32)
    m.upsert_vectors("big", [Document(f"d{i}", f"text {i}") for i in range(400)], x)
    assert (m.get_collection("big").index, m.get_collection("big").index_requested) == ("ivf", "auto")
    assert m.search_vector("big", x[7], k=1)[0].id == "d7"
    m.create_collection("forced", index="flat")
    kinds = {c.name: (c.index, c.index_requested) for c in m.list_collections()}
    assert kinds == {"big": ("ivf", "auto"), "forced": ("flat", "flat"), "small": ("flat", "auto")}
    msg = info_to_proto(m.get_collection("big"))
    assert (msg.index, msg.index_requested) == ("ivf", "auto")
    m.close()
    # A fresh manager has no index in memory: the saved manifest says what is in use.
    again = CollectionManager(tmp_path / "kinds", embedder=embedder)
    assert again.get_collection("big").index == "ivf"
    again.close()


def test_long_documents_are_chunked_with_overlap(tmp_path, embedder):
    m = CollectionManager(tmp_path / "long", embedder=embedder)
    m.create_collection("l", chunk_tokens=32, chunk_overlap=8)
    parts = [f"sentence number {i} talks about topic {i % 7}." for i in range(60)]
    parts[41] = "A volcano erupted and molten lava flowed into the sea."
    text = " ".join(parts)
    res = m.upsert("l", [Document("long", text)])
    chunks = chunk_text("long", text, embedder.tokenizer, 32, 8)
    assert res.chunks == len(chunks) > 5
    assert [c.chunk_id for c in chunks] == [f"long#{i}" for i in range(len(chunks))]
    for a, b in zip(chunks, chunks[1:]):
        assert a.start < b.start < a.end  # consecutive windows overlap
        assert len(embedder.tokenizer(a.text, add_special_tokens=False)["input_ids"]) <= 32
    assert chunks[-1].end == len(text)
    assert chunk_text("long", text, embedder.tokenizer, 32, 8) == chunks  # stable ids and hashes
    hit = m.search("l", "volcanic eruption with lava", k=1)[0]
    assert hit.id == "long" and "volcano" in hit.text and hit.chunk_id != "long#0"
    m.close()


def test_chunk_texts_reads_stored_chunks_in_document_order(mgr, tmp_path, embedder):
    # ordered by document id, then chunk index: what Ask's precompute stores KV for
    by_id = {d.id: d.text for d in DOCS}
    assert mgr.chunk_texts("c") == [by_id[i] for i in sorted(by_id)]
    assert mgr.chunk_texts("c", ["qcd", "cat", "qcd", "missing"]) == [by_id["cat"], by_id["qcd"]]
    assert mgr.chunk_texts("c", []) == []
    with pytest.raises(NotFound):
        mgr.chunk_texts("nope")
    m = CollectionManager(tmp_path / "long", embedder=embedder)
    m.create_collection("l", chunk_tokens=16, chunk_overlap=4)
    text = " ".join(f"sentence number {i} talks about topic {i % 7}." for i in range(12))
    m.upsert("l", [Document("long", text)])
    assert m.chunk_texts("l") == [c.text for c in chunk_text("long", text, embedder.tokenizer, 16, 4)]
    m.close()
