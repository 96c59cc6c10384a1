"""The retrieval store end to end on the machine's real PostgreSQL, in a schema of its own."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
import sqlalchemy

from ragloom.retrieval.collections import CollectionManager, Document

PG_URL = os.environ.get("RAGLOOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def schema():
    try:
        engine = sqlalchemy.create_engine(PG_URL)
        with engine.connect() as c:
            c.execute(sqlalchemy.text("select 1"))
    except Exception as e:  # noqa: BLE001 - any connection failure means "no server here"
        if os.environ.get("CI"):  # CI has PostgreSQL: a missing server there is a failure, not a skip
            pytest.fail(f"PostgreSQL not reachable at {PG_URL}: {e}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {e}")
    name = f"ragloom_test_{uuid.uuid4().hex[:12]}"
    with engine.begin() as c:
        c.execute(sqlalchemy.text(f'CREATE SCHEMA "{name}"'))
    yield name
    with engine.begin() as c:
        c.execute(sqlalchemy.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


def test_postgres_store_end_to_end(tmp_path, schema):
    docs = [
        Document("cat", "The cat sat on the mat and purred.", {"kind": "animal"}),
        Document("qcd", "Quarks interact through the strong force.", {"kind": "physics"}),
        Document("bread", "Bake the bread at 220 degrees.", {"kind": "food"}),
    ]
    m = CollectionManager(tmp_path / "a", store_url=PG_URL, store_schema=schema)
    m.create_collection("pg")
    assert m.upsert("pg", docs).documents == 3
    assert m.search("pg", "a kitten on a rug", k=1)[0].id == "cat"
    assert [h.id for h in m.search("pg", "kitten", k=3, filter={"kind": {"$in": ["food"]}})] == ["bread"]
    m.upsert("pg", [Document("cat", "Photosynthesis turns light into sugar.", {"kind": "plant"})])
    assert m.delete("pg", ["qcd"]) == 1
    before = m.search("pg", "plants and sunlight", k=2)
    assert before[0].id == "cat" and before[0].metadata == {"kind": "plant"}
    info = m.get_collection("pg")
    assert (info.documents, info.chunks) == (2, 2)
    m.close()

    # A second replica with an empty data dir rebuilds its index from PostgreSQL alone.
    shutil.rmtree(tmp_path / "a")
    other = CollectionManager(tmp_path / "b", store_url=PG_URL, store_schema=schema)
    after = other.search("pg", "plants and sunlight", k=2)
    # Same hits; scores move slightly because the rebuild recalibrates int8 on today's vectors.
    assert [(h.chunk_id, h.text, h.metadata) for h in after] == [(h.chunk_id, h.text, h.metadata) for h in before]
    assert all(abs(a.score - b.score) < 0.02 for a, b in zip(after, before))
    assert [c.name for c in other.list_collections()] == ["pg"]
    other.delete_collection("pg")
    assert other.list_collections() == []
    other.close()


async def test_retrieval_service_over_grpc_on_postgres(tmp_path, schema):
    """Create, upsert, search, delete through the SDK and a real server whose store is PostgreSQL."""
    from ragloom.client import AsyncClient
    from ragloom.config import Settings
    from ragloom.errors import NotFound
    from ragloom.services.server import start_server

    manager = CollectionManager(tmp_path / "d", store_url=PG_URL, store_schema=schema)
    settings = Settings(host="127.0.0.1", port=0, data_dir=tmp_path / "d", shutdown_grace_s=0)
    server = await start_server(settings, None, collections=manager)
    try:
        async with AsyncClient(server.address, timeout=120) as client:
            await client.create_collection("kb")
            docs = [
                {"id": "cat", "text": "The cat sat on the mat and purred.", "metadata": {"kind": "animal"}},
                {"id": "qcd", "text": "Quarks interact through the strong force.", "metadata": {"kind": "physics"}},
            ]
            assert (await client.upsert("kb", docs)).documents == 2
            hits = await client.search("kb", "a kitten on a rug", k=2)
            assert [h.id for h in hits] == ["cat", "qcd"] and hits[0].metadata == {"kind": "animal"}
            assert await client.delete("kb", ["cat"]) == 1
            assert [h.id for h in await client.search("kb", "a kitten on a rug", k=2)] == ["qcd"]
            with pytest.raises(NotFound):
                await client.search("nope", "anything")
    finally:
        await server.stop(0)
        manager.close()
    # the rows really are in PostgreSQL: a second manager on the same schema sees them
    again = CollectionManager(tmp_path / "other", store_url=PG_URL, store_schema=schema)
    try:
        assert again.get_collection("kb").documents == 1
    finally:
        again.close()


def test_postgres_store_from_before_chunk_offsets_is_upgraded_on_open(tmp_path, schema):
    """A schema an earlier version created (no offset columns) keeps working: the columns are
    added on open, old chunks report unknown offsets, new ones real ones; two managers opening it
    at once both succeed."""
    import threading

    docs = [Document("cat", "The cat sat on the mat and purred."), Document("qcd", " Quarks and gluons. ")]
    m = CollectionManager(tmp_path / "a", store_url=PG_URL, store_schema=schema)
    m.create_collection("old")
    m.upsert("old", docs)
    m.close()
    engine = sqlalchemy.create_engine(PG_URL)
    with engine.begin() as c:
        c.execute(sqlalchemy.text(f'ALTER TABLE "{schema}".ragloom_chunks DROP COLUMN start_char, DROP COLUMN end_char'))

    opened: list[CollectionManager] = []
    errors: list[BaseException] = []

    def open_store(folder: str) -> None:
        try:
            opened.append(CollectionManager(tmp_path / folder, store_url=PG_URL, store_schema=schema))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_store, args=(f"r{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(opened) == 2
    cols = {c["name"] for c in sqlalchemy.inspect(engine).get_columns("ragloom_chunks", schema=schema)}
    assert {"start_char", "end_char"} <= cols
    a, b = opened
    hits = a.search("old", "a kitten on a rug", k=2)
    assert [h.id for h in hits] == ["cat", "qcd"] and all(h.start_char is None for h in hits)
    a.upsert("old", [docs[1]])
    [qcd] = [h for h in b.search("old", "quarks", k=2) if h.id == "qcd"]
    assert (qcd.text, qcd.start_char, qcd.end_char) == ("Quarks and gluons.", 1, 19)
    for m in opened:
        m.close()
    engine.dispose()
