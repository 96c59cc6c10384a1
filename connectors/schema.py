"""Schema linking and schema/table text for prompts.

Linking keeps the tables and columns a question is about, so the prompt stays short and the SQL
grammar built from the linked schema leaves the model few wrong names to pick. Every table and
column is embedded once per schema with the bundled sentence embedder (names split into words,
plus type, description and sample values); a question is scored against them, with a small bonus
for words or values it mentions literally (embeddings miss exact identifiers such as "aid").
Tables that join two kept tables are kept too (one hop over foreign keys), so are the tables a
kept link table joins, and so are the keys that join them: a query over linked tables must still be able to join them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragloom.connectors.base import Column, Schema, Table
from ragloom.connectors.values import display

_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")


def words(name: str) -> list[str]:
    """'sbCustomerId' -> ['sb', 'customer', 'id']; 'domain_author' -> ['domain', 'author']."""
    return [w.lower() for w in _WORD.findall(name)]


def _stem(word: str) -> str:
    """Plural to singular, roughly: 'authors' and 'author' must match."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def column_text(table: Table, col: Column) -> str:
    parts = [f"{' '.join(words(table.name))} {' '.join(words(col.name))} ({col.type.lower()})"]
    if col.description:
        parts.append(col.description)
    if col.samples:
        parts.append("values: " + ", ".join(display(s)[:40] for s in col.samples[:3]))
    return "; ".join(parts)


def table_text(table: Table) -> str:
    cols = ", ".join(" ".join(words(c.name)) for c in table.columns[:24])
    desc = f": {table.description}" if table.description else ""
    return f"table {' '.join(words(table.name))}{desc} (columns: {cols})"


@dataclass
class LinkedSchema:
    schema: Schema  # the kept tables, each with only its kept columns
    scores: dict[str, float]  # table name -> score, for logs and the response


@dataclass
class _Embedded:
    tables: np.ndarray  # [tables, dim]
    columns: np.ndarray  # [columns, dim]
    column_owner: list[tuple[int, int]]  # (table index, column index) per row of `columns`


class SchemaLinker:
    """Scores tables and columns against a question; caches the schema's embeddings."""

    def __init__(
        self,
        # an Embedder (anything with encode(texts) -> L2-normalized rows), or a function returning
        # one: the server shares the collections' embedder, which loads on first use
        embedder: Any,
        # measured on the 210 defog questions (all gold tables kept / tables kept of 11.5):
        # 4 tables, margin 0.12: 0.75 / 2.0; 4, 0.3: 0.88 / 3.2; 6, 0.3: 0.91 / 4.2; these: 0.90 / 3.8
        max_tables: int = 5,
        max_columns: int = 12,
        table_margin: float = 0.3,
        cache_size: int = 32,
    ) -> None:
        self._embedder = embedder
        self.max_tables = max_tables
        self.max_columns = max_columns
        self.table_margin = table_margin
        self._cache: OrderedDict[str, _Embedded] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Any:
        if not hasattr(self._embedder, "encode") and callable(self._embedder):
            self._embedder = self._embedder()
        return self._embedder

    def _embed(self, schema: Schema) -> _Embedded:
        key = hashlib.sha256(
            repr([(t.name, [(c.name, c.type, c.description, c.samples[:3]) for c in t.columns], t.description)
                  for t in schema.tables]).encode()
        ).hexdigest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        owner = [(ti, ci) for ti, t in enumerate(schema.tables) for ci in range(len(t.columns))]
        vecs = self.embedder.encode(
            [table_text(t) for t in schema.tables]
            + [column_text(schema.tables[ti], schema.tables[ti].columns[ci]) for ti, ci in owner]
        )
        emb = _Embedded(vecs[: len(schema.tables)], vecs[len(schema.tables):], owner)
        with self._lock:
            self._cache[key] = emb
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return emb

    def link(self, schema: Schema, question: str) -> LinkedSchema:
        if not schema.tables:
            return LinkedSchema(schema, {})
        emb = self._embed(schema)
        q = self.embedder.encode([question])[0]
        q_words = {_stem(w) for w in words(question)} | {_stem(w.lower()) for w in re.findall(r"\w+", question)}
        q_low = question.lower()

        def lexical(table: Table, col: Column | None) -> float:
            name = col.name if col is not None else table.name
            bonus = 0.0
            if name.lower() in q_low or (words(name) and {_stem(w) for w in words(name)} <= q_words):
                bonus += 0.1
            if col is not None and any(
                isinstance(s, str) and len(s) > 2 and s.lower() in q_low for s in col.samples
            ):
                bonus += 0.15
            return bonus

        table_scores = emb.tables @ q
        col_scores = emb.columns @ q
        per_table_cols: dict[int, list[tuple[float, int]]] = {}
        for row, (ti, ci) in enumerate(emb.column_owner):
            t = schema.tables[ti]
            s = float(col_scores[row]) + lexical(t, t.columns[ci])
            per_table_cols.setdefault(ti, []).append((s, ci))
        score = {}
        for ti, t in enumerate(schema.tables):
            best_col = max((s for s, _ in per_table_cols.get(ti, [])), default=-1.0)
            score[ti] = max(float(table_scores[ti]) + lexical(t, None), best_col)
        ranked = sorted(score, key=lambda i: -score[i])
        top = score[ranked[0]]
        kept = [i for i in ranked[: self.max_tables] if score[i] >= top - self.table_margin] or ranked[:1]
        kept_set = set(kept)
        # one hop: a table whose foreign keys reach two kept tables (a link table) joins them
        for ti, t in enumerate(schema.tables):
            if ti in kept_set:
                continue
            reach = {self._index(schema, fk.ref_table) for fk in t.foreign_keys} & kept_set
            reach |= {k for k in kept_set if any(self._index(schema, fk.ref_table) == ti
                                                  for fk in schema.tables[k].foreign_keys)}
            if len(reach) >= 2:
                kept_set.add(ti)
        # and a kept link table (two or more foreign keys) is useless without what it links
        for ti in list(kept_set):
            fks = schema.tables[ti].foreign_keys
            if len(fks) >= 2:
                kept_set |= {i for i in (self._index(schema, fk.ref_table) for fk in fks) if i >= 0}
        names_kept = {schema.tables[i].name.lower() for i in kept_set}
        tables: list[Table] = []
        for ti in sorted(kept_set):
            t = schema.tables[ti]
            keys = {c.lower() for c in t.primary_key}
            for fk in t.foreign_keys:
                if fk.ref_table.lower() in names_kept:
                    keys |= {c.lower() for c in fk.columns}
            for other in kept_set:  # columns other kept tables reference
                for fk in schema.tables[other].foreign_keys:
                    if fk.ref_table.lower() == t.name.lower():
                        keys |= {c.lower() for c in fk.ref_columns}
            if len(t.columns) <= self.max_columns:
                cols = list(t.columns)
            else:
                best = {ci for _, ci in sorted(per_table_cols[ti], key=lambda p: -p[0])[: self.max_columns]}
                cols = [c for ci, c in enumerate(t.columns) if ci in best or c.name.lower() in keys]
            fks = [fk for fk in t.foreign_keys if fk.ref_table.lower() in names_kept]
            tables.append(Table(t.name, cols, t.primary_key, fks, t.row_count, t.description))
        return LinkedSchema(
            Schema(schema.connector, schema.dialect, tables),
            {schema.tables[i].name: round(score[i], 4) for i in sorted(kept_set, key=lambda i: -score[i])},
        )

    @staticmethod
    def _index(schema: Schema, name: str) -> int:
        low = name.lower()
        return next((i for i, t in enumerate(schema.tables) if t.name.lower() == low), -1)


