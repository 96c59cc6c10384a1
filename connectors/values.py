"""Small helpers shared by the connectors: JSON-friendly values and secret-free messages."""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import make_url

MAX_SAMPLE_CHARS = 80  # samples go into prompts: keep them short


def jsonable(value: Any) -> Any:
    """A database value as something json.dumps and protobuf Struct accept, keeping its meaning.

    Decimals become floats (the Tables API returns numbers, not strings), dates and times ISO
    strings, bytes hex; containers (PostgreSQL json/arrays, DuckDB lists/structs) recursively.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars from pandas-backed data
        return jsonable(value.item())
    return str(value)


def sample_value(value: Any) -> Any:
    """A sample for the schema: JSON-friendly and short."""
    value = jsonable(value)
    if isinstance(value, str) and len(value) > MAX_SAMPLE_CHARS:
        return value[: MAX_SAMPLE_CHARS - 3] + "..."
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
