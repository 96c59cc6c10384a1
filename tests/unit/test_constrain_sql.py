"""The per-schema SQL grammar (generation/constrain/sql.py): what it accepts and refuses in each dialect,
that what it accepts parses in the dialect (sqlglot) and binds in sqlite and duckdb, the benchmark's gold
SQL, and token-level masks with the bundled model's tokenizer."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from typing import Any

import duckdb
import numpy as np
import pytest
import sqlglot
from conftest import SHARED_DATA, shared_data

from ragloom.errors import GrammarError
from ragloom.generation.constrain.grammar import Grammar, _regex_tables, compile_grammar
from ragloom.generation.constrain.masks import advance_bytes
from ragloom.generation.constrain.processor import compile_constraint
from ragloom.generation.constrain.sql import DIALECTS, MAX_DEPTH, _needs_quotes, _quote, sql_grammar

TEXT2SQL = SHARED_DATA / "text2sql"

# Prefixes on purpose: author / author_id, name / name_id, notes (not), isbn (is), description (desc);
# date, count and year are also function names (count(, date(, year( in mysql).
SCHEMA = {
    "author": ["author_id", "name", "name_id", "country", "born", "notes"],
    "book": ["book_id", "title", "author_id", "year", "price", "genre", "date", "isbn", "description"],
    "sale": ["sale_id", "book_id", "sold_at", "quantity", "amount", "count"],
}
DDL = {
    "author": "author_id INTEGER, name VARCHAR, name_id INTEGER, country VARCHAR, born INTEGER, notes VARCHAR",
    "book": "book_id INTEGER, title VARCHAR, author_id INTEGER, year INTEGER, price DOUBLE, genre VARCHAR, "
    "date DATE, isbn VARCHAR, description VARCHAR",
    "sale": "sale_id INTEGER, book_id INTEGER, sold_at TIMESTAMP, quantity INTEGER, amount DOUBLE, count INTEGER",
}

# valid in every dialect
PORTABLE = [
    "SELECT * FROM author",
    "SELECT name FROM author WHERE country = 'France'",
    "select name, born from author where born > 1900 order by born desc limit 10",
    "SELECT author.name, book.title FROM author JOIN book ON author.author_id = book.author_id",
    "SELECT author.name, COUNT(*) AS books FROM author LEFT JOIN book ON book.author_id = author.author_id "
    "GROUP BY author.name ORDER BY books DESC",
    "SELECT DISTINCT genre FROM book ORDER BY genre",
    "SELECT title FROM book WHERE price BETWEEN 10 AND 20 AND genre IN ('poetry', 'drama')",
    "SELECT title FROM book WHERE title LIKE '%war%' OR title NOT LIKE 'The %'",
    "SELECT name FROM author WHERE country IS NULL",
    "SELECT name FROM author WHERE country IS NOT NULL AND NOT born < 1800",
    "SELECT name FROM author WHERE author_id IN (SELECT author_id FROM book WHERE year >= 2000)",
    "SELECT name FROM author WHERE NOT EXISTS (SELECT 1 FROM book WHERE book.author_id = author.author_id)",
    "SELECT title, price * 1.2 AS price_with_tax FROM book",
    "SELECT title FROM book WHERE price > (SELECT AVG(price) FROM book)",
    "SELECT genre, AVG(price), MIN(price), MAX(price), SUM(price) FROM book GROUP BY genre HAVING COUNT(*) > 2",
    "SELECT COUNT(DISTINCT author_id) FROM book",
    "SELECT title FROM book ORDER BY price DESC LIMIT 5 OFFSET 10",
    "SELECT name FROM author UNION SELECT title FROM book",
    "SELECT author_id FROM author UNION ALL SELECT author_id FROM book ORDER BY 1",
    "SELECT author_id FROM author EXCEPT SELECT author_id FROM book",
    "SELECT author_id FROM author INTERSECT SELECT author_id FROM book;",
    "SELECT title, CASE WHEN price < 10 THEN 'cheap' WHEN price < 30 THEN 'mid' ELSE 'dear' END AS band FROM book",
    "SELECT CASE genre WHEN 'poetry' THEN 1 ELSE 0 END FROM book",
    "SELECT book.* FROM book CROSS JOIN author WHERE book.author_id = author.author_id",
    "SELECT title FROM book, author WHERE book.author_id = author.author_id AND author.name = 'O''Brien'",
    "SELECT sale.quantity % 2, -sale.amount, sale.amount / 3 FROM sale INNER JOIN book ON sale.book_id = book.book_id",
    "SELECT sale.count, book.date, book.year FROM sale JOIN book ON sale.book_id = book.book_id",
    "SELECT SUM(count) FROM sale",
    "SELECT title FROM book WHERE year = 2020 AND (genre = 'drama' OR genre = 'comedy')",
    "SELECT name FROM author WHERE born NOT BETWEEN 1900 AND 1950 AND author_id NOT IN (1, 2, 3)",
    "SELECT title FROM book WHERE price >= 10 AND price <= 20 AND price <> 15 AND price != 16",
    "SELECT name\nFROM author\nWHERE born > 1900\nORDER BY name ASC",
    "SELECT author.name FROM author LEFT OUTER JOIN book ON author.author_id = book.author_id WHERE book.book_id IS NULL",
    "SELECT name FROM author WHERE name = (SELECT MAX(name) FROM author)",
    "SELECT name_id, notes FROM author WHERE NOT notes IS NULL",
    "SELECT title FROM book WHERE isbn IS NOT NULL ORDER BY description DESC",
    "SELECT lower(name), upper(country), length(name), abs(born - 2000), round(born / 7, 2) FROM author",
    "SELECT coalesce(country, 'unknown'), nullif(born, 0), CURRENT_DATE, CURRENT_TIMESTAMP FROM author",
    "SELECT TRUE, FALSE, NULL FROM book",
    "SELECT 1 FROM book",
    "SELECT COUNT(*) AS n FROM book GROUP BY genre HAVING COUNT(*) > 1 ORDER BY n",
]
# sqlite, postgres and duckdb (not mysql: no NULLS FIRST/LAST, and || is OR there)
NOT_MYSQL = [
    "SELECT title FROM book ORDER BY price DESC NULLS LAST LIMIT 5",
    "SELECT name || ' (' || country || ')' FROM author",
]
DIALECT_QUERIES = {
    "sqlite": [
        "SELECT strftime('%Y', sold_at) AS y, SUM(amount) FROM sale GROUP BY y ORDER BY y",
        "SELECT date(sold_at), COUNT(*) FROM sale GROUP BY 1 ORDER BY 2 DESC",
        "SELECT julianday('now') - julianday(sold_at) FROM sale",
        "SELECT substr(name, 1, 3), ifnull(country, '?'), instr(name, 'a'), replace(name, 'a', 'b'), trim(name) "
        "FROM author",
        "SELECT datetime(sold_at, '+1 day'), date('now', '-10 years') FROM sale",
        "SELECT CAST(price AS INTEGER), CAST(year AS TEXT), CAST(price AS REAL) FROM book",
    ],
    "postgres": [
        "SELECT date_trunc('month', sold_at) AS month, SUM(amount) FROM sale GROUP BY 1 ORDER BY 1",
        "SELECT EXTRACT(YEAR FROM sold_at), to_char(sold_at, 'YYYY-MM') FROM sale",
        "SELECT title FROM book WHERE date > CURRENT_DATE - INTERVAL '1 month'",
        "SELECT now(), date_part('year', sold_at), substring(title, 1, 3), concat(title, isbn) FROM sale JOIN book "
        "ON sale.book_id = book.book_id",
        "SELECT CAST(price AS DOUBLE PRECISION), CAST(price AS NUMERIC(10, 2)), CAST(year AS TEXT) FROM book",
    ],
    "duckdb": [
        "SELECT date_trunc('month', sold_at) AS month, SUM(amount) FROM sale GROUP BY 1 ORDER BY 1",
        "SELECT EXTRACT(YEAR FROM sold_at), strftime(sold_at, '%Y-%m') FROM sale",
        "SELECT title FROM book WHERE date > CURRENT_DATE - INTERVAL '1 month'",
        "SELECT now(), date_part('year', sold_at), substring(title, 1, 3), concat(title, isbn) FROM sale JOIN book "
        "ON sale.book_id = book.book_id",
        "SELECT CAST(price AS DOUBLE), CAST(price AS DECIMAL(10, 2)), CAST(year AS VARCHAR) FROM book",
    ],
    "mysql": [
        "SELECT DATE_FORMAT(sold_at, '%Y-%m'), DATEDIFF(sold_at, CURDATE()) FROM sale",
        "SELECT title FROM book WHERE date >= DATE_SUB(NOW(), INTERVAL 30 DAY)",
        "SELECT YEAR(sold_at), MONTH(sold_at), DAY(sold_at), DATE_ADD(sold_at, INTERVAL 1 MONTH) FROM sale",
        "SELECT CONCAT(name, ' ', country), IFNULL(country, '-'), substring(name, 2) FROM author",
        "SELECT CAST(price AS SIGNED), CAST(price AS DECIMAL(10, 2)), EXTRACT(YEAR FROM sold_at) FROM sale "
        "JOIN book ON sale.book_id = book.book_id",
    ],
}


def corpus(dialect: str) -> list[str]:
    return PORTABLE + (NOT_MYSQL if dialect != "mysql" else []) + DIALECT_QUERIES[dialect]


@pytest.fixture(scope="module")
def grammars() -> dict[str, Grammar]:
    return {d: compile_grammar(sql_grammar(SCHEMA, d)) for d in DIALECTS}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_accepts_the_corpus_and_the_database_parser_agrees(grammars: dict[str, Grammar], dialect: str) -> None:
    g = grammars[dialect]
    queries = corpus(dialect)
    assert len(queries) >= 45
    refused = [q for q in queries if not g.accepts_text(q)]
    assert not refused
    for q in queries:
        sqlglot.parse_one(q, read=dialect)  # raises on SQL the dialect's parser refuses


def test_accepted_queries_bind_in_sqlite_and_duckdb(grammars: dict[str, Grammar]) -> None:
    """Stricter than parsing: the real engines resolve every name and function (EXPLAIN, no data)."""
    lite = sqlite3.connect(":memory:")
    duck = duckdb.connect(":memory:")
    for table, cols in DDL.items():
        lite.execute(f"CREATE TABLE {table} ({cols})")
        duck.execute(f"CREATE TABLE {table} ({cols})")
    for q in corpus("sqlite"):
        lite.execute("EXPLAIN " + q)
    for q in corpus("duckdb"):
        duck.execute("EXPLAIN " + q)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM authors",  # unknown table
        "SELECT nme FROM author",  # unknown column
        "SELECT book.name FROM book",  # name is author's column, not book's
        "SELECT author.title FROM author",
        "SELECT name FROM author AS a",  # table aliases are not part of the grammar
        "SELECT a.name FROM author a",
        "SELECT name FROM (SELECT name FROM author)",  # nor subqueries in FROM
        "WITH x AS (SELECT name FROM author) SELECT name FROM x",  # nor CTEs
        "SELECT ROW_NUMBER() OVER (ORDER BY name) FROM author",  # nor window functions
        "SELECT 1; SELECT 2",  # one statement
        "SELECT 1;;",
        "DROP TABLE author",
        "INSERT INTO author VALUES (1)",
        "UPDATE author SET name = 'x'",
        "DELETE FROM author",
        "SELECT name FROM author -- comment",
        "SELECT name FROM author /* comment */",
        "SELECT born - -1 FROM author",  # -- would start a comment
        "SELECT born--1 FROM author",
        "SELECTname FROM author",  # word boundaries: one identifier to the database
        "SELECT name FROMauthor",
        "SELECT name FROM author LIMIT 5OFFSET 1",
        "SELECT name FROM author WHERE born>1900AND born<2000",
        "SELECT name FROM author WHERE country = \"France\"",  # a double-quoted identifier, not a string
        "SELECT" + " " * 9 + "name FROM author",  # whitespace is bounded
        " SELECT name FROM author",  # ... and not before the first token
        "SELECT name FROM author WHERE country = 'a\nb'",
        "SELECT name FROM author WHERE country = '" + "x" * 101 + "'",
        "SELECT 1 AS from FROM author",  # an alias the database would refuse
        "SELECT COUNT (*) FROM author",  # a function name and its ( are one token here
        "SELECT name FROM author ORDER BY name NULLS",
        "SELECT lower(name, 1) FROM author",  # arity
        "SELECT julianday() FROM sale",
        "SELECT date_trunc('month', sold_at) FROM sale",  # postgres, not sqlite
        "SELECT name FROM author WHERE name LIKE 'a' ESCAPE '!'",
    ],
)
def test_refuses(grammars: dict[str, Grammar], query: str) -> None:
    assert not grammars["sqlite"].accepts_text(query)


@pytest.mark.parametrize(
    ("dialect", "query"),
    [
        ("mysql", "SELECT name || 'x' FROM author"),  # OR in mysql
        ("mysql", "SELECT name FROM author ORDER BY name NULLS LAST"),
        ("mysql", "SELECT CAST(price AS INTEGER) FROM book"),  # SIGNED in mysql
        ("postgres", "SELECT strftime('%Y', sold_at) FROM sale"),
        ("postgres", "SELECT NAME FROM author"),  # postgres: exactly the stored lower-case name
        ("postgres", "SELECT name FROM AUTHOR"),
        ("duckdb", "SELECT to_char(sold_at, 'YYYY') FROM sale"),
        ("sqlite", "SELECT EXTRACT(YEAR FROM sold_at) FROM sale"),
        ("sqlite", "SELECT title FROM book WHERE date > CURRENT_DATE - INTERVAL '1 month'"),
    ],
)
def test_dialect_differences(grammars: dict[str, Grammar], dialect: str, query: str) -> None:
    assert not grammars[dialect].accepts_text(query)


def test_case_folding() -> None:
    lite = compile_grammar(sql_grammar({"Author": ["authorId", "Name"]}, "sqlite"))
    assert lite.accepts_text("SELECT AUTHORID, name FROM author WHERE Author.NAME = 'x'")
    pg = compile_grammar(sql_grammar({"Author": ["authorId", "name"]}, "postgres"))
    assert pg.accepts_text('SELECT "authorId", name FROM "Author" WHERE "Author".name = \'x\'')
    assert not pg.accepts_text("SELECT authorId FROM Author")
    my = compile_grammar(sql_grammar({"Author": ["authorId"]}, "mysql"))
    assert my.accepts_text("SELECT AUTHORID FROM Author")  # columns fold, tables are case-sensitive
    assert not my.accepts_text("SELECT authorId FROM author")


def test_quoted_names() -> None:
    schema = {"order": ["id", "first name", "Total", 'say "hi"'], "User Data": ["id", "select"]}
    lite = compile_grammar(sql_grammar(schema, "sqlite"))
    for q in [
        'SELECT "first name", total, "say ""hi""" FROM "order"',
        'SELECT "order".id, "User Data"."select" FROM "order" JOIN "User Data" ON "order".id = "User Data".id',
    ]:
        assert lite.accepts_text(q), q
        sqlglot.parse_one(q, read="sqlite")
    for q in ["SELECT id FROM order", 'SELECT first name FROM "order"', 'SELECT select FROM "User Data"']:
        assert not lite.accepts_text(q), q
    my = compile_grammar(sql_grammar(schema, "mysql"))
    q = "SELECT `first name`, `order`.Total FROM `order`"
    assert my.accepts_text(q)
    sqlglot.parse_one(q, read="mysql")
    assert not my.accepts_text('SELECT "first name" FROM "order"')
    pg = compile_grammar(sql_grammar(schema, "postgres"))
    assert pg.accepts_text('SELECT "Total", "first name" FROM "order"')
    assert not pg.accepts_text('SELECT total FROM "order"')


