"""Small helpers shared by the connectors: database values as they travel (typed, exact), as they
read in prompts, and secret-free messages.

Connectors return rows as the driver gave them (int, Decimal, bytes, datetime, dict, ...); how a
value goes over the wire is decided once, by `cell_value`, which the Tables service turns into a
ragloom.v1.Cell and which fixes the Cell field ("kind") each Python type arrives in. `type_kind`
tells the kind a declared column type will give, for ColumnInfo.kind.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import make_url

MAX_SAMPLE_CHARS = 80  # samples go into prompts: keep them short
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Kinds are the names of ragloom.v1.CellKind without their prefix ("INT" is CELL_KIND_INT;
# "" is CELL_KIND_UNSPECIFIED). NULL has no kind: it is a value of every column.


def plain(value: Any) -> Any:
    """numpy scalars (from pandas-backed data) as the Python value they hold; anything else as is."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def decimal_text(value: decimal.Decimal) -> str:
    """An exact decimal as positional text, scale kept: Decimal('1E+2') -> '100', '0E-3' -> '0.000'."""
    return format(value, "f")


def cell_value(value: Any) -> tuple[str | None, Any]:
    """A database value as (kind, payload): the one place that decides how values travel.

    None -> (None, None) for SQL NULL. Otherwise the kind names the Cell field and the payload is
    what goes in it:
    - bool -> BOOL (tested before int: bool is an int);
    - int -> INT when it fits in int64, else DECIMAL with its exact digits (BIGINT UNSIGNED,
      HUGEINT, huge NUMERIC);
    - float -> DOUBLE; Decimal -> DECIMAL as exact positional text ("12.50"); a NaN or infinite
      Decimal (PostgreSQL numeric allows them) has no decimal text: DOUBLE;
    - str -> STRING; bytes, bytearray, memoryview -> BYTES;
    - datetime with a zone -> TIMESTAMP (the aware datetime: the caller converts it to UTC);
      without one -> DATETIME, ISO 8601 text ("2024-05-01T13:45:00", ".ffffff" with fractions);
    - date -> DATE ("2024-05-01"); time -> TIME ("13:45:00", "+02:00" with a zone);
    - dict, list, tuple, set (PostgreSQL json/jsonb and arrays, DuckDB lists/structs/maps) ->
      JSON text (see json_text);
    - timedelta (intervals, MySQL TIME), UUID, IP addresses and anything else -> STRING, str().
    """
    value = plain(value)
    if value is None:
        return None, None
    if isinstance(value, bool):
        return "BOOL", value
    if isinstance(value, int):
        return ("INT", value) if INT64_MIN <= value <= INT64_MAX else ("DECIMAL", str(value))
    if isinstance(value, float):
        return "DOUBLE", value
    if isinstance(value, decimal.Decimal):
        return ("DECIMAL", decimal_text(value)) if value.is_finite() else ("DOUBLE", float(value))
    if isinstance(value, str):
        return "STRING", value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "BYTES", bytes(value)
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        if value.tzinfo is not None and value.utcoffset() is not None:
            return "TIMESTAMP", value
        return "DATETIME", value.isoformat()
    if isinstance(value, dt.date):
        return "DATE", value.isoformat()
    if isinstance(value, dt.time):
        return "TIME", value.isoformat()
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return "JSON", json_text(value)
    return "STRING", str(value)


