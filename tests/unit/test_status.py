"""The one map between ragloom's errors and gRPC status codes (services/status.py)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from ragloom import errors as e
from ragloom.services.status import error_from_status, grpc_code


def test_errors_module_knows_no_transport() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, ragloom.errors; print('grpc' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (e.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.SqlError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.UnsupportedKeyword("uniqueItems", "x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.ForbiddenQuery("x"), grpc.StatusCode.PERMISSION_DENIED),
        (e.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (e.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (e.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (e.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (e.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (e.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (e.ModelError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (e.Cancelled("x"), grpc.StatusCode.CANCELLED),
        (e.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED),
        (e.RagloomError("x"), grpc.StatusCode.INTERNAL),
        (KeyError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_each_error_has_its_code(exc: BaseException, code: grpc.StatusCode) -> None:
    assert grpc_code(exc) is code


def test_status_comes_back_as_the_same_class() -> None:
    for cls in (e.InvalidArgument, e.ForbiddenQuery, e.NotFound, e.AlreadyExists, e.ResourceExhausted,
                e.DeadlineExceeded, e.Unavailable, e.FailedPrecondition, e.Cancelled, e.Unimplemented):
        back = error_from_status(grpc_code(cls("m")), "m")
        assert type(back) is cls and str(back) == "m"
    assert type(error_from_status(grpc.StatusCode.UNKNOWN, "m")) is e.RagloomError