def test_prefix_names_and_keywords_lex_by_maximal_munch(grammars: dict[str, Grammar]) -> None:
    g = grammars["sqlite"]
    for q in [
        "SELECT name_id FROM author",
        "SELECT name FROM author",
        "SELECT author.author_id FROM author",
        "SELECT author_id FROM book",
        "SELECT notes FROM author WHERE NOT notes IS NULL",
        "SELECT isbn FROM book WHERE isbn IS NULL ORDER BY description DESC",
        "SELECT date(date), count FROM book JOIN sale ON book.book_id = sale.book_id",
        "SELECT COUNT(count) AS counted FROM sale ORDER BY counted",
    ]:
        assert g.accepts_text(q), q
    # every prefix of an accepted query is a viable prefix, and no more
    q = "SELECT author.name_id FROM author WHERE author.notes IS NOT NULL ORDER BY name DESC"
    for i in range(len(q) + 1):
        assert g.accepts_prefix(q[:i]), q[:i]
    assert not g.accepts_prefix("SELECT author.name_i ")
    assert not g.accepts_prefix("SELECT book.name")
    assert g.accepts_prefix("SELECT book.") and not g.accepts_prefix("SELECT book.n")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_columns_named_like_keywords(dialect: str) -> None:
    """Every keyword of the grammar as a column name: reserved ones are quoted, the others (year, nulls,
    first, date, text, ...) stay bare and never lex as the keyword where a column is expected."""
    words = sorted(set(re.findall(r'"([a-z_]+)"i', sql_grammar({"t": ["x"]}, dialect))))
    g = compile_grammar(sql_grammar({"t": words}, dialect))
    for w in words:
        name = _quote(w, dialect) if _needs_quotes(w, dialect) else w
        q = f"SELECT {name}, t.{name} FROM t WHERE {name} IS NOT NULL ORDER BY {name}"
        assert g.accepts_text(q), q
        sqlglot.parse_one(q, read=dialect)


