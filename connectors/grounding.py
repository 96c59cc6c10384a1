"""Value grounding: match the literals of a question to the values a database actually stores.

A question says 'Arizona', 'arizona', 'Arizna', 'US' or "United States"; the column holds 'AZ',
'arizona' or 'USA'. A small model copies the question's spelling into the SQL and gets no rows.
CHESS (Talaei et al. 2024, arXiv 2405.16755) fixes this by indexing the distinct values of every
text column (MinHash LSH over character 3-grams), retrieving the values near the question's
keywords and re-ranking them by edit distance; the survivors are shown in the prompt next to their
column. This module does the same with the standard library only:

- `value_index(connector)`: per connector, the distinct values of its short text columns (at most
  MAX_DISTINCT per column, the most frequent first; long free text, dates, ids, urls skipped), read
  through the connector's own guarded, read-only `execute()` with a per-query time limit and an
  overall budget. Cached on the connector; rebuilt when its schema is refreshed or after max_age_s.
- `extract_literals(question)`: candidate spans: quoted strings, capitalized phrases and word
  n-grams (no stop words at their ends).
- `ValueIndex.match(question)`: per span, in order of trust: exact (case, accents and punctuation
  ignored); fuzzy (difflib ratio on 3-gram candidates, like CHESS's LSH + edit distance); for
  spans the question marks as names (capitalized or quoted) abbreviations (initials 'US' ~ 'United
  States', 'USA' ~ 'US', and only when nothing is spelled like the span, 'Texas' ~ 'TX') and
  partial names ('Keyboard' ~ 'Mechanical keyboard'). The rules were tightened against the noise
  they gave on the defog sql-eval questions ('car' ~ 'CA', 'earliest setting' ~ 'ES', 'Dallas' ~
  'DL', 'score' ~ 'Core').

The matches go into the text-to-SQL prompt (text2sql.py, option `ground_values`); columns with few
values (`ValueIndex.low_cardinality`) can also restrict a grammar's literals to the real ones.
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from ragloom.connectors.base import Column, Connector, Schema, Table
from ragloom.connectors.schema import words
from ragloom.errors import RagloomError

log = logging.getLogger(__name__)

MAX_DISTINCT = 1000  # values kept per column: the most frequent ones when a column has more
MAX_VALUE_CHARS = 80  # longer values are prose, not something a question names
MAX_MEAN_CHARS = 40  # a column whose values average longer is free text (names excepted)
MAX_COLUMNS = 200  # per connector: a huge schema gets its first 200 text columns
CONFIDENT = 0.8  # a span matched at least this well hides weaker matches of the words inside it
LOW_CARDINALITY = 50  # a column with at most this many values can have its literals restricted
QUERY_TIMEOUT_S = 5.0  # per column
BUILD_BUDGET_S = 30.0  # per connector; columns not reached are left out (logged)
MAX_AGE_S = 600.0  # data changes without a schema refresh: read the values again after this

# Column names (split into words) whose values are identifiers, not names a question spells out.
_SKIP_WORDS = frozenset(
    {"id", "ids", "uuid", "guid", "url", "uri", "link", "homepage", "website", "web", "email", "mail", "phone",
     "fax", "date", "time",
     "timestamp", "datetime", "password", "hash", "token", "ip", "json", "html", "xml"}
)
_TEXT_TYPE = re.compile(r"char|text|string|clob|enum|set\(|name", re.I)
_NON_TEXT_TYPE = re.compile(
    r"int|real|float|double|num|dec|bool|date|time|blob|binary|bytea|json|uuid|bit|money|interval|serial|"
    r"geo|point|array|\[\]|inet|xml",
    re.I,
)
_DATE_OR_NUMBER = re.compile(r"[\d\s:.,/+-]+(?:[tTzZ][\d:.+-]*)?")

# Words that carry no value on their own: a span may not start or end with one.
STOP_WORDS = frozenset(
    """a an the of in on at to for from by with and or not no nor is are was were be been being do does did
    has have had having what which who whom whose when where why how many much more most less least fewer than
    then that this these those there their its it his her hers he she they them we us you i me my our your
    all any each every some list show give find get tell return display count number total average avg sum
    max min maximum minimum per between top bottom first last over under above below about as into only also
    both either neither name names value values record records row rows table tables column columns
    whether if so such can could would should will shall may might must please order ordered sort sorted by
    than across within without same other another""".split()
)
# Initials of a multi-word value are taken with and without these ("United States of America").
_CONNECTORS = frozenset({"of", "the", "and", "de", "la", "le", "du", "del", "von", "van", "der", "for", "&"})
# Lower-case words that join a capitalized name ('Bank of America'); not 'and', which joins a list.
_JOINERS = frozenset({"of", "de", "la", "le", "du", "del", "von", "van", "der", "&"})

_TOKEN = re.compile(r"\w+(?:[.&'’-]\w+)*\.?")
_QUOTED = re.compile(r"(?<!\w)'([^'\n]{1,80})'(?!\w)|\"([^\"\n]{1,80})\"|[“‘]([^”’\n]{1,80})[”’]|`([^`\n]{1,80})`")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Lower case, accents and punctuation gone, single spaces: 'U.S.' -> 'u s', 'Café' -> 'cafe'."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(_WORD.findall(text.casefold().replace("_", " ")))


def compact(norm: str) -> str:
    """A normalized text without spaces: 'u s a' and 'usa' are the same abbreviation."""
    return norm.replace(" ", "")


def initials(norm: str) -> set[str]:
    """First letters of a multi-word text, with and without connecting words: 'united states of
    america' -> {'usoa', 'usa'}; empty for a single word."""
    toks = norm.split()
    if len(toks) < 2:
        return set()
    out = {"".join(t[0] for t in toks)}
    kept = [t for t in toks if t not in _CONNECTORS]
    if len(kept) >= 2:
        out.add("".join(t[0] for t in kept))
    return out


