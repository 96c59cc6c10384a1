"""Two `ragloom` CLI defects found by trying it as a new user (issue 14): a busy port and a closed pipe."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ragloom.config import Settings
from ragloom.errors import InvalidArgument
from ragloom.services.server import build_server, check_port_free, start_server

RAGLOOM = [sys.executable, "-m", "ragloom.cli"]


@pytest.fixture
def busy_port() -> tuple[str, int]:
    """A port held by a plain listening socket (no SO_REUSEPORT), as any other server would hold it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield "127.0.0.1", s.getsockname()[1]


def test_serve_on_a_busy_port_fails_before_loading_the_model(busy_port: tuple[str, int], tmp_path: Path) -> None:
    host, port = busy_port
    env = {**os.environ, "RAGLOOM_LOG_LEVEL": "INFO"}
    r = subprocess.run([*RAGLOOM, "serve", "--host", host, "--port", str(port), "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert f"cannot listen on {host}:{port}: the port is already in use" in r.stderr
    assert "--port N" in r.stderr  # says how to pick another
    assert "Traceback" not in r.stderr
    # the check came first: the model was never loaded (nor converted into the empty data dir)
    assert "loading model" not in r.stderr
    assert not (tmp_path / "models").exists()
    assert "serving" not in r.stdout


def test_check_port_free_accepts_a_free_port_and_port_zero(busy_port: tuple[str, int]) -> None:
    host, port = busy_port
    with pytest.raises(InvalidArgument, match=f"{port}: the port is already in use"):
        check_port_free(host, port)
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    check_port_free(host, free)
    check_port_free(host, 0)


async def test_a_second_grpc_server_cannot_share_the_port() -> None:
    """gRPC's default SO_REUSEPORT let two servers bind one port (requests alternated between them)."""
    first = await start_server(Settings(host="127.0.0.1", port=0), None)
    try:
        with pytest.raises(InvalidArgument, match=f"cannot listen on 127.0.0.1:{first.port}:.*--port N"):
            build_server(Settings(host="127.0.0.1", port=first.port), None)
    finally:
        await first.stop(0)


@pytest.mark.parametrize("args", [["models"], ["--help"], ["search", "--help"]])
def test_closed_output_pipe_exits_quietly(args: list[str]) -> None:
    """`ragloom search ... | head` printed `ragloom: error (BrokenPipeError)` once head had exited."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write to the pipe fails
    try:
        r = subprocess.run([*RAGLOOM, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert r.stderr == ""
    assert r.returncode in (0, 141)  # 141 = 128 + SIGPIPE, as `yes | head` reports