def test_output_aliases() -> None:
    g = compile_grammar(sql_grammar(SCHEMA, "sqlite"))
    assert g.accepts_text("SELECT genre, COUNT(*) AS n_books FROM book GROUP BY genre ORDER BY n_books DESC")
    # a context-free grammar cannot tell a defined alias from an undefined one in ORDER BY / GROUP BY
    assert g.accepts_text("SELECT genre FROM book ORDER BY undefined_alias")
    # ... but it never takes one where a column is expected
    assert not g.accepts_text("SELECT genre FROM book WHERE n_books > 1")
    assert not g.accepts_text("SELECT 1 AS order")
    assert not g.accepts_text("SELECT 1 AS Total")  # aliases are lower case


def test_max_limit() -> None:
    g = compile_grammar(sql_grammar(SCHEMA, "sqlite", max_limit=100))
    assert g.accepts_text("SELECT name FROM author LIMIT 100 OFFSET 5000")
    assert g.accepts_text("SELECT name FROM author LIMIT 0")
    for n in ["101", "1000", "007"]:
        assert not g.accepts_text(f"SELECT name FROM author LIMIT {n}")


def test_nesting_is_bounded_below_the_guards_limit() -> None:
    from ragloom.connectors.guard import MAX_NESTING, nesting_depth

    assert MAX_DEPTH + 1 <= MAX_NESTING  # + 1: decimal(p, s) inside the deepest CAST
    for dialect in DIALECTS:
        g = compile_grammar(sql_grammar(SCHEMA, dialect, max_depth=3))
        ok = "SELECT lower(lower(lower(name))) FROM author"
        assert g.accepts_text(ok), dialect
        for deep in ["SELECT lower(lower(lower(lower(name)))) FROM author",
                     "SELECT name FROM author WHERE author_id IN (SELECT author_id FROM author WHERE author_id IN (SELECT author_id FROM author "
                     "WHERE author_id IN (SELECT author_id FROM author WHERE author_id IN (1))))",
                     "SELECT ((((1)))) FROM author", "SELECT name FROM author WHERE ((EXISTS (SELECT lower(name) FROM author)))"]:
            assert nesting_depth(deep) == 4 and not g.accepts_text(deep), (dialect, deep)
        # at the last level a name, a literal or a closing parenthesis is still open to the model
        assert g.accepts_prefix("SELECT lower(lower(lower(") and not g.accepts_prefix("SELECT lower(lower(lower(lower(")
        assert not g.accepts_prefix("SELECT lower(lower(lower(name IN (")
        assert g.accepts_text("SELECT lower(lower(lower(author_id + 1 * CASE WHEN author_id > 1 THEN 2 END))) FROM author"), dialect
    g = compile_grammar(sql_grammar(SCHEMA, "sqlite"))
    runaway = "SELECT " + "date(" * MAX_DEPTH + "name" + ")" * MAX_DEPTH + " FROM author"
    assert g.accepts_text(runaway) and not g.accepts_text(runaway.replace("date(", "date(date(", 1))
    with pytest.raises(GrammarError, match="max_depth"):
        sql_grammar(SCHEMA, "sqlite", max_depth=0)