def is_abbreviation(short: str, long: str) -> bool:
    """'az' of 'arizona', 'tx' of 'texas': the same first letter, then the rest in order."""
    if not 2 <= len(short) <= 4 or len(long) < len(short) + 2 or short[0] != long[0]:
        return False
    rest = iter(long[1:])
    return all(ch in rest for ch in short[1:])


# ---- literals in the question -----------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    text: str  # as the question writes it
    start: int  # character offsets in the question
    end: int
    salient: bool  # quoted or capitalized: the question names something


def extract_literals(question: str, max_ngram: int = 4) -> list[Literal]:
    """Candidate spans that may name a stored value, without duplicates (same offsets).

    Quoted strings and capitalized phrases are taken whole (the question marks them as names);
    every word n-gram up to `max_ngram` that neither starts nor ends with a stop word and is not a
    number or date is a candidate too, so that lower-case 'paid' or 'new york' still match.
    """
    found: dict[tuple[int, int], Literal] = {}

    def add(start: int, end: int, salient: bool) -> None:
        text = question[start:end].strip()
        if not normalize(text) or _DATE_OR_NUMBER.fullmatch(text):
            return
        key = (start, end)
        if key not in found or (salient and not found[key].salient):
            found[key] = Literal(text, start, end, salient)

    for m in _QUOTED.finditer(question):
        group = next(i for i in range(1, 5) if m.group(i) is not None)
        add(m.start(group), m.end(group), True)
    tokens = _tokens(question)
    for start, end in _capitalized_runs(question, tokens):
        add(start, end, True)
    for i in range(len(tokens)):
        for n in range(1, max_ngram + 1):
            if i + n > len(tokens):
                break
            first, last = tokens[i], tokens[i + n - 1]
            if n > 1 and question[tokens[i + n - 2][1]: last[0]].strip():
                break  # punctuation or a quote between two words: no phrase runs across it
            if normalize(first[2]) in STOP_WORDS or normalize(last[2]) in STOP_WORDS:
                continue
            add(first[0], last[1], False)
    return sorted(found.values(), key=lambda lit: (lit.start, lit.end))


def _tokens(question: str) -> list[tuple[int, int, str]]:
    """(start, end, text) per word; a possessive 's and a sentence's final period are left out."""
    out = []
    for m in _TOKEN.finditer(question):
        text = m.group()
        end = m.end()
        if text.endswith(".") and text.count(".") == 1:  # 'York.' ends a sentence; 'U.S.' keeps its dot
            text, end = text[:-1], end - 1
        for tail in ("'s", "’s"):
            if text.lower().endswith(tail) and len(text) > len(tail):
                text, end = text[: -len(tail)], end - len(tail)
        out.append((m.start(), end, text))
    return out


