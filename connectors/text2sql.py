"""Text-to-SQL: link the schema, prompt, decode under a SQL grammar of the linked schema, guard,
execute read-only, and correct once with the error text.

The pipeline is a small state machine so that one implementation serves both the offline batch
(`answer_batch`, driving `LLMEngine.generate`) and the gRPC service (driving the async engine):
`start()` returns a task whose `job` is the next generation to run; `feed()` consumes that
generation's text and either finishes the task (`task.answer`) or sets the next job (the
self-correction round).

Steps, each of which can be switched off to measure its gain (benchmarks/text2sql.py):
- `link`: keep the tables and columns the question is about (schema.py); off = the whole schema.
- `grammar`: decoding constrained by `sql_grammar(linked tables, dialect)`, so only real tables
  and columns can be named and the output always parses; off = free text, SQL cut out of it.
- `self_correct`: when the guard or the database rejects the query, ask once more with the error.
- `ground_values`: the stored values that the question's literals name ('US' -> 'United States',
  'arizona' -> 'Arizona'), found in an index of each text column's distinct values (grounding.py,
  as CHESS does), are listed under the schema, one comment line per column.

Small tables can instead be answered directly from a compact serialization of their rows
(mode "table", or "auto" when the linked tables fit in `table_token_budget` tokens).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import sqlglot
from sqlglot import exp

from ragloom.connectors.base import Connector, Rows, Schema
from ragloom.connectors.grounding import ValueMatch, grounding_lines, value_index
from ragloom.connectors.guard import guard
from ragloom.connectors.schema import SchemaLinker, schema_ddl, serialize_rows
from ragloom.errors import ForbiddenQuery, InvalidArgument, RagloomError, SqlError
from ragloom.generation.constrain.processor import Constraint
from ragloom.generation.runner.params import SamplingParams

DIALECT_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL", "mysql": "MySQL/MariaDB", "duckdb": "DuckDB"}
MODES = ("sql", "table", "auto")

SYSTEM_PROMPT = (
    "You are an expert data analyst. Write one {dialect} SELECT query that answers the question, "
    "using only the tables and columns of the schema. Reply with the SQL query only."
)
TABLE_SYSTEM_PROMPT = "You answer questions about the tables given, briefly and only from their contents."


@dataclass
class Text2SqlOptions:
    link: bool = True
    grammar: bool = True
    self_correct: bool = True
    mode: str = "sql"  # "sql" | "table" (answer from the rows) | "auto" (table when it fits)
    max_tokens: int = 160
    temperature: float = 0.0
    max_rows: int = 1000
    timeout_s: float = 30.0
    few_shot: int = 3  # similar solved examples put in the prompt, when the connector has some
    samples: int = 2  # sample values per column in the schema text
    table_token_budget: int = 1500
    # Off until benchmarks/text2sql.py (step "ground") shows it helps: its first question on a
    # connector also reads every short text column's distinct values (cached afterwards).
    ground_values: bool = False
    ground_limit: int = 8  # matched values shown in the prompt, at most
    # the other sampling settings of every generation (top_p, seed, stop, ...); max_tokens and
    # temperature above replace its own. None: SamplingParams' defaults
    sampling: SamplingParams | None = None
    # Set (the Tables service does): the answer holds only the first this many rows and keeps
    # the statement open in SqlAnswer.more for the caller to stream the rest. None: all rows.
    first_rows: int | None = None

    def validate(self) -> None:
        # field paths as in QueryRequest, which carries these settings
        if self.mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}", field="mode")
        if not 1 <= self.max_tokens <= 4096:
            raise InvalidArgument(f"max_tokens must be in [1, 4096], got {self.max_tokens}", field="sampling.max_tokens")
        if self.max_rows < 1:
            raise InvalidArgument(f"max_rows must be >= 1, got {self.max_rows}", field="max_rows")
        if not self.timeout_s > 0:
            raise InvalidArgument(f"timeout_s must be > 0, got {self.timeout_s}", field="timeout_s")
        if not self.temperature >= 0:
            raise InvalidArgument(f"temperature must be >= 0, got {self.temperature}", field="sampling.temperature")
        if self.ground_limit < 1:
            raise InvalidArgument(f"ground_limit must be >= 1, got {self.ground_limit}")

    def params(self) -> SamplingParams:
        """The sampling parameters of one generation."""
        return replace(self.sampling or SamplingParams(), max_tokens=self.max_tokens, temperature=self.temperature)


@dataclass
class SqlAnswer:
    question: str
    sql: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # the driver's values (ResultSet.rows)
    column_types: list[str] = field(default_factory=list)  # as the database reported them; "" where it did not
    truncated: bool = False
    tables: list[str] = field(default_factory=list)  # tables the query read
    error: str | None = None  # why the final attempt failed; None when it ran
    attempts: int = 0
    valid: bool = False  # parses, one SELECT, names only real tables and columns
    linked_tables: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    mode: str = "sql"  # what answered: "sql" or "table"
    answer: str = ""  # the text answer of table mode
    failed_sql: list[str] = field(default_factory=list)  # the attempts not answered with, for the caller to see
    grounded_values: list[str] = field(default_factory=list)  # "table.column = 'value'" shown in the prompt
    examples: list[str] = field(default_factory=list)  # questions of the solved examples put in the prompt
    # with Text2SqlOptions.first_rows: the statement's remaining rows, open until read or closed
    more: Rows | None = None
    refused: list[ForbiddenQuery] = field(default_factory=list)  # the guard's refusals, for the server's metrics


@dataclass
class GenerationJob:
    prompt_ids: list[int]
    params: SamplingParams
    constraint: Constraint | None


@dataclass
class SqlTask:
    connector: Connector
    question: str
    options: Text2SqlOptions
    schema: Schema  # the connector's full schema (validity is judged against it)
    linked: Schema  # what the prompt and grammar show
    messages: list[dict[str, str]]
    started: float
    job: GenerationJob | None = None
    answer: SqlAnswer | None = None
    scope: list[str] | None = None  # tables the correction round's grammar keeps to
    values: list[ValueMatch] = field(default_factory=list)  # stored values the question names (ground_values)
    shots: list[str] = field(default_factory=list)  # questions of the few-shot examples in the prompt


def extract_sql(text: str) -> str:
    """The first SQL statement in free text: inside a ``` fence if there is one, from the first
    SELECT/WITH to the first semicolon outside quotes (or the end)."""
    fence = re.search(r"```(?:sql)?\s*(.*?)(?:```|$)", text, re.S | re.I)
    if fence:
        text = fence.group(1)
    m = re.search(r"\b(select|with)\b", text, re.I)
    if not m:
        return text.strip()
    text = text[m.start():]
    quote: str | None = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif ch == ";":
            return text[:i].strip()
    return text.strip()


def _from_tables(sql: str, schema: Schema) -> list[str] | None:
    """The schema's tables a query reads (FROM/JOIN), or None when it does not parse or reads none."""
    try:
        tree = sqlglot.parse_one(sql, read=schema.dialect)
    except (sqlglot.errors.SqlglotError, RecursionError):
        return None
    names = [t for t in (schema.table(x.name) for x in tree.find_all(exp.Table)) if t is not None]
    return list(dict.fromkeys(t.name for t in names)) or None


def close_sql(constraint: Constraint, text: str) -> str:
    """Constrained output that a token limit cut off mid-query, closed so that it still parses: the
    grammar's shortest completion (a missing `)` or `'`, a last operand, `FROM <table>`). Complete
    output comes back as is."""
    grammar = constraint.grammar
    state = grammar.advance(grammar.initial, text)
    if state is None or grammar.can_end(state):
        return text.strip()
    rest = grammar.shortest_completion(state, budget=300)
    return (text + rest).strip() if rest is not None else text.strip()


class Text2Sql:
    def __init__(self, engine: Any, embedder: Any | None = None, linker: SchemaLinker | None = None) -> None:
        self.engine = engine  # LLMEngine: encode(), compile_constraint(), tokenizer, generate()
        if linker is None:
            if embedder is None:
                from ragloom.retrieval.embed import Embedder

                embedder = Embedder()
            linker = SchemaLinker(embedder)
        self.linker = linker

    # ---- the state machine -----------------------------------------------------------------

    def start(
        self,
        connector: Connector,
        question: str,
        options: Text2SqlOptions | None = None,
        examples: Sequence[dict[str, str]] = (),
        instructions: str = "",
    ) -> SqlTask:
        opts = options or Text2SqlOptions()
        opts.validate()
        if not question.strip():
            raise InvalidArgument("the question is empty", field="question")
        started = time.monotonic()
        schema = connector.schema()
        if not schema.tables:
            raise InvalidArgument(f"connector {connector.name!r} has no tables to query")
        linked = self.linker.link(schema, question).schema if opts.link else schema
        task = SqlTask(connector, question, opts, schema, linked, [], started)
        if opts.mode in ("table", "auto"):
            table_text = self._table_text(connector, linked, opts)
            if table_text is not None:
                task.messages = [
                    {"role": "system", "content": TABLE_SYSTEM_PROMPT},
                    {"role": "user", "content": f"{table_text}\n\nQuestion: {question}"},
                ]
                task.job = GenerationJob(self.engine.encode(messages=task.messages), opts.params(), None)
                return task
            if opts.mode == "table":
                raise InvalidArgument(
                    f"the tables {', '.join(t.name for t in linked.tables)} are too large to answer from "
                    f"their rows (over {opts.table_token_budget} tokens); use mode 'sql' or 'auto'"
                )
        shots = self._examples(question, examples, opts.few_shot)
        task.shots = [ex["question"] for ex in shots]
        ddl = schema_ddl(linked, opts.samples)
        if opts.ground_values:
            task.values = self._ground(connector, question, linked, opts)
            if lines := grounding_lines(task.values, linked):
                ddl += "\n" + "\n".join(lines)
        user = f"Database schema ({DIALECT_NAMES.get(schema.dialect, schema.dialect)}):\n{ddl}\n\n"
        for ex in shots:
            user += f"Question: {ex['question']}\nSQL: {ex['sql']}\n\n"
        user += f"Question: {question}"
        if instructions:
            user += f"\nInstructions: {instructions}"
        task.messages = [
            {"role": "system", "content": SYSTEM_PROMPT.format(dialect=DIALECT_NAMES.get(schema.dialect, schema.dialect))},
            {"role": "user", "content": user},
        ]
        task.job = self._sql_job(task)
        return task

    def feed(self, task: SqlTask, text: str, completion_tokens: int) -> None:
        """Consume the output of `task.job`; sets `task.answer`, or a new `task.job` to correct."""
        job = task.job
        assert job is not None, "feed() without a pending job"
        task.job = None
        ans = task.answer or SqlAnswer(
            task.question, linked_tables=[t.name for t in task.linked.tables],
            grounded_values=[f"{m.table}.{m.column} = '{m.value}'" for m in task.values],
            examples=list(task.shots),
        )
        task.answer = ans
        ans.prompt_tokens += len(job.prompt_ids)
        ans.generated_tokens += completion_tokens
        if job.constraint is None and task.messages[0]["content"] == TABLE_SYSTEM_PROMPT:
            ans.mode, ans.answer, ans.attempts, ans.valid = "table", text.strip(), 1, False
            ans.seconds = time.monotonic() - task.started
            return
        if job.constraint is not None:
            sql = close_sql(job.constraint, text)
        else:
            sql = extract_sql(text)
        sql = sql.rstrip(";").strip()
        previous = (ans.sql, ans.error, ans.valid) if ans.attempts else None
        ans.attempts += 1
        if ans.sql:
            ans.failed_sql.append(ans.sql)
        ans.sql, ans.error, ans.valid = sql, None, False
        opts = task.options
        try:
            checked = guard(sql, task.schema.dialect, task.schema, opts.max_rows, getattr(task.connector, "qualifiers", None))
            ans.sql, ans.valid = checked.sql, True  # as it runs (LIMIT, one line), also if the database refuses it
            rows = task.connector.open(sql, max_rows=opts.max_rows, timeout_s=opts.timeout_s)
            try:
                if opts.first_rows is None:
                    ans.rows = rows.result().rows
                else:
                    # errors surface in the first read (PostgreSQL and unbuffered MySQL run the
                    # statement as rows are fetched), so a correction round still sees them
                    ans.rows = rows.fetch(opts.first_rows)
            except BaseException:
                rows.close()
                raise
            ans.columns, ans.truncated, ans.tables, ans.column_types = rows.columns, rows.truncated, rows.tables, rows.column_types
            ans.sql = rows.sql
            ans.more = None if rows.closed else rows
        except (SqlError, ForbiddenQuery, RagloomError) as exc:
            ans.error = str(exc)
            if isinstance(exc, ForbiddenQuery):
                ans.refused.append(exc)
            if opts.self_correct and ans.attempts == 1:
                task.scope = _from_tables(sql, task.schema) if job.constraint is not None and "column" in ans.error else None
                task.messages = task.messages + [
                    {"role": "assistant", "content": sql or "(empty)"},
                    {"role": "user", "content": f"That query failed: {ans.error}\nWrite a corrected query."},
                ]
                task.job = self._sql_job(task)
                return
            if previous is not None and previous[2] and not ans.valid:
                # the correction is worse than the query it corrects (the guard refuses it): answer
                # with that one and its error, which the caller can act on
                ans.failed_sql[-1] = ans.sql
                ans.sql, ans.error, ans.valid = previous
        ans.seconds = time.monotonic() - task.started

    # ---- offline drivers -------------------------------------------------------------------

    def answer_batch(
        self,
        connector: Connector,
        questions: Sequence[str],
        options: Text2SqlOptions | None = None,
        instructions: Sequence[str] | None = None,
        examples: Sequence[dict[str, str]] = (),
    ) -> list[SqlAnswer]:
        """Answer many questions, generating each round's SQL as one engine batch."""
        instr = list(instructions) if instructions is not None else [""] * len(questions)
        tasks = [self.start(connector, q, options, examples, i) for q, i in zip(questions, instr)]
        while pending := [t for t in tasks if t.job is not None]:
            jobs = [t.job for t in pending if t.job is not None]
            done = self.engine.generate([j.prompt_ids for j in jobs], [j.params for j in jobs], [j.constraint for j in jobs])
            for t, c in zip(pending, done):
                self.feed(t, c.text, c.completion_tokens)
        return [t.answer for t in tasks if t.answer is not None]

    def answer(self, connector: Connector, question: str, options: Text2SqlOptions | None = None,
               examples: Sequence[dict[str, str]] = (), instructions: str = "") -> SqlAnswer:
        return self.answer_batch(connector, [question], options, [instructions], examples)[0]

    # ---- pieces ----------------------------------------------------------------------------

    def _sql_job(self, task: SqlTask) -> GenerationJob:
        opts = task.options
        constraint = None
        if opts.grammar:
            # a correction after a name error keeps to the tables the query chose (PICARD-style
            # scope): the grammar then offers exactly their columns, not every linked table's
            shown = task.schema.subset(task.scope).tables if task.scope else task.linked.tables
            tables = {t.name: [c.name for c in t.columns] for t in shown}
            constraint = self.engine.compile_constraint("sql", {"tables": tables, "dialect": task.schema.dialect})
        return GenerationJob(self.engine.encode(messages=task.messages), opts.params(), constraint)

    def _ground(self, connector: Connector, question: str, linked: Schema, opts: Text2SqlOptions) -> list[ValueMatch]:
        """The stored values the question names, in the columns the prompt shows."""
        matches = value_index(connector).match(question, limit=4 * opts.ground_limit)
        # the index covers every table; only what the linked schema shows can be named in the SQL
        shown = [m for m in matches if (t := linked.table(m.table)) is not None and t.column(m.column) is not None]
        return shown[: opts.ground_limit]

    def _examples(self, question: str, examples: Sequence[dict[str, str]], k: int) -> list[dict[str, str]]:
        if not examples or k <= 0:
            return []
        if len(examples) <= k:
            return list(examples)
        emb = self.linker.embedder.encode([question] + [e["question"] for e in examples])
        order = np.argsort(-(emb[1:] @ emb[0]))[:k]
        return [examples[int(i)] for i in order[::-1]]  # most similar last, nearest the question

    def _table_text(self, connector: Connector, linked: Schema, opts: Text2SqlOptions) -> str | None:
        """The linked tables' rows as markdown, or None when they do not fit the token budget."""
        if any(t.row_count is None or t.row_count > opts.table_token_budget // 4 for t in linked.tables):
            return None
        parts = []
        for t in linked.tables:
            query = sqlglot.select("*").from_(exp.to_identifier(t.name)).sql(dialect=linked.dialect)
            res = connector.execute(query, max_rows=opts.table_token_budget, timeout_s=opts.timeout_s)
            parts.append(f"Table {t.name}:\n" + serialize_rows(res.columns, res.rows, max_rows=len(res.rows)))
        text = "\n\n".join(parts)
        if len(self.engine.tokenizer.encode(text)) > opts.table_token_budget:
            return None
        return text
