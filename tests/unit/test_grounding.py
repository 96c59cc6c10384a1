"""connectors/grounding.py without a database: literals in a question, matching them to stored
values (case, spelling, abbreviations, partial names), which columns are indexed, prompt lines."""

from __future__ import annotations

import pytest

from ragloom.connectors.base import Column, Schema, Table
from ragloom.connectors.grounding import (
    ColumnValues,
    ValueIndex,
    ValueMatch,
    distinct_values_sql,
    extract_literals,
    grounding_lines,
    indexable,
    initials,
    is_abbreviation,
    normalize,
)


def _index() -> ValueIndex:
    return ValueIndex([
        ColumnValues("customers", "country", ("United States", "United Kingdom", "France", "USA"), True),
        ColumnValues("stores", "state", ("AZ", "CA", "TX", "arizona"), True),
        ColumnValues("orders", "status", ("paid", "pending", "refunded"), True),
        ColumnValues("products", "name", ("Mechanical keyboard", "USB-C hub", "Noise-cancelling headphones"), True),
        ColumnValues("customers", "city", ("New York", "New Jersey", "Newark"), True),
        ColumnValues("customers", "name", tuple(f"Person {i}" for i in range(1000)), False),
    ])


def _found(matches: list[ValueMatch]) -> list[tuple[str, str, str, str, float, str]]:
    return [(m.table, m.column, m.value, m.span, m.score, m.kind) for m in matches]


def test_normalize_initials_and_abbreviations() -> None:
    assert normalize("U.S.A.") == "u s a" and normalize("  Café-Luna ") == "cafe luna"
    assert normalize("new_york") == "new york"
    assert initials("united states of america") == {"usoa", "usa"} and initials("france") == set()
    assert is_abbreviation("az", "arizona") and is_abbreviation("tx", "texas")
    assert not is_abbreviation("za", "arizona") and not is_abbreviation("az", "azt")  # order; too short


def test_literals_quoted_capitalized_and_ngrams() -> None:
    lits = extract_literals("Which customers from the United States ordered a 'USB-C hub' in New York?")
    assert [(lit.text, lit.salient) for lit in lits] == [
        ("customers", False), ("customers from the United", False), ("United", False), ("United States", True),
        ("States", False), ("USB-C", True), ("USB-C hub", True), ("hub", False), ("New", False),
        ("New York", True), ("York", False),
    ]
    # no phrase across punctuation; 'and' joins a list, 'of' a name; numbers and dates are not literals
    texts = [lit.text for lit in extract_literals("Sales of Bank of America, Paris and London in 2024-01-05")]
    assert "Bank of America" in texts and "America, Paris" not in texts and "Paris and London" in texts
    assert "2024-01-05" not in texts and "2024" not in texts
    # a lone capitalized first word is grammar, not a name: only an n-gram
    assert [(lit.text, lit.salient) for lit in extract_literals("Orders from Arizona")] == [
        ("Orders", False), ("Orders from Arizona", False), ("Arizona", True)]


def test_case_and_punctuation_are_ignored() -> None:
    idx = _index()
    assert _found(idx.match("Stores in ARIZONA")) == [("stores", "state", "arizona", "ARIZONA", 1.0, "exact")]
    assert _found(idx.match("who bought a usb c hub")) == [("products", "name", "USB-C hub", "usb c hub", 1.0, "exact")]
    assert _found(idx.match("orders that are paid")) == [("orders", "status", "paid", "paid", 1.0, "exact")]


def test_misspellings_match_fuzzily() -> None:
    idx = _index()
    assert _found(idx.match("which orders were refundd?")) == [
        ("orders", "status", "refunded", "refundd", 0.933, "fuzzy")]
    assert _found(idx.match("stores in Arizna")) == [("stores", "state", "arizona", "Arizna", 0.923, "fuzzy")]
    assert idx.match("which orders are pain?") == []  # four letters: too short to guess at
    # a lower-case word must be closer (0.9) than a name (0.82): 'refundid' is 0.875 from 'refunded'
    assert idx.match("orders refundid") == []
    assert _found(idx.match("orders 'refundid'")) == [("orders", "status", "refunded", "refundid", 0.875, "fuzzy")]


