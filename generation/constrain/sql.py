"""A SQL grammar generated per request from a (linked) schema: constrained decoding that can only name
real tables and columns (PICARD-style guards, enforced while decoding rather than checked afterwards).

`sql_grammar(tables, dialect)` returns lark grammar text (LALR(1), for grammar.compile_grammar) for one
read-only query in a useful analytic subset of the dialect (sqlite, postgres, mysql, duckdb):

- `SELECT [DISTINCT]` with `*`, `table.*`, expressions and `AS alias` output aliases;
- `WITH name AS (query) [, name2 AS (query)]` before the query (CTEs);
- `FROM` a table, a CTE or a derived table (`(query) [AS] name`), with comma joins, `[INNER] JOIN .. ON`,
  `LEFT [OUTER] JOIN .. ON`, `CROSS JOIN`; a table may take an alias (`orders o`, `orders AS o`), a CTE
  a name of its own. FROM is required (so output cut off by a token limit and closed by the shortest
  completion reads a table); a derived table's name is required in postgres and mysql, optional in
  sqlite and duckdb, as the databases have it;
- `WHERE`, `GROUP BY` (expressions, positions or output aliases) with `HAVING`, `ORDER BY` (the same, plus
  `ASC|DESC`, and `NULLS FIRST|LAST` except in mysql), `LIMIT n [OFFSET m]`; `UNION [ALL]`,
  `INTERSECT`, `EXCEPT` between selects;
- expressions: `AND OR NOT`, comparisons, `[NOT] LIKE`, `[NOT] IN (list | subquery)`,
  `[NOT] BETWEEN a AND b`, `IS [NOT] NULL`, `EXISTS (subquery)`, scalar subqueries, `+ - * / %`,
  `||` (not in mysql, where it means OR), `CASE [x] WHEN .. THEN .. [ELSE ..] END`, `CAST(x AS type)` with
  the dialect's types, `COUNT(*)`, `COUNT|SUM|AVG|MIN|MAX([DISTINCT] x)`, the dialect's common scalar and
  date functions (with their arities) and its `EXTRACT`/`INTERVAL` forms;
- literals: numbers, single-quoted strings (at most 100 characters, `''` escapes, no newline or backslash),
  `NULL`, `TRUE`, `FALSE`, `CURRENT_DATE`, `CURRENT_TIMESTAMP`; an optional trailing `;`.

What makes it a guard: a table is one of `tables`; a column is either bare (any column of the given
tables) or qualified (no spaces around the dot) by one of three kinds of name, never spelled alike:

- `table.column`: the column must belong to that table (one terminal lists exactly the valid pairs);
- `alias.column`: a context-free grammar cannot remember which alias FROM gave which table, so a table's
  aliases come from a fixed set derived from its name (`table_aliases`: the initials of its words and of
  its trailing words, `sbDailyPrice` -> `sdp`, `dp`, `p`; the first one to four letters of each word,
  `customers` -> `c`, `cu`, `cus`, `cust`; any of them with a digit 1-9 for self-joins, `a1`, `a2`; and
  Spider's `t1`..`t9` for every table). The column must belong to a table that may take that alias
  (`o.total` is refused when no table whose aliases include `o` has a `total`; `t1.total` when no table
  has one); which of those tables FROM gave the alias to is left to the database;
- `name.field`: a CTE or derived table, whose columns a context-free grammar cannot know, so the field
  is any identifier. Their names (WITH, after a derived table, a CTE's alias) come from a fixed set too,
  DERIVED_NAMES (`sub`, `cte`, `totals`, `t`, ... and digits: `cte2`), less any that is a table, a table's
  singular or plural, or an alias. Were any identifier a name, any made-up column could begin there
  (`salary`, as in `salary.x`) and a model would no longer be kept to the schema's names.

Computed columns of a CTE or derived table must be qualified (`sub.total`): bare, only the schema's columns
are names. A derived name in FROM is taken for a CTE (in any FROM: the rules do not know whether a WITH
came first), so a made-up table is still refused, but an undeclared `FROM cte` is the database's to refuse.
Window functions, comments, `WITH RECURSIVE` and a second statement are not part of the grammar.
What a context-free grammar cannot check: that a bare column belongs to a table in FROM, that an alias,
CTE or derived table was declared (and an alias for which table), that a table is not joined twice, that
an output alias used in GROUP BY / ORDER BY was defined (an alias there is any lower-case identifier but
a few reserved words), types and aggregation rules. The guard and the database catch those, and the
self-correction round sees their error. Aliases and derived names are fallback terminals (negative
priority): closing a cut-off `WHERE na` writes the column `name`, not `na.x` (grammar.FALLBACK_COST).

Nesting is bounded: the expression and query rules are written out once per parenthesis level, up to
`max_depth`, and the last level has no call, subquery, `IN (..)`, `EXISTS` or grouping parenthesis.
A context-free grammar cannot count, but a finite number of copies of it can, so runaway nesting is
impossible by construction rather than refused by the guard after the tokens were spent.

The rules do not depend on the schema, only the name terminals do (see _name_terminals), so that
grammar.py compiles a new schema's grammar with the dialect's cached LALR tables (tenths of a second,
not seconds). All name terminals but ALIAS_QUALIFIED are alternations of literals, which grammar.py
turns into automata on a fast path.

Names are spelled as the dialect reads them: a plain identifier bare (case-insensitively where the
dialect folds case: sqlite, duckdb, mysql columns; exactly in postgres, which folds unquoted names to
lower case, and for mysql tables, which are case-sensitive on Linux servers), anything else quoted
(spaces, reserved words, upper case in postgres) with the dialect's quote (backticks in mysql). Names
are bare names in the connection's default schema, not schema-qualified.

Keywords are case-insensitive; whitespace is a bounded `%ignore`d terminal, and the grammar declares
word boundaries (grammar.py) so that `SELECTname` or `5AND` never lex as two tokens the database would
read as one. Function-call terminals include their `(` (`count(`): a column may then be named like a
function (`count`, `date`, `year`) without quoting, and maximal munch tells them apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from ragloom.errors import GrammarError
from ragloom.generation.constrain import regex as R
from ragloom.generation.constrain.schema_numbers import int_range

DIALECTS = ("sqlite", "postgres", "mysql", "duckdb")

MAX_STRING = 100  # characters in a string literal: a small model must not write essays between quotes
MAX_WS = 8  # whitespace characters between two tokens (%ignore'd, so it has to be bounded)
# Parenthesis nesting: the deepest of the shared set's gold queries nests 6, and a small model left
# unbounded writes `date(date(date(...` until its token limit, past what the guard parses (its
# MAX_NESTING, 10: sqlglot's parse time grows x1.7 per nested call).
MAX_DEPTH = 7

# Words that may not be bare identifiers in at least one dialect, plus every keyword that can start an
# expression (where column names are lexed too). Quoting a name needlessly only changes its spelling.
RESERVED = frozenset(
    """all alter analyse analyze and any array as asc asymmetric between both by case cast check collate
    column constraint create cross current_date current_time current_timestamp current_user default
    delete desc distinct div do drop else end except exists false fetch for foreign from full grant
    group groups having ilike in index inner insert intersect interval into is join key lateral leading
    left like limit localtime localtimestamp mod natural not null offset on only or order outer over
    partition placing primary range rank read references returning right row rows select session_user
    set similar some symmetric table then to trailing true union unique update usage user using values
    variadic when where window with""".split()
)

# name -> (fewest, most arguments; None = any number)
_COMMON: dict[str, tuple[int, int | None]] = {
    "lower": (1, 1), "upper": (1, 1), "length": (1, 1), "round": (1, 2), "abs": (1, 1), "nullif": (2, 2),
}
_PG_LIKE: dict[str, tuple[int, int | None]] = {
    **_COMMON, "coalesce": (1, None), "date_trunc": (2, 2), "date_part": (2, 2), "now": (0, 0),
    "substring": (2, 3), "concat": (1, None),
}
FUNCTIONS: dict[str, dict[str, tuple[int, int | None]]] = {
    "sqlite": {
        **_COMMON, "coalesce": (2, None), "ifnull": (2, 2), "strftime": (2, None), "date": (1, None),
        "datetime": (1, None), "julianday": (1, None), "substr": (2, 3), "instr": (2, 2), "replace": (3, 3),
        "trim": (1, 2),
    },
    "postgres": {**_PG_LIKE, "to_char": (2, 2)},
    "duckdb": {**_PG_LIKE, "strftime": (2, 2)},
    "mysql": {
        **_COMMON, "coalesce": (1, None), "ifnull": (2, 2), "concat": (1, None), "substring": (2, 3),
        "date_format": (2, 2), "datediff": (2, 2), "date_add": (2, 2), "date_sub": (2, 2), "curdate": (0, 0),
        "now": (0, 0), "year": (1, 1), "month": (1, 1), "day": (1, 1),
    },
}
# CAST target types; a tuple is a multi-word type, "decimal"/"numeric" take an optional (p[, s])
TYPES: dict[str, list[str | tuple[str, ...]]] = {
    "sqlite": ["integer", "real", "text", "numeric"],
    "postgres": ["integer", "bigint", "numeric", "decimal", "real", ("double", "precision"), "float", "text",
                 "varchar", "date", "timestamp", "boolean"],
    "duckdb": ["integer", "bigint", "numeric", "decimal", "real", "double", "float", "text", "varchar", "date",
               "timestamp", "boolean"],
    # MySQL's CAST takes its own type names (no INTEGER or TEXT)
    "mysql": ["signed", "unsigned", "decimal", "char", "date", "datetime", "double"],
}
_UNITS = ["year", "quarter", "month", "week", "day", "hour", "minute", "second"]
EXTRACT_FIELDS: dict[str, list[str]] = {
    "postgres": [*_UNITS, "dow", "doy", "epoch"],
    "duckdb": [*_UNITS, "dow", "doy", "epoch"],
    "mysql": _UNITS,
}

# functions whose first argument names a field or unit in quotes (postgres, duckdb): the grammar
# offers only real ones, which a database would otherwise refuse at run time
FIELD_FIRST = {"date_part": "FIELD_STRING", "date_trunc": "UNIT_STRING"}

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Rules outside the expression levels.
_TOP = r"""
// CTE names (DERIVED_NAME) may stand for tables in any FROM: whether one was declared is the database's
start: query_0 [";"] | "with"i cte ("," cte)* query_0 [";"]
cte: DERIVED_NAME "as"i "(" query_1 ")"
table_ref: TABLE [["as"i] TABLE_ALIAS]
cte_ref: DERIVED_NAME [["as"i] DERIVED_NAME]
!set_op: "union"i ["all"i] | "intersect"i | "except"i
DIRECTION: "asc"i | "desc"i
limit: "limit"i {limit_int} ["offset"i INT]
alias: ALIAS
DISTINCT: "distinct"i
NOT: "not"i
COMPARE: "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
PLUS: "+"
MINUS: "-"
MUL: "*" | "/" | "%"
AGGREGATE: "sum("i | "avg("i | "min("i | "max("i
literal: NUMBER | STRING | "null"i | "true"i | "false"i | "current_date"i | "current_timestamp"i
"""

# One nesting level: {k} is this level, {n} the next one (inside a parenthesis). The grammar holds
# MAX_DEPTH + 1 copies, and the last has no way to open a parenthesis (see sql_grammar).
_LEVEL = r"""
select_list_{k}: "*" | select_item_{k} ("," select_item_{k})*
select_item_{k}: expr_{k} ["as"i alias] | table_star
group_by_{k}: "group"i "by"i group_item_{k} ("," group_item_{k})* ["having"i expr_{k}]
?group_item_{k}: expr_{k} | alias
order_by_{k}: "order"i "by"i order_item_{k} ("," order_item_{k})*
order_item_{k}: (expr_{k} | alias) [DIRECTION] {nulls}
?expr_{k}: or_expr_{k}
?or_expr_{k}: and_expr_{k} | or_expr_{k} "or"i and_expr_{k}
?and_expr_{k}: not_expr_{k} | and_expr_{k} "and"i not_expr_{k}
?not_expr_{k}: predicate_{k} | "not"i not_expr_{k} -> not_
// operands of comparisons are at concatenation level: BETWEEN's AND cannot be read as the boolean one
?predicate_{k}: concat_{k}
    | concat_{k} COMPARE concat_{k} -> compare
    | concat_{k} [NOT] "like"i concat_{k} -> like
    | concat_{k} [NOT] "between"i concat_{k} "and"i concat_{k} -> between
    | concat_{k} "is"i [NOT] "null"i -> is_null{nested_predicates}