def test_bad_arguments() -> None:
    with pytest.raises(GrammarError, match="dialect"):
        sql_grammar(SCHEMA, "oracle")
    with pytest.raises(GrammarError, match="table"):
        sql_grammar({}, "sqlite")
    with pytest.raises(GrammarError, match="tables"):
        compile_constraint("sql", {"dialect": "sqlite"}, None, 0, frozenset())
    # tables without known columns: only * and table.*
    g = compile_grammar(sql_grammar({"t": []}, "sqlite"))
    assert g.accepts_text("SELECT t.* FROM t") and g.accepts_text("SELECT COUNT(*) FROM t")
    assert not g.accepts_text("SELECT x FROM t")


# ---- what sql.py needs from grammar.py --------------------------------------------------------------


def test_word_boundaries_only_where_declared() -> None:
    text = 'start: KW NAME\nKW: "if"i\nNAME: /[a-z]+/\n%ignore " "\n'
    assert Grammar.from_lark(text).accepts_text("ifx")  # two lexemes, as before
    bounded = Grammar.from_lark(text + "%declare WORD_BOUNDARY\n")
    assert not bounded.accepts_text("ifx") and bounded.accepts_text("IF x")


def test_literal_alternations_match_like_python_re() -> None:
    """Alternations of (case-insensitive) strings get their DFA from the linear fast path: same language as Python re."""
    rng = random.Random(0)
    alphabet = 'abAB_." 1'
    for _ in range(200):
        alts, words = [], []
        for _ in range(rng.randint(1, 5)):
            parts = [rng.choice(["(?i:%s)", "%s"]) % re.escape("".join(rng.choices(alphabet, k=rng.randint(1, 4))))
                     for _ in range(rng.randint(1, 3))]
            alts.append("".join(parts))
            words.append(re.sub(r"\(\?i:|\)|\\", "", alts[-1]))
        pattern = "(?:" + "|".join(alts) + ")"
        trans, accepting, class_of, other, _ = _regex_tables(pattern)
        for w in words:
            for s in [w, w.swapcase(), w[:-1], w + "a", "".join(rng.choices(alphabet, k=len(w)))]:
                q = 0
                for ch in s:
                    q = trans[q, class_of.get(ch, other)] if q >= 0 else -1
                assert (q >= 0 and bool(accepting[q])) == bool(re.fullmatch(pattern, s)), (pattern, s)


