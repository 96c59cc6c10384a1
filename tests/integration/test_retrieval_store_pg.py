"""The retrieval store end to end on the machine's real PostgreSQL, in a schema of its own."""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from ragloom.retrieval.collections import CollectionManager, Document

PG_URL = os.environ.get("RAGLOOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def schema():
    sqlalchemy = pytest.importorskip("sqlalchemy")
    try:
        engine = sqlalchemy.create_engine(PG_URL)
        with engine.connect() as c:
            c.execute(sqlalchemy.text("select 1"))
    except Exception as e:  # noqa: BLE001 - any connection failure means "no server here"
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