def json_text(value: Any) -> str:
    """A structured value as compact JSON text that json.loads (or JSON.parse) reads back.

    Inside it: numbers stay numbers, a Decimal with its exact digits ("12.50"; JSON numbers are
    decimal text, so nothing is lost on the wire); NaN and infinities, which JSON lacks, are null;
    bytes are base64 (as proto3 JSON writes bytes); dates and times ISO 8601 text; map keys
    strings; sets sorted arrays; anything else its str()."""
    value = plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, decimal.Decimal):
        return decimal_text(value) if value.is_finite() else "null"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_string(str(k))}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (set, frozenset)):
        return "[" + ",".join(sorted(json_text(v) for v in value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _json_string(base64.b64encode(bytes(value)).decode("ascii"))
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _json_string(value.isoformat())
    return _json_string(str(value))


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def display(value: Any) -> str:
    """A value as a person (or the model) reads it: in prompts, schema text and printed tables.
    NULL, exact decimals, ISO dates and times, bytes as hex, structured values as JSON."""
    kind, payload = cell_value(value)
    if kind is None:
        return "NULL"
    if kind == "BYTES":
        return payload.hex()
    if kind == "TIMESTAMP":
        return payload.isoformat()  # type: ignore[no-any-return]
    return str(payload)


def sample_value(value: Any) -> Any:
    """A sample for the schema, or None to skip it: the driver's value, a text cut to
    MAX_SAMPLE_CHARS (with "..."), bytes cut to MAX_SAMPLE_CHARS bytes; a structured value whose
    JSON is longer than that is skipped (cut JSON would not parse)."""
    value = plain(value)
    if isinstance(value, str) and len(value) > MAX_SAMPLE_CHARS:
        return value[: MAX_SAMPLE_CHARS - 3] + "..."
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value[:MAX_SAMPLE_CHARS])
    if isinstance(value, (dict, list, tuple, set, frozenset)) and len(json_text(value)) > MAX_SAMPLE_CHARS:
        return None
    return value


def column_samples(rows: Sequence[Sequence[Any]], index: int, limit: int) -> list[Any]:
    """Up to `limit` distinct non-null sample values of column `index`, in row order."""
    seen: list[Any] = []
    for row in rows:
        value = sample_value(row[index])
        if value is not None and value not in seen:
            seen.append(value)
            if len(seen) == limit:
                break
    return seen


# ---- declared types -> kinds --------------------------------------------------------------

# (pattern on the upper-cased declared type, kind); the first match wins, so narrower patterns
# come first ("TIMESTAMP WITH TIME ZONE" before "TIMESTAMP", "INTERVAL" before "INT").
_Rule = tuple[re.Pattern[str], str]


def _rules(*pairs: tuple[str, str]) -> tuple[_Rule, ...]:
    return tuple((re.compile(p), k) for p, k in pairs)


_STRUCTURED = r"(\[\d*\]$|^(STRUCT|MAP|UNION|LIST)\b|^_)"  # arrays, DuckDB nested types, PG "_int4"
_TYPE_RULES: dict[str, tuple[_Rule, ...]] = {
    "postgres": _rules(
        (_STRUCTURED, "JSON"),
        (r"^JSONB?\b", "JSON"),
        (r"^TIMESTAMP.*WITH TIME ZONE|^TIMESTAMPTZ", "TIMESTAMP"),
        (r"^TIMESTAMP", "DATETIME"),
        (r"^DATE\b", "DATE"),
        (r"^TIME(TZ)?\b", "TIME"),
        (r"^(SMALLINT|INTEGER|BIGINT|INT[248]?|SMALLSERIAL|SERIAL|BIGSERIAL|OID)\b", "INT"),
        (r"^(NUMERIC|DECIMAL)\b", "DECIMAL"),
        (r"^(REAL|DOUBLE|FLOAT[48]?)\b", "DOUBLE"),
        (r"^BOOL(EAN)?\b", "BOOL"),
        (r"^BYTEA\b", "BYTES"),
        # psycopg returns these as str, timedelta, UUID, ipaddress: all text on the wire
        (r"^(VARCHAR|CHAR|CHARACTER|TEXT|CITEXT|NAME|UUID|INTERVAL|INET|CIDR|MACADDR8?|XML|MONEY|TSVECTOR|TSQUERY)\b",
         "STRING"),
    ),
    "mysql": _rules(
        (r"^BIGINT\b.*UNSIGNED", ""),  # up to 2^64 - 1: INT, or DECIMAL past int64
        (r"^(TINYINT|SMALLINT|MEDIUMINT|INT|INTEGER|BIGINT|YEAR)\b", "INT"),  # TINYINT(1)/BOOL too
        (r"^BOOL(EAN)?\b", "INT"),  # MySQL's BOOLEAN is TINYINT(1): pymysql gives ints
        (r"^(DECIMAL|NUMERIC|DEC|FIXED)\b", "DECIMAL"),
        (r"^(FLOAT|DOUBLE|REAL)\b", "DOUBLE"),
        (r"^(DATETIME|TIMESTAMP)\b", "DATETIME"),  # MySQL keeps no zone: naive values
        (r"^DATE\b", "DATE"),
        (r"^TIME\b", "STRING"),  # a duration up to 838 hours: pymysql gives a timedelta
        (r"^(BLOB|TINYBLOB|MEDIUMBLOB|LONGBLOB|BINARY|VARBINARY|BIT)\b", "BYTES"),
        (r"^(VARCHAR|CHAR|TEXT|TINYTEXT|MEDIUMTEXT|LONGTEXT|ENUM|SET|JSON|NVARCHAR|NCHAR)\b", "STRING"),
    ),
    "duckdb": _rules(
        (_STRUCTURED, "JSON"),
        (r"^(UBIGINT|HUGEINT|UHUGEINT)\b", ""),  # may pass int64: INT, or DECIMAL beyond
        (r"^(TINYINT|SMALLINT|INTEGER|BIGINT|UTINYINT|USMALLINT|UINTEGER|INT[1248]?)\b", "INT"),
        (r"^(DECIMAL|NUMERIC)\b", "DECIMAL"),
        (r"^(DOUBLE|FLOAT|REAL)\b", "DOUBLE"),
        (r"^TIMESTAMP WITH TIME ZONE|^TIMESTAMPTZ", "TIMESTAMP"),
        (r"^(TIMESTAMP|DATETIME)", "DATETIME"),
        (r"^DATE\b", "DATE"),
        (r"^TIME\b", "TIME"),
        (r"^BOOL(EAN)?\b", "BOOL"),
        (r"^(BLOB|BYTEA|BINARY|VARBINARY|BIT)\b", "BYTES"),
        (r"^(VARCHAR|CHAR|TEXT|STRING|UUID|INTERVAL|JSON|ENUM)\b", "STRING"),
    ),
}


def type_kind(declared: str, dialect: str) -> str:
    """The kind every value of a column of this declared type arrives in (cell_value), or "" when
    the type does not say: SQLite columns (dynamically typed: an INTEGER column can hold text)
    follow their type affinity where it fixes the kind, unknown and user-defined types give ""."""
    text = " ".join(declared.upper().split())
    if dialect == "sqlite":
        return _sqlite_kind(text)
    for pattern, kind in _TYPE_RULES.get(dialect, ()):
        if pattern.search(text):
            return kind
    return ""


def _sqlite_kind(declared: str) -> str:
    # https://sqlite.org/datatype3.html#determination_of_column_affinity, in its order. INTEGER
    # affinity stores integral numbers as integers and REAL affinity numbers as reals, TEXT
    # affinity numbers as text; only other values (a word in an INTEGER column) break the kind.
    # NUMERIC affinity (NUMERIC, DECIMAL, BOOLEAN, DATE, ...) keeps ints, reals or text as they
    # fit, and a column without a type keeps whatever it was given: neither says.
    if "INT" in declared:
        return "INT"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "STRING"
    if "BLOB" in declared:
        return "BYTES"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "DOUBLE"
    return ""


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***; unparsable input is returned without its userinfo."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never let a bad URL leak through an error path
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return url


MAX_ERROR_CHARS = 600  # a database's error goes back to the model in the correction prompt
# DuckDB lists every overload of a function it could not bind: dozens of lines of no use to anyone
_CANDIDATES = re.compile(r"\n\s*Candidate functions:(\n\t[^\n]*)*")


def clip_error(message: str) -> str:
    """A database's error message cut to what a person (or the model) can act on."""
    message = _CANDIDATES.sub("", message).strip()
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "..."


def scrub(message: str, *secrets: str | None) -> str:
    """The message with every secret (passwords, full URLs) replaced by ***."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message