# ---- text for prompts ----------------------------------------------------------------------


def _sample_text(value: Any) -> str:
    # texts, dates and times are written as the SQL literals that compare with them
    if isinstance(value, str | dt.date | dt.time):
        return "'" + display(value)[:30].replace("'", "''") + "'"
    return display(value)


def schema_ddl(schema: Schema, samples: int = 2) -> str:
    """CREATE TABLE statements with keys, and a few sample values per column as comments."""
    out: list[str] = []
    for t in schema.tables:
        items: list[tuple[str, str]] = []  # (definition, comment)
        for c in t.columns:
            definition = f"  {c.name} {c.type}"
            if c.primary_key and len(t.primary_key) <= 1:
                definition += " PRIMARY KEY"
            notes = []
            if samples and c.samples:
                notes.append("e.g. " + ", ".join(_sample_text(s) for s in c.samples[:samples]))
            if c.description:
                notes.append(c.description[:80])
            items.append((definition, "; ".join(notes)))
        if len(t.primary_key) > 1:
            items.append((f"  PRIMARY KEY ({', '.join(t.primary_key)})", ""))
        for fk in t.foreign_keys:
            items.append((f"  FOREIGN KEY ({', '.join(fk.columns)}) REFERENCES {fk.ref_table}({', '.join(fk.ref_columns)})", ""))
        lines = [
            d + ("," if i < len(items) - 1 else "") + (f" -- {note}" if note else "")
            for i, (d, note) in enumerate(items)
        ]
        out.append(f"CREATE TABLE {t.name} (\n" + "\n".join(lines) + "\n);")
    return "\n".join(out)


def serialize_rows(columns: list[str], rows: list[tuple[Any, ...]], max_rows: int = 50, max_cell: int = 40) -> str:
    """A compact markdown table: capped rows, truncated cells, and a note of what was cut."""

    def cell(v: Any) -> str:
        s = display(v)
        s = s.replace("|", "/").replace("\n", " ")
        return s if len(s) <= max_cell else s[: max_cell - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows[:max_rows]]
    if len(rows) > max_rows:
        lines.append(f"({len(rows) - max_rows} more rows not shown)")
    return "\n".join(lines)
