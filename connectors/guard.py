"""The SQL guard: one read-only SELECT over the connector's own tables, with a row limit.

Every statement a connector runs comes through here first, whether a model wrote it or a person
typed it. It is parsed with sqlglot and regenerated from the parse tree, so what reaches the
database is exactly what was checked: comments (including MySQL's executable `/*! ... */`) and
anything after a second `;` cannot survive. The checks, in order:

1. exactly one statement, whose root is SELECT / UNION / INTERSECT / EXCEPT (WITH allowed);
2. no node anywhere that writes, changes the session or takes locks (a data-modifying CTE, a
   SELECT ... INTO, FOR UPDATE, ...);
3. no dangerous function anywhere, and no function sqlglot does not know unless the dialect's
   allow list (functions.py) names it; no table-valued function in FROM;
4. every table is a table of the connector's schema (CTE names aside), unqualified or qualified
   only by the connector's own default schema; never a system catalog;
5. every column exists (sqlglot's qualifier, when it can handle the query);
6. the outer LIMIT is added, or tightened to max_rows.

The connection underneath is read-only as well (sql.py, files.py): this is one layer of two.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, OptimizeError, ParseError, TokenError, UnsupportedError
from sqlglot.optimizer.qualify import qualify
from sqlglot.tokens import Token, TokenType

from ragloom.connectors.base import Schema
from ragloom.connectors.functions import is_allowed_anonymous, is_denied
from ragloom.errors import ForbiddenQuery, SqlError

log = logging.getLogger(__name__)

ONLY_SELECT = "only one read-only SELECT statement is allowed"
MAX_NESTING = 10  # sqlglot takes 0.1 s at 10 nested calls, x1.7 per level beyond

# The schema qualifier each dialect resolves unqualified names to, when the connector says nothing.
DEFAULT_QUALIFIERS = {"sqlite": ("main",), "postgres": ("public",), "duckdb": ("main", "memory"), "mysql": ()}
SYSTEM_SCHEMAS = frozenset(
    {"information_schema", "pg_catalog", "pg_toast", "mysql", "performance_schema", "sys", "temp", "pg_temp"}
)
SYSTEM_TABLE_PREFIXES = ("sqlite_", "pg_", "duckdb_")

# Node kinds that write, change the session or lock, wherever they appear in the tree.
_FORBIDDEN_NAMES = (
    "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "AlterTable", "AlterColumn",
    "Command", "Pragma", "Set", "Use", "Transaction", "Commit", "Rollback", "Copy", "Attach", "Detach",
    "LoadData", "Into", "Lock", "Grant", "Revoke", "TruncateTable", "Comment", "Describe", "Analyze",
    "Cache", "Uncache", "Refresh", "Kill", "Install", "Export", "Declare", "Summarize", "Show",
    "Execute", "Return",
)
FORBIDDEN_NODES: tuple[type[exp.Expr], ...] = tuple(
    t for t in (getattr(exp, n, None) for n in _FORBIDDEN_NAMES) if isinstance(t, type)
)
# Known (non-anonymous) function classes that read files or bump sequences.
_DENIED_FUNC_CLASSES: tuple[type[exp.Expr], ...] = tuple(
    t for t in (getattr(exp, n, None) for n in ("ReadCSV", "ReadParquet", "NextValueFor", "ToFile"))
    if isinstance(t, type)
)
# Session variables and bind parameters: MySQL `@x := ...`, `@@datadir`; nothing is bound here.
_VARIABLE_NODES: tuple[type[exp.Expr], ...] = tuple(
    t for t in (getattr(exp, n, None) for n in ("Parameter", "SessionParameter", "Placeholder"))
    if isinstance(t, type)
)
_EMPTY: tuple[type[exp.Expr], ...] = tuple(t for t in (getattr(exp, "Semicolon", None),) if isinstance(t, type))
_QUERY_ROOTS: tuple[type[exp.Expr], ...] = (exp.Select, exp.Union, exp.Intersect, exp.Except)
# Brackets the parser descends into: calls and subqueries, arrays, structs and maps.
_OPENERS = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE})
_CLOSERS = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE})


@dataclass
class GuardedSql:
    sql: str  # the statement, regenerated in the connector's dialect, with LIMIT max_rows: what callers see
    tables: list[str]  # the schema's tables it reads, as the schema spells them
    # what connectors run: the same with LIMIT max_rows + 1, the extra row only telling that the
    # result was truncated
    run_sql: str


def guard(
    sql: str,
    dialect: str,
    schema: Schema,
    max_rows: int,
    qualifiers: Iterable[str] | None = None,
) -> GuardedSql:
    """Check `sql` and return the statement to run; ForbiddenQuery or SqlError otherwise.

    `qualifiers` are the schema names a table may be prefixed with (the connector's default
    schema or database); None means the dialect's usual default (main, public).
    """
    if max_rows < 1:
        raise SqlError(f"max_rows must be at least 1, got {max_rows}")
    tokens = _tokenize(sql, dialect)
    if _depth(tokens) > MAX_NESTING:
        # sqlglot's parser recurses (and on nested calls backtracks for minutes) per level
        raise SqlError(f"the query nests parentheses more than {MAX_NESTING} deep; simplify it")
    try:
        return _guard(sql, dialect, schema, max_rows, qualifiers, tokens)
    except RecursionError:  # sqlglot parses and walks recursively: thousands of nested ( or + chains
        raise SqlError("the query is nested too deeply to check; simplify it") from None


def nesting_depth(sql: str, dialect: str | None = None) -> int:
    """The deepest nesting of parentheses, brackets and braces, outside comments, string literals
    and quoted identifiers (cheap: one linear pass, before any parsing); SqlError if `sql` does not
    tokenize.

    The tokens are those of the dialect's own tokenizer, the one the parser reads, so this count
    and the parser cannot disagree on what is a comment or a string: a hand-written scan was
    fooled by a quote inside a `--` comment (`-- '` made it skip all the nesting that followed).
    """
    return _depth(_tokenize(sql, dialect))


def _tokenize(sql: str, dialect: str | None) -> list[Token]:
    try:
        return Dialect.get_or_raise(dialect).tokenize(sql)
    except TokenError as e:
        raise SqlError(f"SQL does not parse: {e}") from None


def _depth(tokens: list[Token]) -> int:
    depth = deepest = 0
    for token in tokens:
        if token.token_type in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif token.token_type in _CLOSERS:
            depth -= 1
    return deepest


def _guard(
    sql: str, dialect: str, schema: Schema, max_rows: int, qualifiers: Iterable[str] | None,
    tokens: list[Token] | None = None,
) -> GuardedSql:
    allowed_qualifiers = {
        q.lower() for q in (DEFAULT_QUALIFIERS.get(dialect, ()) if qualifiers is None else qualifiers)
    }
    root = _parse_one(sql, dialect, tokens)
    _check_nodes(root, dialect)
    tables = _check_tables(root, dialect, schema, allowed_qualifiers)
    _check_columns(root, dialect, schema, tables)
    shown = root.copy()
    _limit(shown, max_rows)
    _limit(root, max_rows + 1)
    out, shown_text = _regenerate(root, dialect), _regenerate(shown, dialect)
    # Belt and braces: what runs is the regenerated text, so it must pass the same checks.
    tokens = _tokenize(out, dialect)
    if _depth(tokens) > MAX_NESTING:  # regeneration may add parentheses; never parse those unchecked
        raise SqlError(f"the query nests parentheses more than {MAX_NESTING} deep; simplify it")
    again = _parse_one(out, dialect, tokens)
    _check_nodes(again, dialect)
    _check_tables(again, dialect, schema, allowed_qualifiers)
    return GuardedSql(sql=shown_text, tables=tables, run_sql=out)


def _regenerate(root: exp.Expr, dialect: str) -> str:
    try:
        # no comments: MySQL runs `/*! ... */`; RAISE: never silently drop what the dialect lacks
        return root.sql(dialect=dialect, comments=False, unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as e:
        raise SqlError(f"not supported in {dialect}: {_first_line(e)}") from None


def _parse_one(sql: str, dialect: str, tokens: list[Token] | None = None) -> exp.Expr:
    """The one statement of `sql`; `tokens`, where given, are its tokens (tokenized once)."""
    if not sql or not sql.strip():
        raise SqlError("empty SQL: expected one SELECT statement")
    try:
        d = Dialect.get_or_raise(dialect)
        parsed = d.parser().parse(tokens if tokens is not None else d.tokenize(sql), sql)
        # None and Semicolon are empty statements (`;;`, or a comment after the last `;`)
        statements = [s for s in parsed if s is not None and not isinstance(s, _EMPTY)]
    except ParseError as e:
        raise SqlError(f"SQL does not parse: {_parse_error(e)}") from None
    except TokenError as e:
        raise SqlError(f"SQL does not parse: {e}") from None
    if not statements:
        raise SqlError("no SQL statement found (only comments or semicolons)")
    if len(statements) > 1:
        kinds = "; ".join(_describe(s) for s in statements)
        raise ForbiddenQuery(f"{ONLY_SELECT}; found {len(statements)} statements ({kinds})")
    root = statements[0]
    if isinstance(root, exp.Subquery) and isinstance(root.unnest(), _QUERY_ROOTS):
        pass  # `(SELECT ...) LIMIT 3`: a parenthesised query is still a query
    elif not isinstance(root, _QUERY_ROOTS):
        raise ForbiddenQuery(f"{ONLY_SELECT}; found {_describe(root)}")
    return root


def _check_nodes(root: exp.Expr, dialect: str) -> None:
    for node in root.walk():
        if isinstance(node, FORBIDDEN_NODES):
            raise ForbiddenQuery(f"{ONLY_SELECT}; found {_describe(node)}")
        if isinstance(node, _VARIABLE_NODES):
            raise ForbiddenQuery(f"variables and bind parameters are not allowed; found {node.sql(dialect)!r}")
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            # `myschema.upper(x)` may resolve to a user-defined function that does anything
            raise ForbiddenQuery(f"schema-qualified function calls are not allowed: {node.sql(dialect)!r}")
        if isinstance(node, exp.Func):
            _check_function(node, dialect)
        if isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier):
            raise ForbiddenQuery(f"table-valued functions are not allowed in FROM: {node.this.sql(dialect)!r}")
        if isinstance(node, exp.Unnest) and isinstance(node.parent, (exp.From, exp.Join)):
            raise ForbiddenQuery(f"table-valued functions are not allowed in FROM: {node.sql(dialect)!r}")
        if isinstance(node, exp.Lateral) and isinstance(node.this, exp.Func):
            raise ForbiddenQuery(f"table-valued functions are not allowed in FROM: {node.this.sql(dialect)!r}")


def _check_function(node: exp.Func, dialect: str) -> None:
    if isinstance(node, exp.Anonymous) or type(node).__name__.startswith("Anonymous"):
        name = node.name
        if not is_allowed_anonymous(name, dialect):
            why = "is not allowed" if is_denied(name) else "is not on the list of allowed functions"
            raise ForbiddenQuery(f"function {name}() {why} in read-only queries")
        return
    names = [node.sql_name(), type(node).__name__]
    if isinstance(node, _DENIED_FUNC_CLASSES) or any(is_denied(n) for n in names):
        raise ForbiddenQuery(f"function {node.sql_name().lower()}() is not allowed in read-only queries")


def _check_tables(root: exp.Expr, dialect: str, schema: Schema, qualifiers: set[str]) -> list[str]:
    found: list[str] = []
    for table in root.find_all(exp.Table):
        name = table.name
        parts = [p.lower() for p in (table.catalog, table.db) if p]
        if not parts and _is_cte(table):
            continue
        if not parts and dialect == "mysql" and name.lower() == "dual" and schema.table(name) is None:
            continue  # MySQL's one-row pseudo table: `SELECT 1 FROM dual`
        full = ".".join([*parts, name])
        if any(p in SYSTEM_SCHEMAS for p in parts) or name.lower().startswith(SYSTEM_TABLE_PREFIXES):
            raise ForbiddenQuery(f"system catalogs cannot be queried: {full}")
        if any(p not in qualifiers for p in parts):
            raise ForbiddenQuery(
                f"table {full} is outside this connector's schema; use the table name alone"
            )
        known = schema.table(name)
        if known is None:
            names = ", ".join(t.name for t in schema.tables) or "none"
            raise SqlError(f"unknown table {name!r}; the tables are: {names}")
        if known.name not in found:
            found.append(known.name)
    return found


def _is_cte(table: exp.Table) -> bool:
    """Whether an unqualified table name refers to a WITH query visible at that point.

    Walks up from the reference; inside a non-recursive WITH only the CTEs listed before the one
    being defined are visible (PostgreSQL, SQLite and MySQL agree), so `WITH a AS (SELECT * FROM
    b), b AS (...)` still checks the real table b.
    """
    name = table.name.lower()
    child: exp.Expr = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):
            ctes = list(node.expressions)
            visible = ctes if node.args.get("recursive") else ctes[: _index(ctes, child)]
            if any(c.alias_or_name.lower() == name for c in visible):
                return True
        else:
            with_ = node.args.get("with_") or node.args.get("with")
            if isinstance(with_, exp.With) and with_ is not child:
                if any(c.alias_or_name.lower() == name for c in with_.expressions):
                    return True
        child, node = node, node.parent
    return False


def _index(items: list[exp.Expr], item: exp.Expr) -> int:
    return next((i for i, x in enumerate(items) if x is item), len(items))


def _check_columns(root: exp.Expr, dialect: str, schema: Schema, tables: list[str]) -> None:
    """Unknown columns become a SqlError naming them; the qualifier's own limits are not our errors.

    The check runs on a lower-cased, unqualified copy because the guard matches names
    case-insensitively; the statement that runs keeps the original spelling.
    """
    mapping: dict[str, object] = {t.name.lower(): {c.name.lower(): "UNKNOWN" for c in t.columns} for t in schema.tables}
    copy = root.copy()
    for ident in copy.find_all(exp.Identifier):
        ident.set("this", ident.this.lower() if isinstance(ident.this, str) else ident.this)
        ident.set("quoted", False)
    for table in copy.find_all(exp.Table):
        table.set("db", None)
        table.set("catalog", None)
    try:
        qualify(copy, dialect=dialect, schema=mapping, validate_qualify_columns=True,
                quote_identifiers=False, identify=False)
    except OptimizeError as e:
        message = _first_line(e)
        if "could not be resolved" not in message and "Unknown column" not in message:
            log.debug("column check skipped: %s", message)
            return
        column = _quoted_name(message)
        if "for table" in message:
            raise SqlError(f"unknown table or alias in a column reference: {message}") from None
        read = [t for t in (schema.table(n) for n in tables) if t is not None]
        if any(t.column(column) for t in read):
            raise SqlError(
                f"column {column!r} is ambiguous or out of scope here; qualify it with its table ({message})"
            ) from None
        known = "; ".join(f"{t.name}({', '.join(c.name for c in t.columns)})" for t in read)
        raise SqlError(f"unknown column {column!r}; the columns are: {known or 'none'} ({message})") from None
    except Exception as e:  # noqa: BLE001 - exotic but valid SQL; the database will judge the columns
        log.debug("column check skipped: %s: %s", type(e).__name__, e)


def _limit(root: exp.Expr, max_rows: int) -> None:
    """Add the outer LIMIT, or lower it to max_rows; FETCH FIRST and LIMIT ALL become LIMIT."""
    current = root.args.get("limit")
    if isinstance(current, exp.Limit):
        value = current.expression
        if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit():
            if int(value.this) <= max_rows:
                return
    elif isinstance(current, exp.Fetch):
        count = current.args.get("count")
        if isinstance(count, exp.Literal) and count.this.isdigit() and int(count.this) <= max_rows:
            root.set("limit", exp.Limit(expression=exp.Literal.number(int(count.this))))
            return
    root.set("limit", exp.Limit(expression=exp.Literal.number(max_rows)))


def _describe(node: exp.Expr) -> str:
    """What a statement or node is, in the words a person would use: DROP TABLE, SELECT ... INTO."""
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, exp.Into):
        return "SELECT ... INTO"
    if isinstance(node, exp.Lock):
        return "SELECT ... FOR UPDATE" if node.args.get("update") else "SELECT ... FOR SHARE"
    if isinstance(node, _QUERY_ROOTS):
        return "SELECT" if isinstance(node, exp.Select) else node.key.upper()
    kind = node.args.get("kind")
    words = node.key.upper().replace("TRUNCATETABLE", "TRUNCATE TABLE")
    if isinstance(kind, str) and kind:
        words += f" {kind.upper()}"
    if isinstance(node, (exp.Column, exp.Alias, exp.Identifier)):
        words = f"{node.sql().split()[0].upper()!r}, which is not a statement"
    return words


def _parse_error(e: ParseError) -> str:
    """sqlglot's description with line, column and the offending text (its str() has ANSI codes)."""
    if not e.errors:
        return _first_line(e)
    first = e.errors[0]
    where = f" (line {first.get('line')}, column {first.get('col')}"
    where += f", near {first['highlight']!r})" if first.get("highlight") else ")"
    return f"{first.get('description') or 'invalid SQL'}{where}"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _quoted_name(message: str) -> str:
    """The name inside the first pair of quotes of an optimizer message, or after 'column: '."""
    if "'" in message:
        parts = message.split("'")
        if len(parts) >= 3:
            return parts[1]
    if ":" in message:
        return message.split(":", 1)[1].strip()
    return ""
