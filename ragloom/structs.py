"""google.protobuf.Struct <-> plain dicts, shared by the SDK and the servicers.

Struct numbers are doubles: whole numbers within the exactly-representable range come back as
int, because JSON (which Struct models) has one number type and users sent ints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from ragloom.errors import InvalidArgument

_MAX_EXACT_INT = 2**53


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def struct_to_dict(msg: struct_pb2.Struct, what: str = "metadata") -> dict[str, Any]:
    """The Struct as a dict; InvalidArgument naming `what` (the request field) when it holds what
    JSON cannot (NaN or infinite numbers)."""
    try:
        return _plain(json_format.MessageToDict(msg))  # type: ignore[no-any-return]
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not JSON: {exc}", field=what) from exc


def dict_to_struct(value: Mapping[str, Any] | None, what: str = "metadata") -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if value:
        try:
            out.update(value)
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidArgument(
                f"{what} must be JSON-like (str keys; str/number/bool/null/list/dict values): {exc}"
            ) from exc
    return out
