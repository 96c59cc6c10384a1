"""Typed SQL cells: how each Python value a database driver returns travels (services/tables.py
to_cell, one decision in connectors/values.cell_value) and what the SDK makes of it again.

The database-side checks (that real SQLite, PostgreSQL and MariaDB columns arrive in these
kinds) are in tests/integration/test_connectors.py and test_tables_service.py.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from ragloom.client.results import cell_value_from, row_from
from ragloom.connectors.values import cell_value, display, json_text, sample_value, type_kind
from ragloom.services._proto import tables_pb2 as pb
from ragloom.services.tables import encode_rows, header_columns, to_cell

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))


@pytest.mark.parametrize(
    ("value", "field", "wire", "back"),
    [
        (None, "null_value", 0, None),
        (True, "bool_value", True, True),  # a bool is an int in Python: it must not arrive as 1
        (9007199254740993, "int_value", 9007199254740993, 9007199254740993),  # 2**53 + 1: no double rounding
        (-(2**63), "int_value", -(2**63), -(2**63)),
        (2**64 - 1, "decimal_value", "18446744073709551615", Decimal(2**64 - 1)),  # BIGINT UNSIGNED max
        (1.5, "double_value", 1.5, 1.5),
        (Decimal("12.50"), "decimal_value", "12.50", Decimal("12.50")),  # scale kept
        (Decimal("1E+2"), "decimal_value", "100", Decimal("100")),  # positional, never an exponent
        (Decimal("-0.001"), "decimal_value", "-0.001", Decimal("-0.001")),
        ("Ada", "string_value", "Ada", "Ada"),
        (b"\x00\x01\xff", "bytes_value", b"\x00\x01\xff", b"\x00\x01\xff"),
        (memoryview(b"ab"), "bytes_value", b"ab", b"ab"),
        (dt.datetime(2024, 5, 1, 13, 45), "datetime_value", "2024-05-01T13:45:00", dt.datetime(2024, 5, 1, 13, 45)),
        (dt.datetime(2024, 5, 1, 13, 45, 0, 500000), "datetime_value", "2024-05-01T13:45:00.500000",
         dt.datetime(2024, 5, 1, 13, 45, 0, 500000)),
        (dt.date(2024, 5, 1), "date_value", "2024-05-01", dt.date(2024, 5, 1)),
        (dt.time(13, 45), "time_value", "13:45:00", dt.time(13, 45)),
        (dt.time(13, 45, tzinfo=PLUS2), "time_value", "13:45:00+02:00", dt.time(13, 45, tzinfo=PLUS2)),
        ({"a": [1, Decimal("2.50")], "b": None}, "json_value", '{"a":[1,2.50],"b":null}', {"a": [1, 2.5], "b": None}),
        ([1, 2], "json_value", "[1,2]", [1, 2]),
        (dt.timedelta(hours=13, minutes=45), "string_value", "13:45:00", "13:45:00"),  # MySQL TIME, intervals
        (uuid.UUID(int=1), "string_value", "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000001"),
        (np.int64(7), "int_value", 7, 7),  # pandas-backed data: numpy scalars unwrapped
        (np.float32(0.5), "double_value", 0.5, 0.5),
    ],
)
def test_each_python_value_has_one_field_and_comes_back_exact(value: Any, field: str, wire: Any, back: Any) -> None:
    cell = to_cell(value)
    assert cell.WhichOneof("value") == field
    assert getattr(cell, field) == wire
    got = cell_value_from(pb.Cell.FromString(cell.SerializeToString()))
    assert got == back and type(got) is type(back)


def test_zoned_timestamps_are_instants_in_utc() -> None:
    cell = to_cell(dt.datetime(2024, 5, 1, 13, 45, 30, 250000, tzinfo=PLUS2))
    assert cell.WhichOneof("value") == "timestamp_value"
    assert (cell.timestamp_value.seconds, cell.timestamp_value.nanos) == (1714563930, 250000000)
    back = cell_value_from(cell)
    assert back == dt.datetime(2024, 5, 1, 11, 45, 30, 250000, tzinfo=UTC) and back.utcoffset() == dt.timedelta(0)


def test_non_finite_values() -> None:
    assert cell_value(Decimal("NaN"))[0] == "DOUBLE"  # no decimal text for NaN (PostgreSQL numeric has it)
    assert json.loads(json_text([float("nan"), Decimal("Infinity"), 1.0])) == [None, None, 1.0]


def test_json_text_is_exact_and_portable() -> None:
    text = json_text({"n": Decimal("12345678901234567890.123456789"), 1: {b"\x00"}, "t": dt.date(2024, 1, 2)})
    assert text == '{"n":12345678901234567890.123456789,"1":["AA=="],"t":"2024-01-02"}'
    assert json.loads(text, parse_float=Decimal)["n"] == Decimal("12345678901234567890.123456789")


def test_header_kinds_come_from_the_values() -> None:
    rows = [
        (1, "a", None, 1, None),
        (2, "b", None, "two", None),  # SQLite: one column, two kinds
        (None, "c", None, 3, None),
    ]
    encoded, kinds = encode_rows(rows, 5)
    assert kinds == [pb.CELL_KIND_INT, pb.CELL_KIND_STRING, pb.CELL_KIND_UNSPECIFIED, pb.CELL_KIND_UNSPECIFIED,
                     pb.CELL_KIND_UNSPECIFIED]
    assert [row_from(r) for r in encoded] == [list(r) for r in rows]
    cols = header_columns(["id", "name", "x", "mixed", "y"], ["int8", "text"], kinds)
    assert [(c.name, c.type, c.kind) for c in cols][:2] == [("id", "int8", pb.CELL_KIND_INT), ("name", "text", pb.CELL_KIND_STRING)]
    assert cols[4].type == ""  # no type reported: empty, not a guess


@pytest.mark.parametrize(
    ("declared", "dialect", "kind"),
    [
        ("INTEGER", "sqlite", "INT"),
        ("VARCHAR(20)", "sqlite", "STRING"),
        ("REAL", "sqlite", "DOUBLE"),
        ("BLOB", "sqlite", "BYTES"),
        ("NUMERIC(10, 2)", "sqlite", ""),  # NUMERIC affinity keeps ints, reals or text
        ("", "sqlite", ""),
        ("BIGINT", "postgres", "INT"),
        ("NUMERIC(10, 2)", "postgres", "DECIMAL"),
        ("TIMESTAMP WITHOUT TIME ZONE", "postgres", "DATETIME"),
        ("TIMESTAMP WITH TIME ZONE", "postgres", "TIMESTAMP"),
        ("TIME WITHOUT TIME ZONE", "postgres", "TIME"),
        ("INTERVAL", "postgres", "STRING"),  # not INT, though it starts with INT
        ("BYTEA", "postgres", "BYTES"),
        ("JSONB", "postgres", "JSON"),
        ("INTEGER[]", "postgres", "JSON"),
        ("DOUBLE PRECISION", "postgres", "DOUBLE"),
        ("my_enum", "postgres", ""),
        ("TINYINT(1)", "mysql", "INT"),
        ("BIGINT UNSIGNED", "mysql", ""),  # past int64 it is a decimal
        ("DECIMAL(10, 2)", "mysql", "DECIMAL"),
        ("DATETIME", "mysql", "DATETIME"),
        ("TIME", "mysql", "STRING"),
        ("LONGBLOB", "mysql", "BYTES"),
        ("HUGEINT", "duckdb", ""),
        ("DECIMAL(18,3)", "duckdb", "DECIMAL"),
        ("STRUCT(x INTEGER)", "duckdb", "JSON"),
        ("TIMESTAMP WITH TIME ZONE", "duckdb", "TIMESTAMP"),
        ("TIMESTAMP_NS", "duckdb", "DATETIME"),
    ],
)
def test_declared_type_kinds(declared: str, dialect: str, kind: str) -> None:
    assert type_kind(declared, dialect) == kind


def test_samples_and_display() -> None:
    assert sample_value("x" * 100) == "x" * 77 + "..."
    assert sample_value(b"\x01" * 100) == b"\x01" * 80
    assert sample_value({"k": "v" * 100}) is None  # cut JSON would not parse: skipped
    assert sample_value(Decimal("1.10")) == Decimal("1.10")
    assert [display(v) for v in (None, Decimal("1E+2"), b"\x0a", dt.datetime(2024, 1, 2, 3, 4), [1])] == [
        "NULL", "100", "0a", "2024-01-02T03:04:00", "[1]"]