def _capitalized_runs(question: str, tokens: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """Runs of capitalized words ('New York', 'Bank of America', 'AT&T'); a run at the start of a
    sentence loses its leading stop words ('Which', 'List'), and a lone title-case word there is
    not taken as a name."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(tokens):
        if not tokens[i][2][:1].isupper():
            i += 1
            continue
        j = i + 1
        while j < len(tokens):
            text = tokens[j][2]
            if text[:1].isupper() and not _gap_breaks(question, tokens[j - 1][1], tokens[j][0]):
                j += 1
            elif (text.lower() in _JOINERS and j + 1 < len(tokens) and tokens[j + 1][2][:1].isupper()
                  and not _gap_breaks(question, tokens[j - 1][1], tokens[j + 1][0])):
                j += 2
            else:
                break
        run = tokens[i:j]
        sentence_start = not question[: run[0][0]].strip() or question[: run[0][0]].rstrip()[-1] in ".?!:;\n"
        if sentence_start:
            while run and normalize(run[0][2]) in STOP_WORDS:
                run = run[1:]
            if len(run) == 1 and not run[0][2].isupper() and run[0][0] == tokens[i][0]:
                run = []  # 'Orders from ...': capitalized by grammar, not a name (still an n-gram)
        if run:
            runs.append((run[0][0], run[-1][1]))
        i = j
    return runs


def _gap_breaks(question: str, end: int, start: int) -> bool:
    """Punctuation between two words ends a phrase: 'Paris, London' is two names."""
    return any(ch in ",;:?!()\"“”" for ch in question[end:start])


# ---- the index ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnValues:
    table: str
    column: str
    values: tuple[str, ...]  # most frequent first
    complete: bool  # every distinct value is here (the column has at most MAX_DISTINCT)


@dataclass(frozen=True)
class ValueMatch:
    table: str
    column: str
    value: str  # exactly as stored
    span: str  # the question's words it matched
    score: float  # 1.0 exact; abbreviations 0.7-0.85; fuzzy the difflib ratio; partial 0.6-0.9
    kind: str  # "exact" | "abbreviation" | "fuzzy" | "partial"


@dataclass
class ValueIndex:
    columns: list[ColumnValues]
    schema: Schema | None = None  # what it was built from: a refreshed schema is a new object
    built_at: float = field(default_factory=time.monotonic)
    complete: bool = True  # False when the time budget or MAX_COLUMNS cut the build short
    # per entry (column index, value, normalized value), and lookups into it
    _entries: list[tuple[int, str, str]] = field(default_factory=list, repr=False)
    _by_norm: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _by_compact: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _by_initials: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _short_by_letter: dict[str, list[int]] = field(default_factory=dict, repr=False)  # 2-5 letter codes
    _words_by_letter: dict[str, list[int]] = field(default_factory=dict, repr=False)  # one-word values
    _by_token: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _by_gram: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for ci, col in enumerate(self.columns):
            for value in col.values:
                norm = normalize(value)
                if norm:
                    self._add(ci, value, norm)

    def _add(self, ci: int, value: str, norm: str) -> None:
        i = len(self._entries)
        self._entries.append((ci, value, norm))
        key = compact(norm)
        self._by_norm.setdefault(norm, []).append(i)
        self._by_compact.setdefault(key, []).append(i)
        for ini in initials(norm):
            self._by_initials.setdefault(ini, []).append(i)
        if 2 <= len(key) <= 5 and key.isalpha():
            self._short_by_letter.setdefault(key[0], []).append(i)
        if " " not in norm:
            self._words_by_letter.setdefault(norm[0], []).append(i)
        for tok in set(norm.split()):
            self._by_token.setdefault(tok, []).append(i)
        for gram in _grams(norm):
            self._by_gram.setdefault(gram, []).append(i)

    def __len__(self) -> int:
        return len(self._entries)

    def low_cardinality(self, max_values: int = LOW_CARDINALITY) -> dict[str, dict[str, list[str]]]:
        """{table: {column: every stored value}} for the columns with at most `max_values` values,
        all of them read: what a grammar could restrict a literal compared with that column to."""
        out: dict[str, dict[str, list[str]]] = {}
        for col in self.columns:
            if col.complete and len(col.values) <= max_values:
                out.setdefault(col.table, {})[col.column] = list(col.values)
        return out

    def match(
        self,
        question: str,
        limit: int = 10,
        per_column: int = 3,
        min_score: float = 0.6,
        fuzzy_threshold: float = 0.82,
    ) -> list[ValueMatch]:
        """The stored values the question's literals name, best first: at most `per_column` per
        column and `limit` in all."""
        best: dict[int, tuple[float, str, Literal]] = {}  # entry -> (score, kind, literal)
        for lit in extract_literals(question):
            for entry, score, kind in self._match_literal(lit, fuzzy_threshold):
                if score >= min_score and score > best.get(entry, (0.0, "", lit))[0]:
                    best[entry] = (score, kind, lit)
        # inside a span that matched confidently, its words matching something weaker are noise:
        # 'New' of 'New York' naming 'New Jersey', 'united' of 'united kingdom' (~ 'UK') 'United States'
        sure = [(lit, score) for score, _, lit in best.values() if score >= CONFIDENT]
        kept = [
            (score, kind, lit, entry) for entry, (score, kind, lit) in best.items()
            if not any(s.start <= lit.start and lit.end <= s.end and s != lit and sc >= score for s, sc in sure)
        ]
        kept.sort(key=lambda k: (-k[0], k[2].start, k[3]))
        out: list[ValueMatch] = []
        taken: Counter[int] = Counter()
        for score, kind, lit, entry in kept:
            ci, value, _ = self._entries[entry]
            if taken[ci] >= per_column:
                continue
            taken[ci] += 1
            col = self.columns[ci]
            out.append(ValueMatch(col.table, col.column, value, lit.text, round(score, 3), kind))
            if len(out) == limit:
                break
        return out

    def _match_literal(self, lit: Literal, fuzzy_threshold: float) -> Iterable[tuple[int, float, str]]:
        norm = normalize(lit.text)
        key = compact(norm)
        exact = [(i, 1.0, "exact") for i in self._by_norm.get(norm, [])]
        if len(key) >= 2:  # 'U.S.A.' and 'USA', 'Coca-Cola' and 'CocaCola'
            exact += [(i, 0.95, "exact") for i in self._by_compact.get(key, [])]
        yield from exact
        fuzzy: list[tuple[int, float, str]] = []
        if not exact and len(key) >= 5:
            # a lower-case word near a value is often just its plural or a cousin ('organizations' ~
            # 'Organization 1', 'score' ~ 'Core'): only a close one counts
            fuzzy = list(self._fuzzy(norm, fuzzy_threshold if lit.salient else max(fuzzy_threshold, 0.9)))
            yield from fuzzy
        if lit.salient:  # only names: 'earliest setting' is no 'ES', 'car' no 'CA'
            yield from self._abbreviations(lit, norm, key, guess=not exact and not fuzzy)
            if not exact:  # a common noun is part of too many values ('city' of 'Mexico City')
                yield from self._partial(norm)

    def _abbreviations(self, lit: Literal, norm: str, key: str, guess: bool) -> Iterable[tuple[int, float, str]]:
        """Initials and short forms; with `guess` (nothing stored is spelled like the span) also a
        code whose letters occur in order in a word: 'Texas' ~ 'TX', 'AZ' ~ 'Arizona'. That last rule
        is a guess ('Dallas' ~ 'DL', 'Wednesdays' ~ 'WN'), so never next to a real spelling."""
        code = 2 <= len(key) <= 5 and key.isalpha() and lit.text.isupper()  # 'US', 'U.S.', 'AZ'
        if code:
            for i in self._by_initials.get(key, []):  # 'US' ~ 'United States'
                yield i, 0.85, "abbreviation"
            # 'US' ~ 'USA' and 'USA' ~ 'US': one short form extends the other by a letter
            for i in self._short_by_letter.get(key[0], []):
                other = compact(self._entries[i][2])
                if abs(len(other) - len(key)) == 1 and (other.startswith(key) or key.startswith(other)):
                    yield i, 0.8, "abbreviation"
        for ini in initials(norm):  # 'United States' ~ 'US', 'United States of America' ~ 'USA'
            for i in self._by_compact.get(ini, []):
                yield i, 0.85, "abbreviation"
            for i in self._short_by_letter.get(ini[0], []):
                other = compact(self._entries[i][2])
                if len(other) == len(ini) + 1 and other.startswith(ini):
                    yield i, 0.75, "abbreviation"
        if not guess:
            return
        if code and len(key) <= 4:  # 'AZ' ~ 'Arizona'
            for i in self._words_by_letter.get(key[0], []):
                if is_abbreviation(key, self._entries[i][2]):
                    yield i, 0.7, "abbreviation"
        # capitalized only: a lower-case word is too often a subsequence of some code ('psoriasis' ~ 'PA')
        if lit.text[:1].isupper() and " " not in norm and key.isalpha() and len(key) >= 4:  # 'Texas' ~ 'TX'
            for i in self._short_by_letter.get(key[0], []):
                if is_abbreviation(compact(self._entries[i][2]), key):
                    yield i, 0.7, "abbreviation"

    def _fuzzy(self, norm: str, threshold: float) -> Iterable[tuple[int, float, str]]:
        """Values sharing enough character 3-grams (CHESS's LSH step, exact here), re-ranked by
        difflib's ratio (its edit-distance step)."""
        grams = _grams(norm)
        hits: Counter[int] = Counter()
        for gram in grams:
            for i in self._by_gram.get(gram, ()):
                hits[i] += 1
        for i, shared in hits.most_common(50):
            other = self._entries[i][2]
            if 2 * shared / (len(grams) + len(_grams(other))) < 0.4:
                break  # most_common is sorted by shared grams; the Dice bound only falls from here
            ratio = difflib.SequenceMatcher(None, norm, other, autojunk=False).ratio()
            if ratio >= threshold:
                yield i, ratio, "fuzzy"

    def _partial(self, norm: str) -> Iterable[tuple[int, float, str]]:
        """The span is a run of whole words of a longer value: 'keyboard' ~ 'Mechanical keyboard'."""
        toks = norm.split()
        if len(norm) < 3 or (len(toks) == 1 and norm in STOP_WORDS):
            return
        ids = self._by_token.get(toks[0], [])
        if len(ids) > 20:
            return  # a word in many values ('new', 'inc') names none of them
        for i in ids:
            other = self._entries[i][2]
            if other == norm:
                continue
            if f" {norm} " in f" {other} ":
                yield i, 0.6 + 0.3 * len(norm) / len(other), "partial"


def _grams(norm: str) -> set[str]:
    padded = f" {norm} "
    return {padded[i: i + 3] for i in range(len(padded) - 2)}


# ---- building it from a connector --------------------------------------------------------------


def indexable(col: Column) -> bool:
    """A column whose values a question may spell out: short text, not an id, date, url or prose.

    Decided from the schema alone (type, name, the sampled values) so that no query is spent on
    the others.
    """
    names = set(words(col.name))
    if names & _SKIP_WORDS:
        return False
    kind = col.type.strip()
    if not kind.lower().startswith(("enum", "set(")):
        if _NON_TEXT_TYPE.search(kind):
            return False
        if not _TEXT_TYPE.search(kind) and not (col.samples and all(isinstance(s, str) for s in col.samples)):
            return False  # SQLite columns without a type: text only if the samples are
    samples = [s for s in col.samples if isinstance(s, str)]
    if samples and all(_DATE_OR_NUMBER.fullmatch(s) for s in samples):
        return False  # dates and numbers kept as text: nothing to spell differently
    is_name = "name" in names or "title" in names
    if not is_name and samples:
        if any(s.endswith("...") and len(s) >= MAX_VALUE_CHARS for s in samples):
            return False  # values.sample_value cut it: prose
        if sum(map(len, samples)) / len(samples) > MAX_MEAN_CHARS:
            return False
    return True


def distinct_values_sql(table: str, column: str, dialect: str, max_chars: int = MAX_VALUE_CHARS) -> str:
    """The most frequent short non-null values first (ties by value, so the order is stable)."""
    col = exp.column(exp.to_identifier(column, quoted=True))
    query = (
        exp.select(col.copy())
        .from_(exp.Table(this=exp.to_identifier(table, quoted=True)))
        .where(exp.and_(exp.Not(this=exp.Is(this=col.copy(), expression=exp.Null())),
                        exp.LTE(this=exp.Length(this=col.copy()), expression=exp.Literal.number(max_chars))))
        .group_by(col.copy())
        .order_by(exp.Ordered(this=exp.Count(this=exp.Star()), desc=True), exp.Ordered(this=col.copy()))
    )
    return query.sql(dialect=dialect)


def build_index(
    connector: Connector,
    max_distinct: int = MAX_DISTINCT,
    timeout_s: float = QUERY_TIMEOUT_S,
    budget_s: float = BUILD_BUDGET_S,
    max_columns: int = MAX_COLUMNS,
) -> ValueIndex:
    """Read the distinct values of the connector's indexable columns through its guarded,
    read-only execute(); a column that fails or times out is left out (logged), never fatal."""
    schema = connector.schema()
    deadline = time.monotonic() + budget_s
    columns: list[ColumnValues] = []
    complete = True
    todo = [(t, c) for t in schema.tables for c in t.columns if indexable(c)]
    if len(todo) > max_columns:
        log.warning("%s: value index keeps %d of %d text columns", connector.name, max_columns, len(todo))
        todo, complete = todo[:max_columns], False
    for table, col in todo:
        left = deadline - time.monotonic()
        if left <= 0.05:
            log.warning("%s: value index stopped at %s.%s: %gs budget spent", connector.name, table.name, col.name,
                        budget_s)
            complete = False
            break
        values = _read_column(connector, table, col, schema.dialect, max_distinct, min(timeout_s, left))
        if values is not None:
            columns.append(values)
    return ValueIndex(columns, schema=schema, complete=complete)


def _read_column(connector: Connector, table: Table, col: Column, dialect: str, max_distinct: int,
                 timeout_s: float) -> ColumnValues | None:
    sql = distinct_values_sql(table.name, col.name, dialect)
    try:
        result = connector.execute(sql, max_rows=max_distinct, timeout_s=timeout_s)
    except RagloomError as e:  # a slow or odd column (an enum PostgreSQL cannot length()) is skipped
        log.warning("%s: no values indexed for %s.%s: %s", connector.name, table.name, col.name, e)
        return None
    values = tuple(str(r[0]) for r in result.rows if r and r[0] is not None and str(r[0]).strip())
    if not values:
        return None
    names = set(words(col.name))
    if not names & {"name", "title"} and sum(map(len, values)) / len(values) > MAX_MEAN_CHARS:
        return None  # free text after all: the samples were short by chance
    return ColumnValues(table.name, col.name, values, complete=not result.truncated)


# ---- the cache on the connector ------------------------------------------------------------------

_ATTR = "_ragloom_value_index"
_LOCKS_GUARD = threading.Lock()


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    index: ValueIndex | None = None


def value_index(connector: Connector, max_age_s: float = MAX_AGE_S, **build: Any) -> ValueIndex:
    """The connector's value index, built on first use and kept on the connector object.

    Rebuilt when the connector's schema object changed (schema(refresh=True), a FileConnector
    reloading its files) or the index is older than max_age_s (rows change without a refresh).
    Concurrent callers wait for one build instead of each scanning the database.
    """
    slot = _slot(connector)
    with slot.lock:
        index = slot.index
        stale = (
            index is None
            or index.schema is not connector.schema()
            or time.monotonic() - index.built_at > max_age_s
        )
        if stale:
            started = time.monotonic()
            index = build_index(connector, **build)
            log.info("%s: value index of %d values in %d columns built in %.2fs", connector.name, len(index),
                     len(index.columns), time.monotonic() - started)
            slot.index = index
        assert index is not None
        return index


def invalidate(connector: Connector) -> None:
    """Forget the connector's index: the next value_index() reads the values again."""
    _slot(connector).index = None


def _slot(connector: Connector) -> _Slot:
    with _LOCKS_GUARD:
        slot = getattr(connector, _ATTR, None)
        if not isinstance(slot, _Slot):
            slot = _Slot()
            try:
                setattr(connector, _ATTR, slot)
            except AttributeError:  # a connector with __slots__: no cache, a build per call
                pass
        return slot


# ---- prompt text ---------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def grounding_lines(matches: list[ValueMatch], schema: Schema) -> list[str]:
    """One comment line per column of `schema` with matches, best column first:
    `-- column customers.country: values matching the question: 'United States'`."""
    per_column: dict[tuple[str, str], list[str]] = {}
    for m in matches:
        table = schema.table(m.table)
        if table is None or table.column(m.column) is None:
            continue  # linking left it out: the prompt cannot name it
        values = per_column.setdefault((table.name, m.column), [])
        if m.value not in values:
            values.append(m.value)
    return [
        f"-- column {t}.{c}: values matching the question: {', '.join(_quote(v) for v in vs)}"
        for (t, c), vs in per_column.items()
    ]