?concat_{k}: sum_{k}{concat}
// `a - -1` is not allowed: `--` would start a comment in the database
?sum_{k}: product_{k} | sum_{k} PLUS product_{k} | sum_{k} MINUS product_nn_{k}
?product_{k}: unary_{k} | product_{k} MUL unary_{k}
?product_nn_{k}: atom_{k} | product_nn_{k} MUL unary_{k}
?unary_{k}: atom_{k} | MINUS atom_{k} -> neg
?atom_{k}: literal | case_{k}{atoms}
case_{k}: "case"i [expr_{k}] when_{k}+ ["else"i expr_{k}] "end"i
when_{k}: "when"i expr_{k} "then"i expr_{k}
"""

# The query rules of one level; {items}: a derived table, except at the last level.
_QUERY = r"""
query_{k}: select_{k} (set_op select_{k})* [order_by_{k}] [limit]
select_{k}: "select"i [DISTINCT] select_list_{k} from_clause_{k}
from_clause_{k}: "from"i from_item_{k} join_{k}* ["where"i expr_{k}] [group_by_{k}]
join_{k}: "," from_item_{k}
    | "cross"i "join"i from_item_{k}
    | ["inner"i] "join"i from_item_{k} "on"i expr_{k}
    | "left"i ["outer"i] "join"i from_item_{k} "on"i expr_{k}
