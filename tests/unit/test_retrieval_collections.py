"""CollectionManager end to end on SQLite with the bundled embedder (real model, real files)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ragloom.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
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
    with pytest.raises(AlreadyExists) as exists:
        mgr.create_collection("c")
    assert (exists.value.reason, exists.value.metadata) == ("COLLECTION_EXISTS", {"collection": "c"})
    for bad in ("", "a b", "../x", "x" * 200):
        with pytest.raises(InvalidArgument) as info:
            mgr.create_collection(bad)
        assert (info.value.reason, info.value.field) == ("INVALID_FIELD", "name")
    for options, field in (
        ({"index": "hnsw-nope"}, "index"),
        ({"chunk_tokens": 4}, "chunk_tokens"),
        ({"chunk_tokens": 64, "chunk_overlap": 64}, "chunk_overlap"),
        ({"metadata": {"when": object()}}, "metadata"),
    ):
        with pytest.raises(InvalidArgument) as info:
            mgr.create_collection("d", **options)
        assert info.value.field == field, options
    mgr.create_collection("d")
    assert [c.name for c in mgr.list_collections()] == ["c", "d"]
    mgr.delete_collection("d")
    with pytest.raises(NotFound):
        mgr.get_collection("d")
    with pytest.raises(NotFound):
        mgr.delete_collection("d")
    for call in (lambda: mgr.search("d", "x"), lambda: mgr.delete("d", ["a"]), lambda: mgr.upsert("d", DOCS)):
        with pytest.raises(NotFound) as missing:
            call()
        # the reason and metadata callers (and RagService's Ask) branch on
        assert (missing.value.reason, missing.value.metadata) == ("COLLECTION_NOT_FOUND", {"collection": "d"})


def test_bad_inputs_are_invalid_argument(mgr):
    with pytest.raises(InvalidArgument, match="empty text") as info:
        mgr.upsert("c", [Document("ok", "fine"), Document("blank", "  ")])
    assert info.value.field == "documents[1].text"
    with pytest.raises(InvalidArgument, match="empty id") as info:
        mgr.upsert("c", [Document("", "text")])
    assert info.value.field == "documents[0].id"
    with pytest.raises(InvalidArgument) as info:
        mgr.upsert("c", [Document("ok", "fine", {"when": object()})])
    assert info.value.field == "documents[0].metadata"
    # too many at once is not a wrong field but a request over the limit: retrying will not help
    with pytest.raises(ResourceExhausted, match="at most") as too_many:
        mgr.upsert("c", (Document(str(i), "t") for i in range(10_001)))
    assert (too_many.value.reason, too_many.value.field) == ("REQUEST_TOO_LARGE", "documents")
    for kwargs, field in (
        ({"k": 0}, "k"),
        ({"k": 1001}, "k"),
        ({"oversample": 0}, "oversample"),
        ({"oversample": 101}, "oversample"),
        ({"filter": {"kind": {"$regex": "a"}}}, "filter"),
        ({"filter": {"kind": {"$in": "a"}}}, "filter"),
    ):
        with pytest.raises(InvalidArgument) as info:
            mgr.search("c", "x", **kwargs)
        assert info.value.field == field, kwargs
    with pytest.raises(InvalidArgument) as info:
        mgr.search("c", "   ")
    assert info.value.field == "query"
    with pytest.raises(InvalidArgument, match="expected dimension 384") as info:
        mgr.upsert_vectors("c", [Document("v", "t")], np.ones((1, 12), np.float32))
    assert info.value.field == "documents[0].vector"
    vectors = np.ones((3, 384), np.float32)
    vectors[2] = 0
    with pytest.raises(InvalidArgument, match="zero vector") as info:
        mgr.upsert_vectors("c", [Document(f"v{i}", "t") for i in range(3)], vectors)
    assert info.value.field == "documents[2].vector"
    with pytest.raises(InvalidArgument) as info:
        mgr.delete("c", ["cat", ""])
    assert info.value.field == "ids[1]"
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
    from ragloom.services._proto import retrieval_pb2 as pb
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
    assert (msg.index, msg.index_requested) == (pb.INDEX_KIND_IVF, pb.INDEX_KIND_AUTO)
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


def test_hits_carry_chunk_index_and_character_offsets(tmp_path, embedder):
    m = CollectionManager(tmp_path / "offsets", embedder=embedder)
    m.create_collection("o", chunk_tokens=16, chunk_overlap=4)
    # code points, not bytes: accents, CJK and an emoji before the chunks that are searched for
    long = "  Ünïcödé 🙂 café — " + " ".join(
        f"Paragraph {i}: 日本語 über Straße, the tide {i} rolls in." for i in range(20)
    ) + " A volcano erupted and molten lava flowed into the sea. The end.\n"
    short = "\n  Knead the dough, let it rise, then bake the bread.  "
    m.upsert("o", [Document("long", long), Document("short", short)])
    texts = {"long": long, "short": short}
    hits = m.search("o", "volcanic eruption with lava", k=50)
    assert len(hits) == len(chunk_text("long", long, embedder.tokenizer, 16, 4)) + 1
    for h in hits:
        assert h.chunk_id == f"{h.id}#{h.chunk_index}"
        assert h.start_char is not None and h.end_char is not None and h.start_char < h.end_char
        assert texts[h.id][h.start_char : h.end_char] == h.text
    top = hits[0]
    assert top.id == "long" and top.chunk_index > 0 and "volcano" in top.text
    [bread] = [h for h in hits if h.id == "short"]
    # one chunk: the text without its surrounding whitespace, and that span's offsets
    assert (bread.chunk_index, bread.text) == (0, short.strip()) and bread.start_char == 3
    # a precomputed vector makes one chunk of the whole text
    m.create_collection("v")
    m.upsert_vectors("v", [Document("x", " spaced ")], embedder.encode(["spaced"]))
    [hit] = m.search("v", "spaced", k=1)
    assert (hit.chunk_index, hit.start_char, hit.end_char, hit.text) == (0, 0, 8, " spaced ")
    m.close()


def _crowded_collection(m: CollectionManager) -> None:
    # one long document whose chunks all talk about the query, and shorter ones that are less close
    long = " ".join(f"Molten lava poured from the erupting volcano, day {i}." for i in range(80))
    m.create_collection("g", chunk_tokens=16, chunk_overlap=0)
    m.upsert("g", [
        Document("long", long, {"kind": "geo"}),
        Document("quake", "An earthquake shook the ground near the mountain.", {"kind": "geo"}),
        Document("geyser", "A geyser spouts boiling water and steam into the air.", {"kind": "geo"}),
        Document("ash", "Ash clouds from an eruption grounded flights.", {"kind": "geo"}),
        Document("magma", "Magma chambers lie deep below the crust.", {"kind": "geo"}),
        Document("bread", "Knead the dough, let it rise, then bake the bread.", {"kind": "food"}),
        Document("cat", "The cat sat on the mat and purred.", {"kind": "animal"}),
    ])


def test_group_by_document_returns_k_distinct_documents_by_best_chunk(tmp_path, embedder):
    m = CollectionManager(tmp_path / "grouped", embedder=embedder)
    _crowded_collection(m)
    assert m.get_collection("g").chunks > 40
    q = "a volcano erupting lava"
    for oversample in (None, 1):  # 1: the first round's candidates are all chunks of "long"
        plain = m.search("g", q, k=5, oversample=oversample)
        assert [h.id for h in plain] == ["long"] * 5  # the long document fills every hit
        grouped = m.search("g", q, k=5, oversample=oversample, group_by_document=True)
        assert len({h.id for h in grouped}) == 5 and grouped[0].id == "long"
        assert [h.score for h in grouped] == sorted((h.score for h in grouped), reverse=True)
        # each document as its best chunk: what an exhaustive chunk search ranks first for it
        everything = m.search("g", q, k=1000, oversample=100)
        best: dict[str, tuple[str, float]] = {}
        for h in everything:
            best.setdefault(h.id, (h.chunk_id, h.score))
        assert [(h.chunk_id, round(h.score, 5)) for h in grouped] == [
            (cid, round(score, 5)) for cid, score in list(best.values())[:5]
        ]
    # k counts documents: asking for more than there are gives each once
    assert sorted(h.id for h in m.search("g", q, k=100, group_by_document=True)) == sorted(
        ["long", "quake", "geyser", "ash", "magma", "bread", "cat"]
    )
    # with a filter too: only matching documents, each once
    geo = m.search("g", q, k=3, filter={"kind": "geo"}, oversample=1, group_by_document=True)
    assert len({h.id for h in geo}) == 3 and all(h.metadata == {"kind": "geo"} for h in geo)
    m.close()


def test_repeated_ids_with_vectors_keep_the_last_version_and_its_vector(tmp_path, embedder):
    m = CollectionManager(tmp_path / "repeat", embedder=embedder)
    m.create_collection("r")
    vecs = embedder.encode(["cats purring on a mat", "molten lava from a volcano"])
    r = m.upsert_vectors("r", [Document("x", "about cats"), Document("x", "about lava")], vecs)
    assert (r.documents, m.get_collection("r").documents) == (1, 1)
    [hit] = m.search("r", "volcanic eruption", k=1)
    assert hit.text == "about lava" and hit.score > 0.5  # the second vector, not the first
    m.close()


def test_a_store_from_before_chunk_offsets_is_upgraded_on_open(tmp_path, embedder):
    import sqlalchemy

    data = tmp_path / "old"
    m = CollectionManager(data, embedder=embedder)
    m.create_collection("c")
    m.upsert("c", DOCS)
    before = m.search("c", "a kitten on a rug", k=5)
    m.close()
    # the layout an earlier version wrote: the chunk table without the offset columns
    engine = sqlalchemy.create_engine(f"sqlite:///{data / 'ragloom.db'}")
    with engine.begin() as c:
        c.execute(sqlalchemy.text("ALTER TABLE ragloom_chunks DROP COLUMN start_char"))
        c.execute(sqlalchemy.text("ALTER TABLE ragloom_chunks DROP COLUMN end_char"))
    assert "start_char" not in {col["name"] for col in sqlalchemy.inspect(engine).get_columns("ragloom_chunks")}
    engine.dispose()

    again = CollectionManager(data, embedder=embedder)  # adds the columns; the old rows keep working
    old = again.search("c", "a kitten on a rug", k=5)
    assert [(h.chunk_id, h.text, h.score) for h in old] == [(h.chunk_id, h.text, h.score) for h in before]
    assert all(h.start_char is None and h.end_char is None and h.chunk_index == 0 for h in old)  # unknown
    again.upsert("c", [Document("cat", "The cat sat on the mat and purred.")])  # re-upserted: offsets known
    cat = next(h for h in again.search("c", "a kitten on a rug", k=5) if h.id == "cat")
    assert (cat.start_char, cat.end_char) == (0, len("The cat sat on the mat and purred."))
    again.close()
    third = CollectionManager(data, embedder=embedder)  # opening an upgraded store changes nothing
    assert third.get_collection("c").documents == 5
    third.close()