# ---- gold SQL of the text-to-SQL benchmark ---------------------------------------------------------


def _gold() -> tuple[list[dict[str, Any]], dict[str, dict[str, list[str]]]]:
    rows = [json.loads(line) for line in (TEXT2SQL / "questions.jsonl").read_text().splitlines() if line.strip()]
    schemas = {}
    for db in sorted({r["db"] for r in rows}):
        con = sqlite3.connect(f"file:{TEXT2SQL / 'dbs' / db}.sqlite?mode=ro", uri=True)
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        schemas[db] = {t: [c[1] for c in con.execute(f"PRAGMA table_info(\"{t}\")")] for t in tables}
        con.close()
    return rows, schemas


# Most golds that are refused use table aliases (`FROM author AS a`), CTEs or subqueries in FROM; in
# the other dialects also sqlite's date functions, NULLS LAST (mysql), upper-case table names (postgres).
GOLD_FLOOR = {"sqlite": 170, "duckdb": 160, "postgres": 150, "mysql": 85}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_gold_sql(dialect: str) -> None:
    shared_data("text2sql/questions.jsonl")
    rows, schemas = _gold()
    accepted = [r for r in rows if compile_grammar(sql_grammar(schemas[r["db"]], dialect)).accepts_text(r["gold_sql"])]
    print(f"\n{dialect}: {len(accepted)} of {len(rows)} gold queries accepted as-is")
    assert len(accepted) >= GOLD_FLOOR[dialect]
    for r in accepted:
        sqlglot.parse_one(r["gold_sql"], read=dialect)
    if dialect == "sqlite":  # and they run against the real databases
        for r in accepted:
            con = sqlite3.connect(f"file:{TEXT2SQL / 'dbs' / r['db']}.sqlite?mode=ro", uri=True)
            con.execute("EXPLAIN " + r["gold_sql"])
            con.close()


