"""Value grounding on real databases: the distinct-value index read through each connector (SQLite
file, PostgreSQL, MariaDB, a DuckDB-backed CSV folder), its cache, and the text-to-SQL prompt
that lists the stored values a question names.

The shop fixture (sql_databases.py) gets one more table here, `stores`, with codes, spellings and
a free-text column, in this module's own database.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sql_databases import any_database

from ragloom.connectors.files import FileConnector
from ragloom.connectors.grounding import build_index, invalidate, value_index
from ragloom.connectors.schema import SchemaLinker
from ragloom.connectors.sql import SqlConnector
from ragloom.connectors.text2sql import Text2Sql, Text2SqlOptions

NOTE = "Opened after the renovation; the loading dock is round the back, deliveries before nine only."
STORES = [
    (1, "Phoenix Central", "AZ", "USA", NOTE),
    (2, "Tucson Mall", "AZ", "USA", NOTE + " Two floors."),
    (3, "Austin Downtown", "TX", "United States", NOTE + " Parking."),
    (4, "Camden Market", None, "UK", NOTE + " Closed Sundays."),
    (5, "Sedona Outlet", "arizona", "United States", NOTE + " Seasonal."),
]
# (table, column) the index must hold: text columns only, no ids, dates or free text (stores.notes)
INDEXED = [("customers", "name"), ("customers", "city"), ("orders", "status"),
           ("stores", "name"), ("stores", "state"), ("stores", "country")]


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with any_database(request.param, tmp_path_factory.mktemp("grounding")) as database:
        with database.admin.begin() as c:
            c.execute(sa.text(
                f"CREATE TABLE {database.prefix}stores (id INTEGER PRIMARY KEY, name VARCHAR(40),"
                " state VARCHAR(20), country VARCHAR(30), notes VARCHAR(400))"))
            c.execute(sa.text(f"INSERT INTO {database.prefix}stores VALUES (:a, :b, :c, :d, :e)"),
                      [dict(zip("abcde", r, strict=True)) for r in STORES])
        yield database


@pytest.fixture()
def conn(db: Any) -> Any:  # per test: each one starts without a cached index
    connector = SqlConnector("shop", db.url)
    yield connector
    connector.close()


def test_index_reads_distinct_text_values(db: Any, conn: SqlConnector) -> None:
    before = db.fingerprint()
    index = build_index(conn)
    assert [(c.table, c.column) for c in index.columns] == INDEXED and index.complete
    values = {(c.table, c.column): c for c in index.columns}
    state = values[("stores", "state")]
    # the most frequent value first; the order of ties is the database's collation
    assert state.values[0] == "AZ" and sorted(state.values) == ["AZ", "TX", "arizona"] and state.complete
    assert set(values[("stores", "country")].values) == {"USA", "United States", "UK"}
    assert values[("stores", "country")].values[0] in ("USA", "United States")  # two rows each
    assert set(values[("orders", "status")].values) == {"paid", "refunded", "pending"}
    assert values[("orders", "status")].values[0] == "paid"  # three of five orders
    assert set(values[("customers", "city")].values) == {"London", "New York", "Helsinki", "Boston"}
    assert len(index) == 4 + 4 + 3 + 5 + 3 + 3
    assert db.fingerprint() == before  # it only reads


def test_cap_marks_a_column_incomplete(conn: SqlConnector) -> None:
    index = build_index(conn, max_distinct=2)
    state = next(c for c in index.columns if c.column == "state")
    assert len(state.values) == 2 and state.values[0] == "AZ" and not state.complete
    status = next(c for c in index.columns if c.column == "status")
    assert status.values[0] == "paid" and not status.complete
    assert "stores" not in index.low_cardinality() or "state" not in index.low_cardinality()["stores"]
    assert build_index(conn, budget_s=0).columns == [] and not build_index(conn, budget_s=0).complete


def test_questions_match_stored_spellings(conn: SqlConnector) -> None:
    index = value_index(conn)
    found = [(m.table, m.column, m.value, m.span, m.score, m.kind) for m in index.match("Which stores are in the US?")]
    assert found == [
        ("stores", "country", "United States", "US", 0.85, "abbreviation"),
        ("stores", "country", "USA", "US", 0.8, "abbreviation"),
    ]
    found = [(m.value, m.kind) for m in index.match("How many stores are in Arizona?")]
    assert found == [("arizona", "exact")]  # as stored, lower case
    found = [(m.value, m.score, m.kind) for m in index.match("How many stores are in Texas?")]
    assert found == [("TX", 0.7, "abbreviation")]  # nothing spelled 'Texas': its code
    found = [(m.value, m.score, m.kind) for m in index.match("stores in the United Kingdom")]
    assert found == [("UK", 0.85, "abbreviation")]
    assert index.match("stores in the united kingdom") == []  # lower case: no name, so no initials
    found = [(m.table, m.column, m.value, m.kind) for m in index.match("When did Phoenix Centrl open?")]
    assert found == [("stores", "name", "Phoenix Central", "fuzzy")]
    found = [(m.table, m.column, m.value, m.kind) for m in index.match("orders of customers in new york")]
    assert found == [("customers", "city", "New York", "exact")]
    assert index.match("deliveries before nine") == []  # the notes column is free text: not indexed


def test_index_is_cached_and_invalidated(conn: SqlConnector) -> None:
    first = value_index(conn)
    assert value_index(conn) is first
    conn.schema(refresh=True)  # a refreshed schema may have new tables or columns
    second = value_index(conn)
    assert second is not first and value_index(conn) is second
    assert value_index(conn, max_age_s=0) is not second  # rows change without a schema refresh
    third = value_index(conn)
    invalidate(conn)
    assert value_index(conn) is not third


def test_file_connector_index(tmp_path: Any) -> None:
    (tmp_path / "stores.csv").write_text(
        "id,name,state\n" + "\n".join(f"{i},{n},{s}" for i, n, s, _, _ in STORES) + "\n")
    conn = FileConnector("files", tmp_path)
    try:
        index = value_index(conn)
        assert [(c.table, c.column) for c in index.columns] == [("stores", "name"), ("stores", "state")]
        assert [(m.value, m.kind) for m in index.match("stores in Texas")] == [("TX", "abbreviation")]
        assert [(m.value, m.kind) for m in index.match("stores in ARIZONA")] == [("arizona", "exact")]
        conn.schema(refresh=True)  # files read again: a new schema object, so a new index
        assert value_index(conn) is not index
    finally:
        conn.close()


class _Engine:
    """What Text2Sql needs from an engine to build a prompt: no model."""

    def encode(self, prompt: str | None = None, messages: list[dict[str, str]] | None = None) -> list[int]:
        return [1, 2, 3]

    def compile_constraint(self, kind: str, spec: Any) -> None:
        raise AssertionError("the grammar is off in these tests")


def test_prompt_lists_grounded_values(db: Any, conn: SqlConnector) -> None:
    t2s = Text2Sql(_Engine(), linker=SchemaLinker(embedder=None))  # link=False: the linker is not used
    question = "How many stores in the US are in Texas?"
    opts = Text2SqlOptions(link=False, grammar=False, ground_values=True)
    task = t2s.start(conn, question, opts)
    user = task.messages[1]["content"]
    lines = [line for line in user.splitlines() if "values matching the question" in line]
    assert lines == [
        "-- column stores.country: values matching the question: 'United States', 'USA'",
        "-- column stores.state: values matching the question: 'TX'",
    ]
    assert user.index("CREATE TABLE stores") < user.index(lines[0]) < user.index(f"Question: {question}")
    t2s.feed(task, "SELECT count(*) FROM stores WHERE state = 'TX' AND country = 'United States'", 12)
    answer = task.answer
    assert answer is not None and answer.error is None and answer.rows == [(1,)]
    assert answer.grounded_values == ["stores.country = 'United States'", "stores.country = 'USA'",
                                      "stores.state = 'TX'"]  # best first
    # off (the default): the prompt is as before
    plain = t2s.start(conn, question, Text2SqlOptions(link=False, grammar=False))
    assert "values matching the question" not in plain.messages[1]["content"] and plain.values == []