def test_abbreviations_both_ways() -> None:
    idx = _index()
    assert _found(idx.match("How many customers live in the US?")) == [
        ("customers", "country", "United States", "US", 0.85, "abbreviation"),
        ("customers", "country", "USA", "US", 0.8, "abbreviation"),
    ]
    assert _found(idx.match("customers in the United Kingdom")) == [
        ("customers", "country", "United Kingdom", "United Kingdom", 1.0, "exact")]
    assert _found(idx.match("customers in the United States of America")) == [
        ("customers", "country", "United States", "United States", 1.0, "exact"),
        ("customers", "country", "USA", "United States of America", 0.85, "abbreviation"),
    ]
    # lower case is no name: exact only ('united states' is not read as 'USA')
    assert _found(idx.match("customers in the united states")) == [
        ("customers", "country", "United States", "united states", 1.0, "exact")]
    assert _found(idx.match("stores in TX")) == [("stores", "state", "TX", "TX", 1.0, "exact")]
    # a code guessed from a name's letters, only when nothing is spelled like the name
    assert _found(idx.match("stores in Texas")) == [("stores", "state", "TX", "Texas", 0.7, "abbreviation")]
    assert _found(idx.match("stores in Arizona")) == [("stores", "state", "arizona", "Arizona", 1.0, "exact")]
    assert _found(idx.match("stores in CAL")) == [("stores", "state", "CA", "CAL", 0.8, "abbreviation")]
    assert idx.match("stores in QX") == []
    # lower-case words are not read as codes: 'orders' is no 'OR', 'cart' no 'CA', 'texas' no 'TX'
    assert [m.value for m in idx.match("orders in my cart in texas")] == []


def test_partial_names_and_what_an_exact_span_hides() -> None:
    idx = _index()
    assert _found(idx.match("the price of the 'keyboard'")) == [
        ("products", "name", "Mechanical keyboard", "keyboard", 0.726, "partial")]
    assert idx.match("the price of the keyboard") == []  # a common noun names no product
    # 'New' alone would name 'New Jersey'; inside the exact 'New York' it does not
    assert [m.value for m in idx.match("customers in New York")] == ["New York"]
    assert idx.match("List all the orders") == []


def test_limits_per_column_and_in_all() -> None:
    idx = _index()
    got = idx.match("Person 1, Person 2, Person 3, Person 4 and Person 5", per_column=2)
    assert [m.value for m in got] == ["Person 1", "Person 2"]
    assert len(idx.match("US and UK, AZ, TX, CA, paid, pending", limit=3)) == 3


def test_low_cardinality_lists_only_complete_small_columns() -> None:
    low = _index().low_cardinality(max_values=3)
    assert low == {
        "orders": {"status": ["paid", "pending", "refunded"]},
        "products": {"name": ["Mechanical keyboard", "USB-C hub", "Noise-cancelling headphones"]},
        "customers": {"city": ["New York", "New Jersey", "Newark"]},
    }


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (Column("state", "VARCHAR(20)", samples=["AZ"]), True),
        (Column("state", "character varying(20)"), True),
        (Column("status", "ENUM('paid','refunded')"), True),
        (Column("country", "", samples=["France", "Peru"]), True),  # SQLite without a type: the samples say text
        (Column("amount", "", samples=[3, 4]), False),
        (Column("total", "NUMERIC(10, 2)"), False),
        (Column("signup", "DATE"), False),
        (Column("customer_id", "TEXT", samples=["c-1"]), False),
        (Column("homepageUrl", "TEXT", samples=["http://x"]), False),
        (Column("day", "TEXT", samples=["2024-01-05", "2024-02-01"]), False),
        (Column("notes", "TEXT", samples=["x" * 77 + "..."]), False),  # cut by values.sample_value: prose
        (Column("comment", "TEXT", samples=["a fairly long remark about the order and its delivery"]), False),
        (Column("full_name", "TEXT", samples=["a fairly long remark about the order and its delivery"]), True),
    ],
)
def test_indexable_columns(column: Column, expected: bool) -> None:
    assert indexable(column) is expected


def test_distinct_values_sql_quotes_and_orders_by_frequency() -> None:
    assert distinct_values_sql("stores", "state", "duckdb") == (
        'SELECT "state" FROM "stores" WHERE NOT "state" IS NULL AND LENGTH("state") <= 80 '
        'GROUP BY "state" ORDER BY COUNT(*) DESC, "state"')
    assert distinct_values_sql("my table", "we'ird", "mysql").startswith("SELECT `we'ird` FROM `my table`")


def test_grounding_lines_keep_to_the_shown_schema() -> None:
    schema = Schema("t", "sqlite", [Table("customers", [Column("id", "INTEGER"), Column("country", "TEXT")])])
    matches = [
        ValueMatch("customers", "country", "United States", "US", 0.85, "abbreviation"),
        ValueMatch("customers", "country", "USA", "US", 0.8, "abbreviation"),
        ValueMatch("customers", "country", "USA", "usa", 1.0, "exact"),
        ValueMatch("customers", "city", "O'Hare", "ohare", 0.9, "fuzzy"),  # column not shown
        ValueMatch("stores", "state", "AZ", "Arizona", 0.7, "abbreviation"),  # table not shown
    ]
    assert grounding_lines(matches, schema) == [
        "-- column customers.country: values matching the question: 'United States', 'USA'"]
    shown = Schema("t", "sqlite", [Table("customers", [Column("city", "TEXT")])])
    assert grounding_lines(matches, shown) == ["-- column customers.city: values matching the question: 'O''Hare'"]
