#!/usr/bin/env python
"""Text-to-SQL execution accuracy on defog sql-eval (issue 7): what each stage of the Tables flow adds.

Questions: the 210 sql-eval questions (6 categories x 35) over 11 databases, from
../shared/data/text2sql (see its SOURCE.md), split into two fixed halves (`split_halves`),
stratified by database and category: within each (db, category) group, in id order, the questions
go alternately to the eval half and the example half (a group of 5 gives 3+2 or 2+3; which half a
group starts with keeps its category and database even), so each half has 105 questions, 17-18
per category, and every database differs by at most one between the halves. A question whose gold
SQL (any alternative, any dialect) equals another's on the same database follows that one into
its half (ids 135/136 are such a pair), so no evaluated question's gold can come back as one of
its examples.

Every step is evaluated on the eval half only, so the steps stay comparable; --limit / --every /
--all select from the eval half (by default --limit 42: 7 per category, spread over the
databases). Results written before the split (before the `fewshot` step existed) drew their
subsets from all 210 questions, so their question ids differ; the JSON records the split
(`questions.split` = "half", `questions.ids`, `questions.eval_half_ids`, `questions.example_half_ids`).

Each question is asked of ragloom's text-to-SQL pipeline (connectors/text2sql.py) with the bundled
model, on a connector per database and dialect (SQLite files; PostgreSQL and MariaDB databases
`t2s_<db>` built from the original Postgres dumps by benchmarks/text2sql_data.py on first use).

Six cumulative configurations (--steps):
- plain:   prompt with the full schema, free decoding, no retry;
- link:    + schema linking (only the relevant tables in prompt and grammar);
- grammar: + decoding constrained by a SQL grammar built from the (linked) schema;
- correct: + one self-correction round with the error text when the query fails;
- fewshot: + retrieved few-shot examples: the example half's questions with their gold SQL (the
           first alternative of the dialect tested, as it runs there) are added to that database's
           connector through ConnectorRegistry.add_example (what `ragloom tables NAME --add-example
           QUESTION SQL` calls; the guard checks each), and the pipeline puts the
           Text2SqlOptions.few_shot (3) most similar ones (embedding similarity of the questions)
           in the prompt. Only this step and `ground` see examples: they run on a separate
           in-memory registry's connectors, the earlier steps get none;
- ground:  + value grounding: stored values the question's literals name (case, spelling,
           abbreviations) listed under the schema (connectors/grounding.py, as CHESS does).

Execution accuracy as sql-eval computes it (text2sql_data.results_match): the prediction is correct
if its result set matches ANY gold alternative's on the same database (gold columns matched by
value, extra prediction columns ignored, duplicate rows dropped, rows order-insensitive unless the
gold has a top-level ORDER BY, and then only its sort columns must follow the gold's order, so ties
may differ; floats to 4 decimals, a midnight timestamp equals its date). Gold SQL runs on a plain read-only connection
(not through the guard) with a timeout, once per (dialect, question); the prediction's final SQL is
re-run on the same connection so both sides come from the same driver without the guard's row cap.

Per step and dialect: execution accuracy, valid-SQL rate (parses, names only real tables and
columns), execution-error rate (the final attempt failed), mean generated tokens and seconds per
question; per-category accuracy and every answer in the JSON (with `examples`: the example questions
the prompt showed, and `example_ids`). Before the model runs, every gold
alternative of all 210 questions is executed on each dialect (the gold sanity line).

    python benchmarks/text2sql.py                                   # SQLite, 42 eval-half questions, 6 steps
    python benchmarks/text2sql.py --dialects sqlite,postgres,mysql --every 5
    python benchmarks/text2sql.py --gold-only --dialects sqlite,postgres,mysql   # data check, no model
"""

from __future__ import annotations

