"""The SDK leaves unset (None) arguments out of the request, so the server's defaults apply."""

from __future__ import annotations

import grpc
import pytest

from ragloom.client import _error, build_generate_request
from ragloom.errors import DeadlineExceeded, NotFound, RagloomError, Unimplemented
from ragloom.services.generation import sampling_from_proto


def test_unset_arguments_are_absent() -> None:
    req = build_generate_request("hi", messages=None, request_id=None, max_tokens=None, temperature=None, stop=None)
    assert req.WhichOneof("input") == "prompt" and req.prompt == "hi"
    for name in ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "ignore_eos"):
        assert not req.sampling.HasField(name), name
    assert len(req.request_id) == 32  # a fresh uuid, so the caller can abort a stream it started


def test_zero_values_are_sent_not_dropped() -> None:
    # temperature=0 (greedy) and top_k=0 must reach the server as set fields
    req = build_generate_request(
        None, messages=[{"role": "user", "content": "x"}], request_id="r", temperature=0.0, top_k=0, seed=0, stop="\n"
    )
    assert req.sampling.HasField("temperature") and req.sampling.temperature == 0.0
    assert req.sampling.HasField("top_k") and req.sampling.HasField("seed")
    assert list(req.sampling.stop) == ["\n"]
    params = sampling_from_proto(req.sampling)
    assert params.greedy and params.seed == 0 and params.max_tokens == 256  # unset -> dataclass default


def test_exactly_one_input() -> None:
    with pytest.raises(TypeError):
        build_generate_request(None, messages=None, request_id=None)
    with pytest.raises(TypeError):
        build_generate_request("a", messages=[{"role": "user", "content": "b"}], request_id=None)


class _FakeRpcError(grpc.RpcError):
    """A grpc.RpcError value (grpc's own errors need a live call)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
        (grpc.StatusCode.INTERNAL, RagloomError),
    ],
)
def test_rpc_errors_map_back_to_ragloom_errors(code: grpc.StatusCode, cls: type[RagloomError]) -> None:
    rpc = _FakeRpcError(code, "boom")
    err = _error(rpc)
    assert type(err) is cls and str(err) == "boom" and err.__cause__ is rpc