?from_item_{k}: table_ref | cte_ref{items}
"""

# What opens a parenthesis, at every level but the last.
_NESTED_PREDICATES = r"""
    | concat_{k} [NOT] "in"i "(" (query_{n} | expr_{n} ("," expr_{n})*) ")" -> in_
    | "exists"i "(" query_{n} ")" -> exists"""
_NESTED_ATOMS = ' | "(" expr_{n} ")" | "(" query_{n} ")" -> subquery | cast_{k} | aggregate_{k} | function_{k}'
_NESTED_RULES = r"""
cast_{k}: "cast("i expr_{n} "as"i type_name ")"
aggregate_{k}: "count("i "*" ")" | "count("i [DISTINCT] expr_{n} ")" | AGGREGATE [DISTINCT] expr_{n} ")"
"""

_TERMINALS = r"""
// ALIAS loses every tie: a keyword or a name spelled the same is that keyword or name
ALIAS.-1: {alias}
// what follows a CTE's or derived table's name and its dot: any name, bare or quoted
DERIVED_FIELD: {field}
NUMBER: /[0-9]{{1,18}}(\.[0-9]{{1,18}})?/
INT: /0|[1-9][0-9]{{0,17}}/
STRING: /'([^'\n\r\\]|''){{0,{max_string}}}'/
WS: /[ \t\n]{{1,{max_ws}}}/
%ignore WS
// grammar.py: two word-like tokens (keywords, names, numbers) need whitespace between them
%declare WORD_BOUNDARY
"""


def _quote(name: str, dialect: str) -> str:
    q = "`" if dialect == "mysql" else '"'
    return q + name.replace(q, q + q) + q


def _needs_quotes(name: str, dialect: str) -> bool:
    if not _PLAIN.fullmatch(name) or name.lower() in RESERVED:
        return True
    return dialect == "postgres" and name != name.lower()  # unquoted, postgres would look up lower case


def _spelling(name: str, dialect: str, fold: bool) -> str:
    """The lark pattern of one table or column name: quoted exactly as stored, or bare."""
    if _needs_quotes(name, dialect):
        return R.lark_literal(_quote(name, dialect))
    return R.lark_literal(name) + ("i" if fold else "")


def _alias_terminal(excluded: set[str]) -> str:
    """Lower-case identifiers other than `excluded`: a trie of the excluded words, where every way of
    leaving it (ending early, or a character it does not continue with) is an alias."""
    first = R.cs_union(R.cs_range("a", "z"), R.cs_of("_"))
    rest = R.cs_union(first, R.DIGIT)
    trie: dict = {}
    for w in sorted(excluded):
        node = trie
        for c in w:
            node = node.setdefault(c, {})
        node[""] = True

    def leave(node: dict, root: bool) -> R.VRe:
        kids = [c for c in node if c]
        alts: list[R.VRe] = [] if root or "" in node else [R.EPS]
        others = R.cs_minus(first if root else rest, R.cs_of("".join(kids)))
        if others:
            alts.append(R.cat(R.chars(others), R.rep(R.chars(rest), 0, None)))
        alts += [R.cat(R.lit(c), leave(node[c], False)) for c in kids]
        return R.alt(*alts)

    return R.lark_regexp(R.render(leave(trie, True)))


# Aliases that a database would refuse after AS (in one dialect or another) and that a model might
# plausibly pick, plus the clause keywords. Kept short: the terminal's automaton grows with every word.
ALIAS_EXCLUDED = frozenset("all asc desc end from group key limit order rank rows user values where".split())
_ALIAS = _alias_terminal(set(ALIAS_EXCLUDED))


# CTE and derived-table names: a fixed set. Their columns cannot be known, so `name.anything` is
# accepted; were any identifier a name, any made-up column could begin there (`salary` as in `salary.x`)
# and the masks would no longer keep a model to the schema's names. So: the names people give such
# tables, never words a model would take for a column (not `total`, nor MSSQL's `top`), and with
# digits 1-9 (`cte1`, `sub2`).
DERIVED_NAMES = frozenset(
    """agg base combined counts cte derived dt filtered grouped inner_query q ranked recent sq src stats sub subq
    subquery summary t tmp temp totals x y z""".split()
)

# Table aliases: the first 1..MAX_ALIAS_PREFIX letters of a word (`cust`, `emp`, `inv`)
MAX_ALIAS_PREFIX = 4
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")  # sbDailyPrice -> sb Daily Price; HTTPLog -> HTTP Log


def _name_words(name: str) -> list[str]:
    """The words of a name, lower case: split at non-letters and at camelCase humps; digits dropped."""
    return [w.lower() for w in _WORD.findall(name)]


def table_aliases(name: str) -> frozenset[str]:
    """The aliases a table may take in FROM (each also with one digit 1-9 after it, and t1..t9 for any
    table): the initials of its words and of its trailing words, and the first one to four letters of
    each word. Trailing words because a prefix names a family (`sb` in `sbCustomer`: `c`, `t`); never a
    reserved word or one of ALIAS_EXCLUDED, which would read as the keyword after the table."""
    words = _name_words(name)
    out: set[str] = set()
    for i, word in enumerate(words):
        out.add("".join(w[0] for w in words[i:]))
        out.update(word[:n] for n in range(1, MAX_ALIAS_PREFIX + 1))
    return frozenset(a for a in out if a not in RESERVED and a not in ALIAS_EXCLUDED)


def _variants(name: str) -> set[str]:
    """A table name as a model might misremember it: singular and plural forms, lower case."""
    n = name.lower()
    out = {n, n + "s"}
    if n.endswith("s"):
        out.add(n[:-1])
    if n.endswith("es"):
        out.add(n[:-2])
    if n.endswith("ies"):
        out.add(n[:-3] + "y")
    if n.endswith("y"):
        out.add(n[:-1] + "ies")
    return {v for v in out if v and _PLAIN.fullmatch(v)}


def _arguments(lo: int, hi: int | None, expr: str) -> str:
    """`expr "," expr ["," expr]` for lo..hi arguments (hi None: any number)."""
    if lo == 0:
        assert hi == 0, "optional first arguments are not needed yet"
        return ""
    args = " ".join([expr] + [f'"," {expr}'] * (lo - 1))
    if hi is None:
        return args + f' ("," {expr})*'
    tail = ""
    for _ in range(hi - lo):  # nested, not in a row: ["," e] ["," e] would be ambiguous
        tail = f' ["," {expr}{tail}]'
    return args + tail


def _type_rules(dialect: str) -> list[str]:
    types = []
    for t in TYPES[dialect]:
        if isinstance(t, tuple):
            types.append(" ".join(f'"{w}"i' for w in t))
        elif t in ("decimal", "numeric"):
            types.append(f'"{t}"i ["(" INT ["," INT] ")"]')
        else:
            types.append(f'"{t}"i')
    rules = ["type_name: " + " | ".join(types)]
    if dialect in EXTRACT_FIELDS:
        rules.append("FIELD: " + " | ".join(f'"{f}"i' for f in EXTRACT_FIELDS[dialect]))
    if dialect == "mysql":
        rules.append("UNIT: " + " | ".join(f'"{u}"i' for u in _UNITS))
    elif dialect in EXTRACT_FIELDS:
        rules.append("FIELD_STRING: " + " | ".join(f'"\'{f}\'"i' for f in EXTRACT_FIELDS[dialect]))
        rules.append("UNIT_STRING: " + " | ".join(f'"\'{u}\'"i' for u in _UNITS))
    return rules


def _query_rules(dialect: str, k: int, last: bool) -> str:
    """The query, select, FROM and join rules of nesting level k."""
    if last:
        return _QUERY.format(k=k, items="")
    # postgres (before 16) and mysql refuse a derived table without a name
    name = '["as"i] DERIVED_NAME' if dialect in ("postgres", "mysql") else '[["as"i] DERIVED_NAME]'
    return _QUERY.format(k=k, items=f' | "(" query_{k + 1} ")" {name} -> derived')


def _level_rules(dialect: str, k: int, last: bool) -> str:
    """The rules of nesting level k; the last level cannot open a parenthesis."""
    n = k + 1
    atoms = " | column"
    if dialect != "sqlite":
        atoms += f" | interval_{k}"
    extra = []
    if dialect == "mysql":
        extra.append(f'interval_{k}: "interval"i sum_{k} UNIT')  # INTERVAL 7 DAY
    elif dialect in ("postgres", "duckdb"):
        extra.append(f'interval_{k}: "interval"i STRING')  # INTERVAL '7 days'
    if not last:
        atoms += _NESTED_ATOMS.format(k=k, n=n)
        extra.append(_NESTED_RULES.format(k=k, n=n).strip())
        alts = []
        for name, (lo, hi) in sorted(FUNCTIONS[dialect].items()):
            if name in FIELD_FIRST and dialect in EXTRACT_FIELDS:  # date_part('year', x), not ('date', x)
                alts.append(f'"{name}("i {FIELD_FIRST[name]} "," expr_{n} ")"')
                continue
            alts.append(" ".join(part for part in (f'"{name}("i', _arguments(lo, hi, f"expr_{n}"), '")"') if part))
        extra.append(f"function_{k}: " + "\n    | ".join(alts))
        if dialect in EXTRACT_FIELDS:
            atoms += f" | extract_{k}"
            extra.append(f'extract_{k}: "extract("i FIELD "from"i expr_{n} ")"')
    text = _LEVEL.format(
        k=k,
        nulls='["nulls"i ("first"i | "last"i)]' if dialect != "mysql" else "",
        concat=f' | concat_{k} "||" sum_{k}' if dialect != "mysql" else "",
        nested_predicates="" if last else _NESTED_PREDICATES.format(k=k, n=n),
        atoms=atoms,
    )
    return _query_rules(dialect, k, last) + text + "\n".join(extra) + "\n"


def _literals(words: Sequence[str]) -> str:
    """One lark regexp for case-insensitive words, spelled as lark spells an alternation of `"word"i`
    strings, which grammar.py turns into an automaton on its fast path for literal alternations."""
    return R.lark_regexp("(?:" + "|".join(f"(?i:{re.escape(w)})" for w in words) + ")")


def _alias_qualified(tables: Mapping[str, Sequence[str]], aliases: Mapping[str, frozenset[str]], dialect: str) -> str:
    """`alias.column` for the columns of the tables that may take the alias, with an optional digit
    after the alias, and `t1`..`t9` with any column; one alternative per table, not per alias (the
    automaton builder merges what tables share)."""
    fold = dialect != "postgres"
    digit = R.chars(R.cs_range("1", "9"))

    def words(ws: Iterable[str], ci: bool) -> R.VRe:
        return R.alt(*(R.cat(*(R.chars(R.cs_of(c + c.swapcase()) if ci else R.cs_of(c)) for c in w)) for w in ws))

    def columns(cols: Iterable[str]) -> R.VRe:
        spelled = dict.fromkeys(_quote(c, dialect) if _needs_quotes(c, dialect) else c for c in cols)
        return R.alt(*(words([c], fold and not c.startswith(("`", '"'))) for c in spelled))

    alts = [R.cat(words(sorted(aliases[t]), True), R.opt(digit), R.lit("."), columns(cols))
            for t, cols in tables.items() if cols and aliases[t]]
    alts.append(R.cat(words(["t"], True), digit, R.lit("."), columns(c for cols in tables.values() for c in cols)))
    return R.lark_regexp(R.render(R.alt(*alts)))


def _name_terminals(tables: Mapping[str, Sequence[str]], dialect: str) -> list[str]:
    """The terminals that hold the schema; the rules do not depend on it.

    TABLE (FROM, JOIN), TABLE_ALIAS (after a table), COLUMN (any column of any table), QUALIFIED
    (`table.column` for the columns of that table only), ALIAS_QUALIFIED (`alias.column` for the
    columns of the tables that may take the alias), TABLE_STAR and ALIAS_STAR (`table.*`, `alias.*`),
    DERIVED_NAME (a CTE or derived table) and DERIVED_DOT (such a name and its dot, before
    DERIVED_FIELD or `*`). Where two are expected at once, either they never end on the same text (a
    qualified name has a dot; a derived name is never a table or an alias) or they mean the same
    (`book.title` may be a table's or an alias's column), so maximal munch tells them apart.
    """
    fold = dialect != "postgres"
    fold_tables = fold and dialect != "mysql"  # mysql table names are case-sensitive on Linux
    spell = {t: _spelling(t, dialect, fold_tables) for t in tables}
    # an alias is never a table's name, so that `table.column` stays exactly the table's columns
    names = {t.lower() for t in tables}
    aliases = {t: table_aliases(t) - names for t in tables}
    every_alias = set().union(*aliases.values())
    # aliases are plain names and never quoted: case-insensitive (postgres folds them; mysql, where
    # they are case-sensitive, leaves a mismatch to the database like an undeclared alias)
    alias_words = [a + d for a in sorted(every_alias) for d in ("", *"123456789")] + [f"t{d}" for d in "123456789"]
    table_alts = list(dict.fromkeys(spell.values()))
    column_alts = list(dict.fromkeys(_spelling(c, dialect, fold) for cols in tables.values() for c in cols))
    qualified_alts = list(dict.fromkeys(
        f'{spell[t]} "." {_spelling(c, dialect, fold)}' for t, cols in tables.items() for c in cols
    ))
    star_alts = list(dict.fromkeys(f'{spell[t]} "." "*"' for t in tables))
    # derived names never read as a table or an alias (whose columns are checked)
    taken = set(alias_words) | {v for t in tables for v in _variants(t)}
    derived = [n for n in (d + k for d in sorted(DERIVED_NAMES) for k in ("", *"123456789")) if n not in taken]
    # names outrank keywords (never needed, quoting keeps them apart) and ALIAS (`ORDER BY name` is the
    # column when there is one)
    lines = ["TABLE.1: " + "\n    | ".join(table_alts), "TABLE_STAR.1: " + "\n    | ".join(star_alts)]
    if column_alts:
        lines.append("COLUMN.1: " + "\n    | ".join(column_alts))
        lines.append("QUALIFIED.1: " + "\n    | ".join(qualified_alts))
        lines.append(f"ALIAS_QUALIFIED.-1: {_alias_qualified(tables, aliases, dialect)}")
    # Priority -1 marks these as fallbacks (grammar.FALLBACK_COST): closing a cut-off `WHERE na` writes
    # the column `name`, not `na.x` (shorter, but a name nothing declared). Long alternations are one
    # regexp each: lark reads a grammar's text slowly, token by token.
    lines += [
        f"TABLE_ALIAS.-1: {_literals(alias_words)}",
        f"ALIAS_STAR.-1: {_literals([a + '.*' for a in alias_words])}",
        f"DERIVED_NAME.-1: {_literals(derived)}",
        f"DERIVED_DOT.-1: {_literals([n + '.' for n in derived])}",
    ]
    return lines


def sql_grammar(
    tables: Mapping[str, Sequence[str]], dialect: str, *, max_limit: int | None = None, max_depth: int = MAX_DEPTH
) -> str:
    """Lark grammar text for one SELECT over `tables` ({table: [column, ...]}) in `dialect`.

    `max_limit` bounds the LIMIT literal to 0..max_limit (the guard enforces the row limit anyway).
    `max_depth` bounds parenthesis nesting (calls, subqueries, grouping; `decimal(p, s)` in a CAST
    adds one more). Raises GrammarError for an unknown dialect or no tables.
    """
    if dialect not in DIALECTS:
        raise GrammarError(f"unknown SQL dialect {dialect!r} (one of {', '.join(DIALECTS)})")
    if not tables:
        raise GrammarError("a SQL grammar needs at least one table")
    if max_limit is not None and max_limit < 0:
        raise GrammarError("max_limit must be >= 0")
    if not 1 <= max_depth <= 16:
        raise GrammarError(f"max_depth must be in [1, 16], got {max_depth}")
    lines = _name_terminals(tables, dialect)
    limit_int = "INT"
    if max_limit is not None:
        limit_int = "LIMIT_INT"
        lines.append(f"LIMIT_INT: {R.lark_regexp(R.render(int_range(0, max_limit)))}")
    rules = [_TOP.format(limit_int=limit_int), "table_star: TABLE_STAR | ALIAS_STAR | DERIVED_DOT \"*\""]
    column = "COLUMN | QUALIFIED | ALIAS_QUALIFIED | " if any(tables.values()) else ""
    rules.append(f"column: {column}DERIVED_DOT DERIVED_FIELD")
    rules += _type_rules(dialect)
    rules += [_level_rules(dialect, k, k == max_depth) for k in range(max_depth + 1)]
    q = "`" if dialect == "mysql" else '"'
    field = "/[a-z_][a-z0-9_]*/" if dialect == "postgres" else "/[A-Za-z_][A-Za-z0-9_]*/"
    field += f" | /{q}([^{q}\\n]|{q}{q}){{1,64}}{q}/"
    terminals = _TERMINALS.format(alias=_ALIAS, max_string=MAX_STRING, max_ws=MAX_WS, field=field)
    return "\n".join(rules) + "\n" + "\n".join(lines) + "\n" + terminals
