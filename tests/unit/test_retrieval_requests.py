"""Retrieval requests as the SDK builds them and the servicer reads them (no server involved)."""

from __future__ import annotations

import pytest

from ragloom.client import _UpsertFeed, build_create_collection_request, build_search_request, to_document
from ragloom.errors import InvalidArgument
from ragloom.services._proto import retrieval_pb2 as pb
from ragloom.services.retrieval import documents_from_proto, struct_to_dict


def test_documents_round_trip_with_json_types() -> None:
    meta = {"year": 2024, "score": 0.5, "tags": ["a", 1], "nested": {"ok": True, "none": None}}
    msg = to_document({"id": 7, "text": "hello", "metadata": meta})
    assert msg.id == "7" and not msg.vector
    [doc], vectors = documents_from_proto([msg])
    assert vectors is None
    assert (doc.id, doc.text) == ("7", "hello")
    # Struct carries numbers as doubles; whole ones come back as int, the rest stay float
    assert doc.metadata == meta and isinstance(doc.metadata["year"], int) and isinstance(doc.metadata["score"], float)


@pytest.mark.parametrize(
    "doc, words",
    [
        ({"text": "no id"}, "'id'"),
        ({"id": "", "text": "x"}, "'id'"),
        ({"id": "a"}, "'text'"),
        ({"id": "a", "text": b"bytes"}, "'text'"),
        ({"id": "a", "text": "x", "metadata": ["not", "a", "mapping"]}, "'metadata'"),
        ({"id": "a", "text": "x", "metadata": {"when": object()}}, "JSON-like"),
    ],
)
def test_unsendable_documents(doc: dict, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        to_document(doc)


def test_vectors_all_or_none_per_batch() -> None:
    docs = [pb.Document(id="a", text="x", vector=[1.0, 0.0]), pb.Document(id="b", text="y", vector=[0.0, 1.0])]
    out, vectors = documents_from_proto(docs)
    assert vectors is not None and vectors.shape == (2, 2) and [d.id for d in out] == ["a", "b"]
    with pytest.raises(InvalidArgument, match="either all or none"):
        documents_from_proto([docs[0], pb.Document(id="c", text="z")])
    with pytest.raises(InvalidArgument, match="one length"):
        documents_from_proto([docs[0], pb.Document(id="c", text="z", vector=[1.0])])


def test_upsert_feed_header_then_batches_by_count_and_bytes() -> None:
    sent: list[int] = []
    feed = _UpsertFeed("c", batch_size=3, create_if_missing=True, progress=sent.append, max_bytes=1000)
    docs = [{"id": f"d{i}", "text": "x"} for i in range(7)] + [{"id": "big", "text": "y" * 995}, {"id": "z", "text": "z"}]
    reqs = list(feed.requests(docs))
    assert reqs[0].collection == "c" and reqs[0].create_if_missing and not reqs[0].documents
    assert [[d.id for d in r.documents] for r in reqs[1:]] == [
        ["d0", "d1", "d2"],
        ["d3", "d4", "d5"],
        ["d6"],  # sent early: the long document would push it past max_bytes
        ["big"],  # which fills a message by itself
        ["z"],
    ]
    assert all(not r.collection for r in reqs[1:])
    # progress comes from the server's acknowledgements (cumulative counts), not from sending
    assert reqs[0].progress and sent == [] and feed.error is None
    for documents, committed in ((3, False), (6, False), (6, False), (9, True)):
        feed.receive(pb.UpsertResponse(documents=documents, committed=committed))
    assert sent == [3, 3, 3] and feed.committed and feed.acknowledged == 9
    quiet = _UpsertFeed("c", batch_size=3, create_if_missing=False, progress=None)
    assert not next(iter(quiet.requests([]))).progress  # nobody shows them: the server sends only the result


def test_upsert_feed_cancels_the_call_at_a_bad_document_and_keeps_the_error() -> None:
    feed = _UpsertFeed("c", batch_size=1, create_if_missing=False, progress=None)
    cancelled: list[bool] = []
    feed.attach(lambda: cancelled.append(True))  # as the driver does once the call started
    reqs = list(feed.requests([{"id": "a", "text": "x"}, {"id": "b"}, {"id": "c", "text": "never sent"}]))
    assert [[d.id for d in r.documents] for r in reqs] == [[], ["a"]]
    assert isinstance(feed.error, InvalidArgument)
    assert cancelled == [True]  # ending the stream normally would have committed "a"


def test_unset_options_are_absent() -> None:
    req = build_create_collection_request("c")
    assert req.index == pb.INDEX_KIND_UNSPECIFIED and not req.HasField("chunk_tokens") and not req.HasField("metadata")
    assert req.request_id == ""  # the server makes one up
    req = build_create_collection_request("c", chunk_tokens=0, chunk_overlap=0, metadata={"a": 1})
    assert req.HasField("chunk_tokens") and req.HasField("chunk_overlap")  # 0 is sent, not dropped
    assert struct_to_dict(req.metadata) == {"a": 1}
    s = build_search_request("c", "q", k=5, filter=None, oversample=None)
    assert s.k == 5 and s.HasField("k") and not s.HasField("filter") and not s.HasField("oversample")
    assert not s.group_by_document
    s = build_search_request("c", "q", k=5, filter={"lang": {"$in": ["en", "fr"]}}, oversample=8)
    assert struct_to_dict(s.filter) == {"lang": {"$in": ["en", "fr"]}} and s.oversample == 8


def test_index_kinds_are_strings_for_users_and_enums_on_the_wire() -> None:
    from ragloom.client.results import collection_from
    from ragloom.services.retrieval import kind_from_proto

    for name, kind in (("auto", pb.INDEX_KIND_AUTO), ("flat", pb.INDEX_KIND_FLAT), ("ivf", pb.INDEX_KIND_IVF)):
        assert build_create_collection_request("c", index=name).index == kind
        assert kind_from_proto(kind) == name  # the servicer's side
        listed = collection_from(pb.CollectionInfo(name="c", index=kind, index_requested=kind))
        assert (listed.index, listed.index_requested) == (name, name)
    assert kind_from_proto(pb.INDEX_KIND_UNSPECIFIED) == "auto"  # unset on create means auto
    for bad in ("hnsw", "FLAT", 2):
        with pytest.raises(InvalidArgument) as info:
            build_create_collection_request("c", index=bad)  # type: ignore[arg-type]
        assert info.value.field == "index"
    with pytest.raises(InvalidArgument) as info:
        kind_from_proto(42)  # a number from a newer client
    assert info.value.field == "index"


def test_search_request_and_hits_with_the_new_fields() -> None:
    from ragloom.client.results import hit_from

    s = build_search_request("c", "q", k=3, filter={"lang": "en"}, oversample=None, group_by_document=True,
                             request_id="search-1")
    assert s.group_by_document and s.request_id == "search-1"
    with pytest.raises(InvalidArgument) as info:
        build_search_request("c", "q", k=3, filter={"when": object()}, oversample=None)
    assert info.value.field == "filter"
    with pytest.raises(InvalidArgument) as info:
        build_create_collection_request("c", metadata={"when": object()})
    assert info.value.field == "metadata"
    hit = hit_from(pb.Hit(id="d", chunk_id="d#2", score=0.5, text="bc", chunk_index=2, start_char=1, end_char=3))
    assert (hit.chunk_index, hit.start_char, hit.end_char) == (2, 1, 3)
    assert "abcd"[hit.start_char : hit.end_char] == hit.text


def test_hits_of_chunks_without_offsets_go_out_as_an_empty_span() -> None:
    from ragloom.retrieval.collections import Hit
    from ragloom.services.retrieval import hit_to_proto

    known = hit_to_proto(Hit("d", "d#1", 0.5, "text", {"a": 1}, 1, 10, 14))
    assert (known.chunk_index, known.start_char, known.end_char) == (1, 10, 14)
    old = hit_to_proto(Hit("d", "d#0", 0.5, "text", {}, 0, None, None))  # stored before offsets were kept
    assert (old.start_char, old.end_char) == (0, 0)


def test_upsert_header_carries_the_request_id() -> None:
    feed = _UpsertFeed("c", batch_size=3, create_if_missing=False, progress=None, request_id="bulk-7")
    header = next(iter(feed.requests([{"id": "a", "text": "x"}])))
    assert header.request_id == "bulk-7" and header.collection == "c"


def test_batch_field_paths_name_the_document_in_the_message() -> None:
    docs = [pb.Document(id="a", text="x", vector=[1.0, 0.0]), pb.Document(id="b", text="y")]
    with pytest.raises(InvalidArgument) as info:
        documents_from_proto(docs)
    assert info.value.field == "documents[1].vector"
    docs = [pb.Document(id=f"d{i}", text="x", vector=[1.0, 0.0]) for i in range(3)]
    docs[2].vector.append(1.0)
    with pytest.raises(InvalidArgument) as info:
        documents_from_proto(docs)
    assert info.value.field == "documents[2].vector"