# ---- token level, with the bundled model's tokenizer -----------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from ragloom.config import default_data_dir
    from ragloom.models import BUNDLED_LLM, resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(BUNDLED_LLM, default_data_dir()))


def _compile(tokenizer: Any, dialect: str = "sqlite", schema: dict[str, list[str]] = SCHEMA) -> Any:
    spec = {"tables": schema, "dialect": dialect}
    return compile_constraint("sql", spec, tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}))


def test_token_walk_and_timings(tokenizer: Any) -> None:
    """Walk queries token by token through the matcher (every token allowed by the mask, EOS at the
    end) and print the compile and mask times; wall-clock time is not asserted (shared machines)."""
    from ragloom.generation.constrain import grammar

    timings = []
    for label, schema in [("cold", {**SCHEMA, "cold": ["x"]}), ("new schema, warm", {**SCHEMA, "warm": ["y"]})]:
        if label == "cold":  # nothing cached: LALR tables, terminal automata
            grammar._TABLES.clear()
            grammar._regex_tables.cache_clear()
        started = time.perf_counter()
        c = _compile(tokenizer, schema=schema)
        timings.append(f"{label}: compile + first mask {time.perf_counter() - started:.2f}s")
    queries = corpus("sqlite")[:12]
    started = time.perf_counter()
    n = 0
    for q in queries:
        m = c.matcher()
        for tid in tokenizer.encode(q, add_special_tokens=False):
            assert m.is_allowed(tid), (q, tokenizer.decode([tid]))
            assert m.accept_token(tid)
            n += 1
        assert m.can_end() and m.is_allowed(tokenizer.eos_token_id), q
    walk = time.perf_counter() - started
    started = time.perf_counter()
    m = c.matcher()
    for tid in tokenizer.encode(queries[4], add_special_tokens=False):
        m.mask()
        m.accept_token(tid)
    again = time.perf_counter() - started
    print(f"\nsql constraint, {len(c.grammar.terminals)} terminals; " + "; ".join(timings))
    print(f"{n} tokens of {len(queries)} queries walked with a mask per token in {walk:.2f}s "
          f"({1000 * walk / n:.1f} ms/token); one of them again (masks cached): {1000 * again:.0f} ms")


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return int(ids[0])


