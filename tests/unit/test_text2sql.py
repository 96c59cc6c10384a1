"""connectors/text2sql.py and schema.py: SQL extraction, schema linking on a real defog schema,
the prompt's DDL, and the pipeline on the bundled model over a SQLite file (grammar on: every
query parses and names only real tables and columns; off: whatever the model writes)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import shared_data

from ragloom.connectors.base import Column, ForeignKey, Schema, Table
from ragloom.connectors.schema import SchemaLinker, schema_ddl, serialize_rows
from ragloom.connectors.text2sql import Text2Sql, Text2SqlOptions, extract_sql
from ragloom.errors import InvalidArgument

SHOP_SQL = Path(__file__).resolve().parents[2] / "ragloom" / "demo_data" / "shop.sql"


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("SELECT a FROM t;", "SELECT a FROM t"),
        ("```sql\nSELECT a FROM t\n```\nThis selects a.", "SELECT a FROM t"),
        ("Here is the query: select count(*) from t where x = 'a;b'; extra", "select count(*) from t where x = 'a;b'"),
        ("WITH c AS (SELECT 1) SELECT * FROM c", "WITH c AS (SELECT 1) SELECT * FROM c"),
        ("no sql here", "no sql here"),
    ],
)
def test_extract_sql(text: str, sql: str) -> None:
    assert extract_sql(text) == sql


def _schema() -> Schema:
    return Schema("t", "sqlite", [
        Table("author", [Column("aid", "INTEGER", primary_key=True), Column("name", "TEXT", samples=["Ada"])], ["aid"]),
        Table("domain", [Column("did", "INTEGER", primary_key=True), Column("name", "TEXT", samples=["Machine Learning"])],
              ["did"]),
        Table("domain_author", [Column("aid", "INTEGER"), Column("did", "INTEGER")], [],
              [ForeignKey(["aid"], "author", ["aid"]), ForeignKey(["did"], "domain", ["did"])]),
        Table("flight", [Column("flight_id", "INTEGER", primary_key=True), Column("airline", "TEXT")], ["flight_id"]),
    ])


def test_ddl_has_keys_samples_and_commas_outside_comments() -> None:
    ddl = schema_ddl(_schema())
    assert "CREATE TABLE domain_author (" in ddl
    assert "FOREIGN KEY (aid) REFERENCES author(aid)" in ddl
    assert "aid INTEGER PRIMARY KEY, -- " not in ddl  # a comma after a comment would be commented out
    assert "name TEXT -- e.g. 'Ada'" in ddl
    for line in ddl.splitlines():
        if "--" in line:
            assert not line.rstrip().endswith(",") or line.index(",") < line.index("--")


def test_serialize_rows_caps_and_truncates() -> None:
    text = serialize_rows(["a", "b"], [(i, "x" * 100) for i in range(10)], max_rows=3, max_cell=10)
    assert text.count("\n") == 2 + 3
    assert "(7 more rows not shown)" in text and "x" * 10 not in text


@pytest.fixture(scope="module")
def embedder():
    from ragloom.retrieval.embed import Embedder

    return Embedder(device="cpu")


def test_linking_keeps_relevant_tables_and_their_join_table(embedder) -> None:  # noqa: ANN001
    linked = SchemaLinker(embedder).link(_schema(), "Which authors wrote in the domain Machine Learning?").schema
    names = {t.name for t in linked.tables}
    assert {"author", "domain", "domain_author"} <= names
    assert "flight" not in names
    ja = linked.table("domain_author")
    assert ja is not None and {c.name for c in ja.columns} == {"aid", "did"}


def test_linking_on_a_real_defog_schema(embedder) -> None:  # noqa: ANN001
    from ragloom.connectors.registry import open_connector

    db = shared_data("text2sql/dbs/restaurants.sqlite")
    conn = open_connector("restaurants", f"sqlite:///{db}")
    try:
        schema = conn.schema()
        linked = SchemaLinker(embedder).link(schema, "What is the average rating of restaurants in each city?").schema
        restaurant = linked.table("restaurant")  # the gold query's table, with the column it averages
        assert restaurant is not None and "rating" in {c.name for c in restaurant.columns}
        # geographic (city_name, county, region) is not needed for this question: linking drops it
        assert {t.name for t in schema.tables} >= {"geographic"} and linked.table("geographic") is None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory):
    from ragloom.connectors.registry import open_connector

    db = tmp_path_factory.mktemp("shop") / "shop.db"
    with sqlite3.connect(db) as c:
        c.executescript(SHOP_SQL.read_text())
    conn = open_connector("shop", f"sqlite:///{db}")
    yield conn
    conn.close()


def test_pipeline_with_grammar_writes_valid_sql(engine, embedder, shop) -> None:  # noqa: ANN001
    t2s = Text2Sql(engine, embedder=embedder)
    questions = ["How many customers are there in each country?", "What is the price of the cheapest product?",
                 "List the names of customers from France."]
    answers = t2s.answer_batch(shop, questions, Text2SqlOptions(max_tokens=64))
    for a in answers:
        assert a.valid, a
        assert a.sql.upper().startswith("SELECT")
        assert set(a.tables) <= {"customers", "products", "orders"}
        assert a.generated_tokens > 0 and a.prompt_tokens > 0
        if a.error is None:
            assert a.columns


def test_self_correction_round_sees_the_error(engine, embedder, shop) -> None:  # noqa: ANN001
    t2s = Text2Sql(engine, embedder=embedder)
    task = t2s.start(shop, "How many orders?", Text2SqlOptions(max_tokens=32))
    t2s.feed(task, "SELECT nope FROM orders", 5)  # as if the model had written this
    assert task.job is not None and task.answer is not None and task.answer.attempts == 1
    assert "nope" in task.messages[-1]["content"] and task.messages[-2]["content"] == "SELECT nope FROM orders"
    out = engine.generate([task.job.prompt_ids], [task.job.params], [task.job.constraint])[0]
    t2s.feed(task, out.text, out.completion_tokens)
    assert task.job is None and task.answer.attempts == 2 and task.answer.failed_sql == ["SELECT nope FROM orders"]


def test_first_rows_keeps_the_rest_open_for_the_caller(engine, embedder, shop) -> None:  # noqa: ANN001
    t2s = Text2Sql(engine, embedder=embedder)
    whole = shop.execute("SELECT id FROM orders ORDER BY id").rows
    assert len(whole) > 3
    task = t2s.start(shop, "List the orders.", Text2SqlOptions(max_tokens=32, first_rows=2, link=False))
    t2s.feed(task, "SELECT id FROM orders ORDER BY id", 8)  # as if the model had written this
    ans = task.answer
    assert task.job is None and ans is not None and ans.error is None and ans.rows == whole[:2]
    assert ans.more is not None and not ans.more.closed
    assert ans.more.fetch(1000) == whole[2:] and ans.more.closed and not ans.more.truncated
    # a result that fits the first read leaves nothing open
    task = t2s.start(shop, "The first order.", Text2SqlOptions(max_tokens=32, first_rows=2, link=False))
    t2s.feed(task, "SELECT id FROM orders ORDER BY id LIMIT 1", 8)
    assert task.answer is not None and task.answer.rows == whole[:1] and task.answer.more is None


def test_bad_options_are_refused(engine, embedder, shop) -> None:  # noqa: ANN001
    t2s = Text2Sql(engine, embedder=embedder)
    with pytest.raises(InvalidArgument, match="mode"):
        t2s.start(shop, "q", Text2SqlOptions(mode="nope"))
    with pytest.raises(InvalidArgument, match="empty"):
        t2s.start(shop, " ", Text2SqlOptions())


def test_cut_off_query_is_closed_and_correction_keeps_to_its_tables(engine, embedder, shop) -> None:  # noqa: ANN001
    t2s = Text2Sql(engine, embedder=embedder)
    task = t2s.start(shop, "How many orders per customer?", Text2SqlOptions(max_tokens=32))
    assert task.job is not None and task.job.constraint is not None
    # as if the model had been cut off mid-list: the grammar's shortest completion closes it
    t2s.feed(task, "SELECT name FROM customers WHERE id IN (1, 2,", 12)
    assert task.answer is not None and task.answer.failed_sql == [] and "IN (1, 2, 0)" in task.answer.sql
    assert task.answer.error is None and task.answer.valid
    # a name error: the correction round's grammar offers only the chosen table's columns
    task = t2s.start(shop, "How many orders per customer?", Text2SqlOptions(max_tokens=32))
    t2s.feed(task, "SELECT quantity FROM customers", 5)
    assert task.scope == ["customers"] and task.job is not None
    grammar = task.job.constraint.grammar
    assert grammar.accepts_text("SELECT country FROM customers")
    assert not grammar.accepts_text("SELECT quantity FROM customers")


def test_guard_refuses_too_deep_nesting_cleanly() -> None:
    """A model can emit hundreds of '(' within its token limit; sqlglot recurses per level."""
    from ragloom.connectors.guard import guard
    from ragloom.errors import SqlError

    sql = "SELECT " + "(" * 400 + "aid" + ")" * 400 + " FROM author"
    with pytest.raises(SqlError, match="deep"):
        guard(sql, "sqlite", _schema(), 10)
    calls = "SELECT " + "upper(" * 40 + "name" + ")" * 40 + " FROM author"  # sqlglot backtracks on these
    with pytest.raises(SqlError, match="deep"):
        guard(calls, "sqlite", _schema(), 10)
    assert guard("SELECT name FROM author WHERE name = '((((('", "sqlite", _schema(), 10)
    assert guard("SELECT ((aid)) FROM author", "sqlite", _schema(), 10).tables == ["author"]


def test_a_correction_the_guard_refuses_keeps_the_first_query(engine, embedder, shop) -> None:  # noqa: ANN001
    t2s = Text2Sql(engine, embedder=embedder)
    task = t2s.start(shop, "List customer ids and names.", Text2SqlOptions(max_tokens=32))
    first = "SELECT id FROM customers UNION SELECT id, name FROM customers"  # passes the guard, the database refuses
    t2s.feed(task, first, 9)
    assert task.job is not None and task.answer is not None and task.answer.valid
    t2s.feed(task, "SELECT nope FROM customers", 5)  # a correction that names no real column
    ans = task.answer
    assert task.job is None and ans.attempts == 2
    assert ans.sql.startswith(first) and ans.valid and ans.error is not None and "UNION" in ans.error.upper()
    assert ans.failed_sql == ["SELECT nope FROM customers"]


def test_refusals_are_kept_for_the_metrics(engine, embedder, shop) -> None:  # noqa: ANN001
    from ragloom.services.metrics import sql_rule

    t2s = Text2Sql(engine, embedder=embedder)
    task = t2s.start(shop, "Remove every customer.", Text2SqlOptions(max_tokens=32, self_correct=False))
    t2s.feed(task, "DELETE FROM customers", 5)
    ans = task.answer
    assert ans is not None and ans.error is not None and [sql_rule(e) for e in ans.refused] == ["statement"]
    assert shop.execute("SELECT count(*) FROM customers").rows[0][0] > 0


def test_few_shot_examples_are_in_the_prompt_and_the_answer(engine, embedder, shop) -> None:  # noqa: ANN001
    t2s = Text2Sql(engine, embedder=embedder)
    examples = [
        {"question": "How many products are there?", "sql": "SELECT COUNT(*) FROM products"},
        {"question": "Which products cost more than 100?", "sql": "SELECT name FROM products WHERE price > 100"},
        {"question": "When did each order happen?", "sql": "SELECT id, order_date FROM orders"},
    ]
    task = t2s.start(shop, "How many customers are there?", Text2SqlOptions(max_tokens=16, few_shot=2), examples)
    t2s.feed(task, "SELECT COUNT(*) FROM customers", 6)
    ans = task.answer
    assert ans is not None and len(ans.examples) == 2 and set(ans.examples) <= {e["question"] for e in examples}
    prompt = task.messages[1]["content"]
    for e in examples:
        assert (f"Question: {e['question']}\nSQL: {e['sql']}" in prompt) == (e["question"] in ans.examples)
    task = t2s.start(shop, "How many customers are there?", Text2SqlOptions(max_tokens=16, few_shot=0), examples)
    t2s.feed(task, "SELECT COUNT(*) FROM customers", 6)
    assert task.answer is not None and task.answer.examples == [] and "SQL: SELECT" not in task.messages[1]["content"]
