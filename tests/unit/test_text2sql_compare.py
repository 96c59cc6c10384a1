"""The text-to-SQL benchmark's execution-accuracy comparator (sql-eval's rules), without a model or a server."""

from __future__ import annotations

import datetime as dt
import decimal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from text2sql_data import (  # noqa: E402
    Result,
    expand_braces,
    gold_alternatives,
    has_top_level_order_by,
    is_correct,
    normalize_value,
    order_key_columns,
    results_match,
    select_questions,
    split_statements,
)

GOLD = Result(["name", "n"], [("a", 1), ("b", 2), ("c", 3)])


def test_identical_results_match() -> None:
    assert results_match(GOLD, Result(["name", "n"], list(GOLD.rows)))
    assert results_match(GOLD, Result(["name", "n"], list(GOLD.rows)), ordered=True)


def test_row_order_counts_only_with_order_by() -> None:
    shuffled = Result(["name", "n"], [("c", 3), ("a", 1), ("b", 2)])
    assert results_match(GOLD, shuffled, ordered=False)
    assert not results_match(GOLD, shuffled, ordered=True)
    golds = [("SELECT name, n FROM t", GOLD, None)]
    assert is_correct(shuffled, golds, "sqlite")
    golds = [("SELECT name, n FROM t ORDER BY n", GOLD, None)]
    assert not is_correct(shuffled, golds, "sqlite")


def test_ties_may_come_in_any_order() -> None:
    gold = Result(["name", "n"], [("x", 3), ("a", 1), ("b", 1)])
    sql = "SELECT name, COUNT(*) AS n FROM t GROUP BY name ORDER BY n DESC"
    assert order_key_columns(sql, "sqlite", 2) == [1]
    tied_swapped = Result(["name", "n"], [("x", 3), ("b", 1), ("a", 1)])
    assert is_correct(tied_swapped, [(sql, gold, None)], "sqlite")
    out_of_order = Result(["name", "n"], [("b", 1), ("x", 3), ("a", 1)])
    assert not is_correct(out_of_order, [(sql, gold, None)], "sqlite")
    # ORDER BY a column that is not in the result: whole rows must keep the gold's order
    assert order_key_columns("SELECT name FROM t ORDER BY age", "sqlite", 1) is None
    assert order_key_columns("SELECT a.x, COUNT(*) FROM a GROUP BY a.x ORDER BY 2, a.x", "sqlite", 2) == [1, 0]
    assert order_key_columns(
        "SELECT d, SUM(v) AS s FROM t GROUP BY d ORDER BY CASE WHEN s IS NULL THEN 1 ELSE 0 END, s", "sqlite", 2
    ) == [1]


def test_top_level_order_by_only() -> None:
    assert has_top_level_order_by("SELECT a FROM t ORDER BY a DESC LIMIT 3")
    assert not has_top_level_order_by("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3) AS s")
    assert not has_top_level_order_by("SELECT a, RANK() OVER (ORDER BY b) FROM t")
    assert has_top_level_order_by("SELECT a FROM t WHERE x = 'order by' ORDER BY a", "postgres")


def test_float_tolerance_and_types() -> None:
    gold = Result(["r"], [(1 / 3,), (2.0,)])
    assert results_match(gold, Result(["ratio"], [(decimal.Decimal("0.33333333"),), (2,)]))
    assert not results_match(gold, Result(["ratio"], [(0.334,), (2,)]))
    assert normalize_value(3.0) == 3 and normalize_value(True) == 1 and normalize_value(-0.0) == 0
    assert normalize_value(dt.date(2026, 11, 23)) == "2026-11-23"
    assert normalize_value(dt.datetime(2026, 11, 23, 8, 5)) == "2026-11-23 08:05:00"
    assert normalize_value(dt.datetime(2026, 11, 23, tzinfo=dt.UTC)) == "2026-11-23"
    assert normalize_value("2026-11-23 00:00:00") == "2026-11-23" != normalize_value("2026-11-23 00:00:01")


def test_extra_columns_and_column_order() -> None:
    gold = Result(["name"], [("a",), ("b",)])
    pred = Result(["id", "full_name", "score"], [(1, "a", 0.5), (2, "b", 0.7)])
    assert results_match(gold, pred)
    # gold columns may come in any order and under any name
    assert results_match(GOLD, Result(["count", "who"], [(2, "b"), (1, "a"), (3, "c")]))
    # but every gold column must be there, with the same pairing of values per row
    assert not results_match(GOLD, Result(["who"], [("a",), ("b",), ("c",)]))
    assert not results_match(GOLD, Result(["name", "n"], [("a", 2), ("b", 1), ("c", 3)]))


def test_empty_and_row_count_mismatch() -> None:
    empty = Result(["name", "n"], [])
    assert not results_match(GOLD, empty)
    assert not results_match(empty, GOLD)
    assert results_match(empty, Result(["x"], []))
    assert not results_match(GOLD, Result(["name", "n"], [("a", 1), ("b", 2)]))
    assert not results_match(GOLD, Result(["name", "n"], [*GOLD.rows, ("d", 4)]))


def test_duplicates_follow_sql_eval_dedupe() -> None:
    pred = Result(["name", "n"], [("a", 1), ("a", 1), ("b", 2), ("c", 3)])
    assert results_match(GOLD, pred, dedupe=True)  # sql-eval drops duplicate rows before comparing
    assert not results_match(GOLD, pred, dedupe=False)


def test_any_gold_alternative() -> None:
    golds = [
        ("SELECT aid FROM t", Result(["aid"], [(7,), (8,)]), None),
        ("SELECT bad FROM t", None, "OperationalError: no such column"),
        ("SELECT name FROM t", Result(["name"], [("x",), ("y",)]), None),
    ]
    assert is_correct(Result(["name"], [("y",), ("x",)]), golds)
    assert not is_correct(Result(["name"], [("z",), ("x",)]), golds)


def test_gold_parsing() -> None:
    assert split_statements("SELECT 'a;b' FROM t; SELECT 2;;") == ["SELECT 'a;b' FROM t", "SELECT 2"]
    assert expand_braces("SELECT {a.x, a.y}, COUNT(*) FROM a GROUP BY {} ORDER BY 2") == [
        "SELECT a.x, COUNT(*) FROM a GROUP BY a.x ORDER BY 2",
        "SELECT a.y, COUNT(*) FROM a GROUP BY a.y ORDER BY 2",
        "SELECT a.x, a.y, COUNT(*) FROM a GROUP BY a.x, a.y ORDER BY 2",
    ]
    assert gold_alternatives("SELECT {a,b} FROM t;SELECT c FROM t;") == [
        "SELECT a FROM t", "SELECT b FROM t", "SELECT a, b FROM t", "SELECT c FROM t"
    ]


@pytest.mark.parametrize(("limit", "every", "n"), [(42, None, 42), (None, 5, 12), (13, None, 13), (None, None, 60), (6, 3, 6)])
def test_stratified_selection(limit: int | None, every: int | None, n: int) -> None:
    from text2sql_data import Question

    qs = [Question(i, f"db{i % 7}", ("a", "b", "c", "d", "e", "f")[i // 10], "q", "", {}) for i in range(60)]
    chosen = select_questions(qs, limit=limit, every=every)
    assert len(chosen) == n and len({q.id for q in chosen}) == n
    per_cat = {c: sum(q.category == c for q in chosen) for c in "abcdef"}
    assert max(per_cat.values()) - min(per_cat.values()) <= 1