def test_masks_allow_only_real_columns(tokenizer: Any) -> None:
    c = _compile(tokenizer)
    m = c.matcher()
    for tid in tokenizer.encode("SELECT title FROM book WHERE", add_special_tokens=False):
        assert m.accept_token(tid)
    for real in [" price", " title", " genre", " book", " author", " name"]:  # tables start qualified names
        assert m.is_allowed(_single_token(tokenizer, real)), real
    for fake in [" salary", " email", " city", " username", " authors"]:
        assert not m.is_allowed(_single_token(tokenizer, fake)), fake
    for tid in tokenizer.encode(" book.", add_special_tokens=False):
        assert m.accept_token(tid)
    assert m.is_allowed(_single_token(tokenizer, "title")) and m.is_allowed(_single_token(tokenizer, "price"))
    assert not m.is_allowed(_single_token(tokenizer, "name"))  # author's column, not book's
    assert not m.is_allowed(_single_token(tokenizer, "email"))


def test_masks_agree_with_the_grammar_on_word_boundaries(tokenizer: Any) -> None:
    """The vectorized masks and the character-level matcher agree, word boundaries included, on a
    sample of the vocabulary at every token of a query."""
    c = _compile(tokenizer)
    g, vocab = c.grammar, c.masks.vocab
    rng = np.random.default_rng(0)
    sample = rng.choice(vocab.size, 600, replace=False)
    q = "SELECT author.name_id, COUNT(*) AS n FROM author WHERE born>1900 AND notes LIKE 'x%' ORDER BY n DESC LIMIT 5"
    state = g.initial
    for tid in tokenizer.encode(q, add_special_tokens=False):
        allowed = c.masks.allowed(state)
        assert allowed[tid]
        for j in sample:
            if j in vocab.partial:
                expected = advance_bytes(g, state, b"", vocab.partial[j]) is not None
            else:
                expected = bool(vocab.texts[j]) and g.advance(state, vocab.texts[j]) is not None
            assert allowed[j] == expected, (state, vocab.texts[j])
        state = g.advance(state, vocab.texts[tid])
    # after a complete number, a keyword needs a space first
    state = g.advance(g.initial, "SELECT name FROM author WHERE born > 5")
    allowed = c.masks.allowed(state)
    assert not allowed[_single_token(tokenizer, "AND")] and allowed[_single_token(tokenizer, " AND")]


