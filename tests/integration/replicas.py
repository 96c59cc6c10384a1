"""Real processes for the scale-out tests (#22): `ragloom serve` replicas sharing a throw-away
PostgreSQL database and a Redis key prefix, behind nginx (deploy/nginx-proxy.sh). Imported by
test modules in this folder (pytest puts it on sys.path) and by benchmarks/load.py --replicas."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
PROXY = REPO / "deploy" / "nginx-proxy.sh"
PG_ADMIN_URL = os.environ.get("RAGLOOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RAGLOOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, timeout: float = 300) -> None:
    """Until grpc.health.v1 says SERVING for the whole server (readiness, as a proxy checks it)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not SERVING after {timeout:.0f}s")
            time.sleep(0.2)


@dataclass
class Shared:
    """The state every replica shares: a PostgreSQL database and a Redis key prefix."""

    store_url: str
    redis_url: str
    redis_prefix: str
    secret_key: str
    root: Path  # connector root and data dirs live below it

    def env(self) -> dict[str, str]:
        return {
            "RAGLOOM_CHUNK_KV_REDIS_PREFIX": self.redis_prefix,
            "RAGLOOM_SECRET_KEY": self.secret_key,
        }


@contextmanager
def shared_state(root: Path) -> Iterator[Shared]:
    """A fresh PostgreSQL database and Redis prefix, dropped afterwards."""
    import redis

    name = f"ragloom_rep_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    prefix = f"ragloom:test:{name}:"
    try:
        yield Shared(url, REDIS_URL, prefix, f"test-secret-{name}", root)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(f"{prefix}*"))
        if keys:
            r.delete(*keys)
        r.close()


@dataclass
class Replica:
    """One `ragloom serve` process; `start()` again after a kill reuses its data dir and port."""

    name: str
    shared: Shared
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    extra: tuple[str, ...] = ()  # more `serve` arguments
    env: dict[str, str] = field(default_factory=dict)  # more RAGLOOM_* settings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.shared.root / self.name  # cache only: indexes and the chunk-KV disk tier

    def start(self, wait: bool = True) -> None:
        cmd = [sys.executable, "-m", "ragloom.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--store-url", self.shared.store_url, "--chunk-kv-redis-url", self.shared.redis_url,
               "--connector-root", str(self.shared.root), "--metrics-port", str(self.metrics_port),
               "--log-level", "WARNING", *self.extra]
        env = {**os.environ, **self.shared.env(), **self.env}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert self.proc.stdout is not None
        # drain its output so that it never blocks on a full pipe; keep the tail for failures
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        if wait:
            try:
                wait_serving(self.address)
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"replica {self.name} did not start:\n" + "".join(self.log[-40:])) from None

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def kill(self) -> None:
        """kill -9: no drain, no cleanup."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None


@dataclass
class Proxy:
    """nginx with grpc_pass over the replicas (deploy/nginx-proxy.sh)."""

    upstreams: list[str]
    prefix: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["bash", str(PROXY), "run", str(self.prefix), str(self.port), *self.upstreams],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else ""
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{out}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("nginx did not listen within 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def nginx_available() -> str | None:
    """Why the proxy cannot run here, or None; `deploy/nginx-proxy.sh install` installs nginx."""
    r = subprocess.run(["bash", str(PROXY), "check"], capture_output=True, text=True)
    return None if r.returncode == 0 else (r.stdout + r.stderr).strip()