import argparse
import functools
import os
import sqlite3
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlglot
from results_io import write_results
from sqlglot import exp
from text2sql_data import (
    CATEGORIES,
    DEFAULT_DATA,
    DEFAULT_MYSQL,
    DEFAULT_PG,
    DIALECTS,
    GoldCache,
    Question,
    ReadOnlyDB,
    Result,
    ensure_mariadb,
    ensure_postgres,
    is_correct,
    load_dates,
    load_questions,
    mysql_row_counts,
    postgres_row_counts,
    select_questions,
    sqlite_path,
    sqlite_row_counts,
    sqlite_url,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STEPS = ("plain", "link", "grammar", "correct", "fewshot", "ground")
FEW_SHOT = 3  # examples per prompt in the steps from `fewshot` on (Text2SqlOptions.few_shot's default)
SPLIT = "half"
QUICK = {"limit": 6, "max_tokens": 96}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def step_options(step: str, max_tokens: int, timeout_s: float) -> dict[str, Any]:
    level = STEPS.index(step)
    return {"link": level >= 1, "grammar": level >= 2, "self_correct": level >= 3,
            "few_shot": FEW_SHOT if uses_examples(step) else 0, "ground_values": level >= 5,
            "max_tokens": max_tokens, "timeout_s": timeout_s}


def uses_examples(step: str) -> bool:
    return STEPS.index(step) >= STEPS.index("fewshot")


# --------------------------------------------------------------------------- the split


def _norm_sql(sql: str) -> str:
    return " ".join(sql.split()).rstrip(";").strip().lower()


def _gold_keys(q: Question) -> set[tuple[str, str]]:
    return {(q.db, _norm_sql(s)) for golds in q.gold.values() for s in golds}


def _alternate(members: Sequence[Question], follows: dict[int, tuple[str, str]], placed: dict[tuple[str, str], int],
               start: int) -> dict[int, int]:
    """Halves (0 eval, 1 example) for one group: alternating from `start`; a question in `follows`
    takes the half of the gold it shares."""
    out: dict[int, int] = {}
    keyside = dict(placed)
    turn = start
    for q in members:
        if q.id in follows:
            out[q.id] = keyside[follows[q.id]]
        else:
            out[q.id], turn = turn, 1 - turn
        for k in _gold_keys(q):
            keyside.setdefault(k, out[q.id])
    return out


def split_halves(questions: Sequence[Question]) -> tuple[list[Question], list[Question]]:
    """(eval half, example half), each in id order, stratified by database and category.

    Each (db, category) group, in (db, category) order, its questions in id order, alternates
    between the halves, so a group of 5 gives 3+2 or 2+3. A group starts with the half that keeps
    its category and its database closest to even (the sum of the two eval-minus-example counts'
    sizes), then the totals (ties: eval); on sql-eval every category and database then differs by at
    most one between the halves (tests/unit/test_benchmark_smoke.py checks it). A
    question whose gold SQL (normalized, any alternative, any dialect) equals one already placed on
    the same database goes to that one's half, outside the alternation, so that no evaluated
    question's gold can be an example's (check_split)."""
    side: dict[int, int] = {}
    placed: dict[tuple[str, str], int] = {}
    diff: dict[tuple[str, str], int] = {}  # eval minus example: per category, per database, in all
    groups: dict[tuple[str, str], list[Question]] = {}
    for q in sorted(questions, key=lambda q: (q.db, q.category, q.id)):
        groups.setdefault((q.db, q.category), []).append(q)
    for (db, category), members in groups.items():
        seen = set(placed)
        follows = {}  # question id -> an already placed key it shares (does not depend on the start)
        for q in members:
            keys = _gold_keys(q)
            if shared := sorted(keys & seen):
                follows[q.id] = shared[0]
            seen |= keys
        options = [_alternate(members, follows, placed, start) for start in (0, 1)]
        deltas = [sum(1 if h == 0 else -1 for h in o.values()) for o in options]
        cat, dbk, total = ("category", category), ("db", db), ("all", "")
        scores = [(abs(diff.get(cat, 0) + d) + abs(diff.get(dbk, 0) + d), abs(diff.get(total, 0) + d), start)
                  for start, d in enumerate(deltas)]
        chosen = options[min(scores)[-1]]
        for q in members:
            side[q.id] = chosen[q.id]
            for k in _gold_keys(q):
                placed.setdefault(k, chosen[q.id])
            for key in (cat, dbk, total):
                diff[key] = diff.get(key, 0) + (1 if chosen[q.id] == 0 else -1)
    eval_half = sorted((q for q in questions if side[q.id] == 0), key=lambda q: q.id)
    example_half = sorted((q for q in questions if side[q.id] == 1), key=lambda q: q.id)
    check_split(eval_half, example_half)
    return eval_half, example_half


def check_split(eval_half: Sequence[Question], example_half: Sequence[Question]) -> None:
    """The halves are disjoint, and no eval question's gold SQL (any alternative, any dialect) is an
    example question's gold on the same database."""
    ids = {q.id for q in eval_half}
    if ids & {q.id for q in example_half}:
        raise AssertionError("eval and example halves share questions")
    example_keys = set().union(*(_gold_keys(q) for q in example_half))
    for q in eval_half:
        if _gold_keys(q) & example_keys:
            raise AssertionError(f"question {q.id}'s gold SQL is an example's gold on {q.db}")


def check_examples(questions: Sequence[Question], dialect: str, examples: dict[str, list[dict[str, str]]]) -> None:
    """No evaluated question, nor any of its gold alternatives in this dialect, is among the examples
    its database's connector holds."""
    for q in questions:
        exs = examples.get(q.db, [])
        sqls = {_norm_sql(e["sql"]) for e in exs}
        texts = {e["question"].strip() for e in exs}
        if {_norm_sql(s) for s in q.gold[dialect]} & sqls:  # raised, not asserted: python -O keeps the check
            raise AssertionError(f"question {q.id}'s gold SQL is among its examples")
        if q.text(dialect).strip() in texts:
            raise AssertionError(f"question {q.id} is among its own examples")


def register_examples(registry: Any, dialect: str, urls: dict[str, str], dbs: Sequence[str],
                      example_half: Sequence[Question], cache: GoldCache) -> dict[str, Any]:
    """Registers each database on `registry` and adds the example half's questions of that database
    with their first gold alternative in this dialect (the statement that ran in the gold sanity
    check: for MariaDB a rewritten one where that was needed), through add_example. Returns what was
    added and what was left out (gold does not run, or the guard refuses it)."""
    info: dict[str, Any] = {"added": {}, "skipped": []}
    for db in dbs:
        registry.register(db, urls[db])
        ids = []
        for q in (q for q in example_half if q.db == db):
            sql, result, error = cache.gold(dialect, q)[0]
            if result is None:
                info["skipped"].append({"id": q.id, "db": db, "reason": f"gold fails: {error}"})
                continue
            try:
                registry.add_example(db, q.text(dialect), sql)
            except Exception as exc:
                info["skipped"].append({"id": q.id, "db": db, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            ids.append(q.id)
        info["added"][db] = ids
    return info


# --------------------------------------------------------------------------- databases


def prepare_databases(dialects: list[str], dbs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """URL per (dialect, db); PostgreSQL/MariaDB databases are created and loaded if missing.
    Row counts per table are checked against the SQLite files."""
    urls: dict[str, dict[str, str]] = {d: {} for d in dialects}
    row_checks: dict[str, dict[str, Any]] = {d: {} for d in dialects if d != "sqlite"}
    for db in dbs:
        want = sqlite_row_counts(db, args.data)
        if "sqlite" in dialects:
            urls["sqlite"][db] = sqlite_url(db, args.data)
        if "postgres" in dialects or "mysql" in dialects:
            pg = ensure_postgres(db, args.data, args.pg, reload=args.reload, log=log)
            if "postgres" in dialects:
                urls["postgres"][db] = pg
                got = postgres_row_counts(db, args.data, args.pg)
                row_checks["postgres"][db] = {"tables": len(got), "rows": sum(got.values()), "equal_to_sqlite": got == want}
        if "mysql" in dialects:
            urls["mysql"][db] = ensure_mariadb(db, args.data, args.mysql, args.pg, reload=args.reload, log=log)
            got = mysql_row_counts(db, args.mysql)
            row_checks["mysql"][db] = {"tables": len(got), "rows": sum(got.values()), "equal_to_sqlite": got == want}
    return {"urls": urls, "row_checks": row_checks}


def gold_sanity(cache: GoldCache, questions: list[Question], dialects: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dialects:
        first_ok = alt_ok = alts = empty_first = none_ok = 0
        errors = []
        for q in questions:
            golds = cache.gold(d, q)
            alts += len(golds)
            alt_ok += sum(r is not None for _, r, _ in golds)
            if golds and golds[0][1] is not None:
                first_ok += 1
                empty_first += not golds[0][1].rows
            if not any(r is not None for _, r, _ in golds):
                none_ok += 1
            errors += [{"id": q.id, "db": q.db, "sql": s[:300], "error": e} for s, r, e in golds if r is None]
        adapted = {k[1]: v for k, v in cache.adapted.items() if k[0] == d}
        out[d] = {"questions": len(questions), "first_gold_executes": first_ok, "alternatives": alts,
                  "first_gold_executes_as_written": first_ok - sum(
                      1 for q in questions if q.id in adapted and adapted[q.id][0][0] == q.gold[d][0]),
                  "alternatives_adapted": sum(len(v) for v in adapted.values()),
                  "adapted": [{"id": i, "as_written": a[:300], "as_run": b[:300]} for i, v in adapted.items() for a, b in v],
                  "alternatives_execute": alt_ok, "first_gold_empty": empty_first,
                  "questions_without_working_gold": none_ok, "errors": errors}
    return out


# --------------------------------------------------------------------------- running


@functools.cache
def schema_names(db: str, data: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(tables, columns of any table) of a database, lower case; the same in every dialect."""
    con = sqlite3.connect(f"file:{sqlite_path(db, data)}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        cols = {r[1].lower() for t in tables for r in con.execute(f'PRAGMA table_info("{t}")')}
    finally:
        con.close()
    return frozenset(t.lower() for t in tables), frozenset(cols)


def name_check(sql: str, dialect: str, db: str, data: Path) -> tuple[bool, bool]:
    """(parses as one query, names only tables and columns that exist in the database): the
    grammar's own promise, looser than `valid`, which also needs every column in scope."""
    from ragloom.connectors.guard import MAX_NESTING, nesting_depth
    from ragloom.errors import SqlError

    try:
        if nesting_depth(sql, dialect) > MAX_NESTING:  # sqlglot's parse time explodes; the guard refuses these too
            return False, False
    except SqlError:  # it does not even tokenize
        return False, False
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except (sqlglot.errors.SqlglotError, RecursionError):
        return False, False
    if not isinstance(tree, exp.Query):
        return False, False
    tables, cols = schema_names(db, data)
    aliases = {a.alias.lower() for a in tree.find_all(exp.Alias)}
    real = all(t.name.lower() in tables for t in tree.find_all(exp.Table)) and all(
        c.name.lower() in cols or c.name.lower() in aliases for c in tree.find_all(exp.Column) if c.name != "*")
    return True, real


def evaluate(answer: Any, q: Question, dialect: str, cache: GoldCache, data: Path,
             example_ids: dict[str, int] | None = None) -> dict[str, Any]:
    golds = cache.gold(dialect, q)
    ran = answer.error is None
    correct = False
    reexec_error = None
    n_rows = None
    if ran:
        try:
            pred = cache.db(dialect, q.db).run(answer.sql)
        except Exception as e:  # fall back to what the pipeline returned
            reexec_error = f"{type(e).__name__}: {str(e)[:200]}"
            pred = Result(list(answer.columns), [tuple(r) for r in answer.rows])
        n_rows = len(pred.rows)
        correct = is_correct(pred, golds, dialect)
    return {
        "id": q.id,
        "db": q.db,
        "category": q.category,
        "correct": correct,
        "valid": bool(answer.valid),
        "parses": name_check(answer.sql, dialect, q.db, data)[0],
        "real_names": name_check(answer.sql, dialect, q.db, data)[1],
        "ran": ran,
        "error": None if ran else str(answer.error)[:300],
        "attempts": answer.attempts,
        "sql": answer.sql,
        "rows": n_rows,
        "reexec_error": reexec_error,
        "linked_tables": list(answer.linked_tables),
        "grounded_values": list(getattr(answer, "grounded_values", [])),
        "examples": list(getattr(answer, "examples", [])),
        "example_ids": [(example_ids or {}).get(e) for e in getattr(answer, "examples", [])],
        "prompt_tokens": answer.prompt_tokens,
        "generated_tokens": answer.generated_tokens,
        "seconds": answer.seconds,
    }


def summarize(dialect: str, step: str, records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    n = len(records)

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in records) if records else 0.0

    per_cat = {}
    for c in CATEGORIES:
        rs = [r for r in records if r["category"] == c]
        if rs:
            per_cat[c] = {"n": len(rs), "correct": sum(r["correct"] for r in rs),
                          "accuracy": sum(r["correct"] for r in rs) / len(rs)}
    return {
        "dialect": dialect,
        "step": step,
        "questions": n,
        "correct": sum(r["correct"] for r in records),
        "accuracy": sum(r["correct"] for r in records) / n if n else 0.0,
        "valid_rate": sum(r["valid"] for r in records) / n if n else 0.0,
        "parse_rate": sum(r.get("parses", False) for r in records) / n if n else 0.0,
        "real_names_rate": sum(r.get("real_names", False) for r in records) / n if n else 0.0,
        "exec_error_rate": sum(not r["ran"] for r in records) / n if n else 0.0,
        "mean_generated_tokens": mean("generated_tokens"),
        "mean_prompt_tokens": mean("prompt_tokens"),
        "mean_attempts": mean("attempts"),
        "with_examples_rate": sum(bool(r.get("examples")) for r in records) / n if n else 0.0,
        "mean_latency_s": mean("seconds"),
        "wall_s": wall,
        "s_per_question": wall / n if n else 0.0,
        "per_category": per_cat,
        "answers": records,
    }


def failed_record(q: Question, error: str) -> dict[str, Any]:
    return {"id": q.id, "db": q.db, "category": q.category, "correct": False, "valid": False, "ran": False,
            "error": error, "attempts": 0, "sql": "", "rows": None, "reexec_error": None, "linked_tables": [],
            "examples": [], "example_ids": [], "prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}


def run_step(t2s: Any, opts: Any, dialect: str, questions: list[Question], connectors: dict[str, Any],
             cache: GoldCache, data: Path, examples: dict[str, list[dict[str, str]]] | None = None,
             example_ids: dict[str, dict[str, int]] | None = None) -> tuple[list[dict[str, Any]], float, list[str]]:
    """One batch per database (the pipeline batches generation within answer_batch), with that
    database's solved examples when `examples` is given. A batch that raises counts its questions as
    failed (error "pipeline: ...") and the step goes on."""
    records: dict[int, dict[str, Any]] = {}
    crashes: list[str] = []
    t0 = time.perf_counter()
    for db in dict.fromkeys(q.db for q in questions):
        qs = [q for q in questions if q.db == db]
        try:
            answers = t2s.answer_batch(connectors[db], [q.text(dialect) for q in qs], opts,
                                       [q.instructions_for(dialect) for q in qs], (examples or {}).get(db, []))
            if len(answers) != len(qs):
                raise RuntimeError(f"answer_batch returned {len(answers)} answers for {len(qs)} questions")
        except Exception as exc:
            msg = f"pipeline: {type(exc).__name__}: {str(exc)[:300]}"
            crashes.append(f"{db}: {msg}")
            traceback.print_exc()
            for q in qs:
                records[q.id] = failed_record(q, msg)
            continue
        for q, a in zip(qs, answers, strict=True):
            records[q.id] = evaluate(a, q, dialect, cache, data, (example_ids or {}).get(db))
    wall = time.perf_counter() - t0
    return [records[q.id] for q in questions], wall, crashes


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("dialect", "step", "n", "exec acc", "parses", "real names", "valid", "exec err", "gen tok", "attempts",
            "s/question")
    body = [
        (
            r["dialect"],
            r["step"],
            str(r["questions"]),
            f"{r['accuracy']:.1%} ({r['correct']})",
            f"{r.get('parse_rate', 0.0):.1%}",
            f"{r.get('real_names_rate', 0.0):.1%}",
            f"{r['valid_rate']:.1%}",
            f"{r['exec_error_rate']:.1%}",
            f"{r['mean_generated_tokens']:.1f}",
            f"{r['mean_attempts']:.2f}",
            f"{r['s_per_question']:.2f}",
        )
        for r in rows
    ]
    allrows = [head, *body]
    widths = [max(len(x[i]) for x in allrows) for i in range(len(head))]
    lines = [
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
        for x in allrows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def category_table(rows: list[dict[str, Any]]) -> str:
    cats = [c for c in CATEGORIES if any(c in r["per_category"] for r in rows)]
    lines = ["dialect  step     " + "  ".join(f"{c[:12]:>12}" for c in cats)]
    for r in rows:
        cells = []
        for c in cats:
            pc = r["per_category"].get(c)
            cells.append(f"{pc['correct']}/{pc['n']}".rjust(12) if pc else " " * 12)
        lines.append(f"{r['dialect']:<8} {r['step']:<8} " + "  ".join(cells))
    return "\n".join(lines)


def rescore(path: Path, data: Path) -> int:
    """Add the parse / real-names columns to a results file written before they existed."""
    import json

    doc = json.loads(path.read_text())
    for row in doc["results"]:
        for r in row["answers"]:
            r["parses"], r["real_names"] = name_check(r["sql"] or "", row["dialect"], r["db"], data)
        n = len(row["answers"]) or 1
        row["parse_rate"] = sum(r["parses"] for r in row["answers"]) / n
        row["real_names_rate"] = sum(r["real_names"] for r in row["answers"]) / n
    path.write_text(json.dumps(doc, indent=1, default=str))
    print(format_table(doc["results"]))
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Text-to-SQL execution accuracy on defog sql-eval with ragloom's pipeline and the bundled model: "
            "plain prompt, + schema linking, + SQL grammar, + self-correction, + retrieved few-shot examples, "
            "+ value grounding, per dialect. The 210 questions are split into two fixed halves stratified by "
            "database and category: every step is evaluated on the eval half (--limit/--every/--all select from "
            "it), and the other half supplies the few-shot examples. Writes benchmarks/results/text2sql-<device>.json."
        )
    )
    p.add_argument("--dialects", default="sqlite", help="comma-separated of sqlite,postgres,mysql; default: sqlite")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated of %(default)s (cumulative configurations)")
    p.add_argument("--limit", type=int, default=None,
                   help="questions of the eval half, stratified by category (default: 42 unless --every or --all "
                        "is given)")
    p.add_argument("--every", type=int, default=None, help="every K-th eval-half question of each category")
    p.add_argument("--all", action="store_true", help="the whole eval half (105 questions)")
    p.add_argument("--max-tokens", type=int, default=160, help="max new tokens per SQL attempt; default: 160")
    p.add_argument("--timeout", type=float, default=20.0, help="per-query timeout (gold and predictions), s; default: 20")
    p.add_argument("--model", default=None, help="bundled model name or HF folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="default: cpu")
    p.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences the engine decodes together; default: 16")
    p.add_argument("--kv-cache-tokens", type=int, default=65536, help="default: 65536")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="text2sql data folder; default: ../shared/data/text2sql")
    p.add_argument("--data-dir", type=Path, default=None, help="ragloom data dir (default: RAGLOOM_DATA_DIR or ~/.cache/ragloom)")
    p.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL server URL without database; default: %(default)s")
    p.add_argument("--mysql", default=DEFAULT_MYSQL, help="MariaDB/MySQL server URL without database; default: %(default)s")
    p.add_argument("--reload", action="store_true", help="drop and reload the PostgreSQL/MariaDB databases")
    p.add_argument("--gold-only", action="store_true", help="build the databases and run the gold sanity check; no model")
    p.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/text2sql-<device>.json")
    p.add_argument("--rescore", type=Path, metavar="JSON",
                   help="recompute the parse / real-names columns of a results file (no model) and print its table")
    p.add_argument("--quick", action="store_true", help="smoke test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if args.limit is None and args.every is None and not args.all:
        args.limit = 42
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    args.dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if bad := [d for d in args.dialects if d not in DIALECTS]:
        p.error(f"unknown dialects {bad}; choose from {DIALECTS}")
    if bad := [s for s in args.steps if s not in STEPS]:
        p.error(f"unknown steps {bad}; choose from {STEPS}")
    args.data = args.data.resolve()
    return args


def evaluated_questions(eval_half: Sequence[Question], args: argparse.Namespace) -> list[Question]:
    """The questions every step is asked: --limit / --every of the eval half, or all of it (--all)."""
    return select_questions(eval_half, limit=None if args.all else args.limit, every=None if args.all else args.every)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rescore:
        return rescore(args.rescore, args.data)
    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    all_questions = load_questions(args.data)
    eval_half, example_half = split_halves(all_questions)
    questions = evaluated_questions(eval_half, args)
    dbs = sorted({q.db for q in all_questions})
    log(f"{len(questions)} of the {len(eval_half)} eval-half questions ({len(all_questions)} in all); "
        f"dialects {args.dialects}; steps {args.steps}")

    prepared = prepare_databases(args.dialects, dbs, args)
    cache = GoldCache(lambda d, db: ReadOnlyDB(d, db, args.data, args.pg, args.mysql, args.timeout))
    t0 = time.perf_counter()
    sanity = gold_sanity(cache, all_questions, args.dialects)
    gold_s = time.perf_counter() - t0
    for d, s in sanity.items():
        log(f"gold {d}: first gold executes {s['first_gold_executes']}/{s['questions']} "
            f"({s['first_gold_executes_as_written']} as written), alternatives "
            f"{s['alternatives_execute']}/{s['alternatives']} ({s['alternatives_adapted']} adapted), questions without a working gold "
            f"{s['questions_without_working_gold']}, empty first gold {s['first_gold_empty']}")
    output = args.output or RESULTS_DIR / f"text2sql-{args.device}.json"

    results: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    settings_info: dict[str, Any] = {}
    example_info: dict[str, Any] = {}
    software: dict[str, Any] = {"python": sys.version.split()[0]}

    def build_report() -> dict[str, Any]:
        from generate import _version

        notes = [
            "accuracy = sql-eval's execution accuracy: correct if the prediction's result matches any gold alternative's "
            "(gold columns matched by value, extra columns ignored, duplicate rows dropped, rows order-insensitive unless "
            "that gold has a top-level ORDER BY: then the values of the result columns it sorts on must follow the gold's "
            "order, ties in any order; floats rounded to 4 decimals; a midnight timestamp equals its date). A query that "
            "failed counts as wrong.",
            "MySQL golds are sql-eval's (MySQL 8, databases named <db>); those that fail on MariaDB as written are run "
            "after a meaning-preserving rewrite (gold_sanity.mysql.adapted lists them).",
            "valid = the pipeline's SqlAnswer.valid (parses with sqlglot, names only real tables/columns); exec err = the "
            "final attempt failed (guard or database error).",
            "s/question = wall time of the step / questions (one engine batch per database); gen tok = generated tokens "
            "over all attempts, per question.",
            "Gold SQL per dialect comes from the matching sql-eval CSV (Postgres golds with {a, b} column alternatives "
            "expanded like sql-eval). Dialect-specific wording of question/instructions is used where the CSVs differ.",
            "Postgres/MariaDB dates relative to now are computed when the database was loaded (see load_dates); the SQLite "
            "files froze them on 2026-11-23.",
            "Questions come from the eval half of a fixed split (questions.split = 'half'; alternately eval / example "
            "within each (db, category) group in id order; a question with another's gold SQL follows it). The example half's questions, "
            "with their first gold in the dialect tested, are the few-shot examples of the steps from fewshot on "
            "(examples.<dialect>: added per database, and those left out). Earlier results (before the split) drew "
            "--limit/--every from all 210 questions.",
        ]
        if load_before is not None and load_before > 0.5:
            notes.append(f"WARNING: 1-minute load average was {load_before:.2f} before the run: timings are inflated.")
        return {
            "benchmark": "text2sql",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": [sys.executable, *sys.argv],
            "hardware": {"cpu_cores": os.cpu_count(), "threads": args.threads, "device": args.device,
                         "load_avg_1m_before": load_before,
                         "load_avg_1m_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
            "software": {**software, "sqlglot": _version("sqlglot"), "sqlalchemy": _version("sqlalchemy"),
                         "ragloom": _version("ragloom")},
            "settings": {
                **settings_info,
                "dialects": args.dialects,
                "steps": args.steps,
                "step_options": {s: step_options(s, args.max_tokens, args.timeout) for s in args.steps},
                "limit": args.limit,
                "every": args.every,
                "all": args.all,
                "max_tokens": args.max_tokens,
                "timeout_s": args.timeout,
                "threads": args.threads,
                "data": os.path.relpath(args.data, Path(__file__).resolve().parents[1]),
                "quick": args.quick,
            },
            "questions": {
                "split": SPLIT,
                "split_key": "alternating within each (db, category) group in id order; equal gold SQL kept in one half",
                "used": len(questions),
                "ids": [q.id for q in questions],
                "eval_half_ids": [q.id for q in eval_half],
                "example_half_ids": [q.id for q in example_half],
                "per_category": {c: sum(q.category == c for q in questions) for c in CATEGORIES},
                "per_db": {db: sum(q.db == db for q in questions) for db in dbs},
            },
            "databases": {"row_checks": prepared["row_checks"],
                          "load_dates": load_dates(dbs, args.pg, args.mysql) if set(args.dialects) - {"sqlite"} else {}},
            "gold_sanity": {**sanity, "seconds": gold_s},
            "examples": example_info,
            "results": [{k: v for k, v in r.items()} for r in results],
            "failed": failed,
            "notes": notes,
            "wall_s": time.perf_counter() - started,
        }

    if not args.gold_only:
        import torch

        torch.set_num_threads(args.threads)
        software["torch"] = torch.__version__
        from ragloom.config import BUNDLED_LLM, EngineSettings
        from ragloom.connectors.registry import ConnectorRegistry, open_connector
        from ragloom.connectors.text2sql import Text2Sql, Text2SqlOptions
        from ragloom.generation.runner.engine import LLMEngine

        extra = {"data_dir": args.data_dir} if args.data_dir else {}
        settings = EngineSettings(model=args.model or BUNDLED_LLM, device=args.device, dtype=args.dtype,
                                  max_num_seqs=args.max_num_seqs, kv_cache_tokens=args.kv_cache_tokens, **extra)
        engine = LLMEngine(settings)
        settings_info.update({"model": settings.model, "device": args.device, "dtype": args.dtype,
                              "max_num_seqs": args.max_num_seqs, "kv_cache_tokens": args.kv_cache_tokens})
        t2s = Text2Sql(engine)
        used_dbs = list(dict.fromkeys(q.db for q in questions))
        for dialect in args.dialects:
            try:
                connectors = {db: open_connector(db, prepared["urls"][dialect][db]) for db in used_dbs}
            except Exception as exc:
                failed[dialect] = f"connect: {type(exc).__name__}: {exc}"
                traceback.print_exc()
                continue
            # the example-using steps run on their own in-memory registry (its own connectors, the
            # examples added as the CLI's --add-example adds them); the earlier steps get no examples
            registry = None
            examples: dict[str, list[dict[str, str]]] = {}
            example_ids: dict[str, dict[str, int]] = {}
            if any(uses_examples(s) for s in args.steps):
                registry = ConnectorRegistry(None)
                try:
                    example_info[dialect] = register_examples(registry, dialect, prepared["urls"][dialect], used_dbs,
                                                              example_half, cache)
                    examples = {db: registry.examples(db) for db in used_dbs}
                    check_examples(questions, dialect, examples)
                    example_ids = {db: {q.text(dialect).strip(): q.id for q in example_half if q.db == db}
                                   for db in used_dbs}
                    log(f"{dialect}: {sum(len(v) for v in examples.values())} examples on {len(used_dbs)} databases, "
                        f"{len(example_info[dialect]['skipped'])} left out")
                except Exception as exc:
                    failed[f"{dialect}/examples"] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                    registry.close()
                    registry = None
            for step in args.steps:
                if uses_examples(step) and registry is None:
                    continue  # failed["<dialect>/examples"] says why
                log(f"{dialect} / {step}: {len(questions)} questions")
                opts = Text2SqlOptions(**step_options(step, args.max_tokens, args.timeout))
                try:
                    if uses_examples(step) and registry is not None:
                        records, wall, crashes = run_step(
                            t2s, opts, dialect, questions, {db: registry.get(db) for db in used_dbs}, cache,
                            args.data, examples, example_ids)
                    else:
                        records, wall, crashes = run_step(t2s, opts, dialect, questions, connectors, cache, args.data)
                except Exception as exc:
                    failed[f"{dialect}/{step}"] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                    continue
                if crashes:
                    failed[f"{dialect}/{step}"] = "; ".join(crashes)[:2000]
                row = summarize(dialect, step, records, wall)
                row["pipeline_crashes"] = crashes
                results.append(row)
                write_results(output, build_report())  # after each step
                log(f"  {dialect}/{step}: accuracy {row['accuracy']:.1%} valid {row['valid_rate']:.1%} "
                    f"exec err {row['exec_error_rate']:.1%} {row['s_per_question']:.2f} s/question")
            for c in connectors.values():
                close = getattr(c, "close", None)
                if callable(close):
                    close()
            if registry is not None:
                registry.close()

    report = build_report()
    write_results(output, report)
    cache.close()
    print(f"\ntext-to-SQL (defog sql-eval): {len(questions)} questions, dialects {','.join(args.dialects)}, "
          f"max_tokens {args.max_tokens}, {args.threads} threads, load before {load_before}")
    for d, s in sanity.items():
        adapted = (f" ({s['first_gold_executes_as_written']} as written)", f" ({s['alternatives_adapted']} adapted to MariaDB)")
        print(f"gold {d}: first gold executes {s['first_gold_executes']}/{s['questions']}{adapted[0] if d == 'mysql' else ''}, "
              f"alternatives {s['alternatives_execute']}/{s['alternatives']}{adapted[1] if d == 'mysql' else ''}")
    for d, checks in prepared["row_checks"].items():
        ok = sum(c["equal_to_sqlite"] for c in checks.values())
        print(f"rows {d}: {ok}/{len(checks)} databases have the SQLite DB's row count in every table")
    if results:
        print(format_table(results))
        print()
        print(category_table(results))
    for name, reason in failed.items():
        print(f"{name}: FAILED: {reason}")
    print(f"JSON: {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