@pytest.mark.parametrize(
    "cut",
    [
        "",
        "SE",
        "SELECT",
        "SELECT name FROM author WHERE name IN (1, 1, 1,",
        "SELECT COUNT(*) FROM paper WHERE title = 'abc",
        "SELECT author.name, (author.aid * 100",
        "SELECT name FROM author JOIN paper ON author.aid",
        "SELECT name AS nm",  # an alias: the next word needs a space
        "SELECT AVG(ROUND(ROUND(ROUND(ROUND(R",  # nested: the bounded levels run out below 8
        "SELECT * FROM author WHERE aid IN (SELECT aid FROM paper WHERE NOT aid IN (SELECT aid",
        "SELECT CASE WHEN (SELECT 1 FROM paper WHERE pid = 1) AND (SELECT 1 FROM pap",
    ],
)
def test_shortest_completion_closes_a_cut_query(cut: str) -> None:
    """A query cut off by a token limit is closed into one the grammar (and sqlglot) accepts."""
    import sqlglot

    from ragloom.connectors.text2sql import close_sql
    from ragloom.generation.constrain.grammar import compile_grammar
    from ragloom.generation.constrain.processor import Constraint
    from ragloom.generation.constrain.sql import sql_grammar

    g = compile_grammar(sql_grammar({"author": ["aid", "name"], "paper": ["pid", "title", "aid"]}, "sqlite"))
    state = g.advance(g.initial, cut)
    assert state is not None
    rest = g.shortest_completion(state)
    assert rest is not None
    assert g.accepts_text(cut + rest)
    sqlglot.parse_one(cut + rest, read="sqlite")
    constraint = Constraint(g, None, "sql")  # type: ignore[arg-type]  # close_sql needs only the grammar
    closed = close_sql(constraint, cut)
    assert closed == (cut + rest).strip()


@pytest.mark.parametrize("dialect", ["sqlite", "postgres", "mysql", "duckdb"])
def test_every_prefix_of_a_query_closes(dialect: str) -> None:
    """Wherever the token limit falls, the closed query parses in the grammar and in sqlglot."""
    import sqlglot

    from ragloom.generation.constrain.grammar import compile_grammar
    from ragloom.generation.constrain.sql import sql_grammar

    g = compile_grammar(sql_grammar({"author": ["aid", "name"], "paper": ["pid", "title", "aid", "year"]}, dialect))
    date = {"sqlite": "strftime('%Y', paper.year)", "postgres": "date_part('year', paper.year)",
            "duckdb": "date_trunc('month', paper.year)", "mysql": "year(paper.year)"}[dialect]
    query = (
        f"SELECT author.name, COUNT(DISTINCT paper.pid) AS n, {date} FROM author JOIN paper ON "
        "author.aid = paper.aid WHERE paper.title LIKE '%a%' AND NOT paper.aid IN (SELECT aid FROM paper "
        "WHERE (pid + 1) * 2 BETWEEN 1 AND 10) GROUP BY author.name HAVING COUNT(*) > 1 ORDER BY n DESC LIMIT 5"
    )
    for i in range(len(query)):
        state = g.advance(g.initial, query[:i])
        assert state is not None, query[:i]
        rest = g._planned_completion(state)
        assert rest is not None, query[:i]
        assert g.accepts_text(query[:i] + rest), (query[:i], rest)
        sqlglot.parse_one(query[:i] + rest, read=dialect)
