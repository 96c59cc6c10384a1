"""ExecuteSql's admission gate (#21, --max-sql-running / --max-sql-queued): at most N statements
run at once and M more wait, first come first served; a call beyond that is refused with
RESOURCE_EXHAUSTED (OVERLOADED, a retry delay) at once, a caller that gives up while waiting
takes no slot, and the gate's state is scraped as metrics."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from background_loop import BackgroundLoop
from google.rpc import error_details_pb2, status_pb2

from ragloom.client import Client
from ragloom.config import Settings
from ragloom.errors import ResourceExhausted
from ragloom.retrieval.collections import CollectionManager
from ragloom.services._proto import tables_pb2, tables_pb2_grpc
from ragloom.services.limits import Gate
from ragloom.services.server import RagloomServer, start_server

EXECUTE_SQL = "/ragloom.v1.TablesService/ExecuteSql"
# ~50 MB of rows: far beyond what HTTP/2 flow control lets the server send ahead of a reader that
# has stopped reading, so a call that is not read holds its slot until it is cancelled. It runs on
# a channel of its own: the unread rows fill their connection's window too, which would stall the
# other calls' responses on a shared one.
WIDE = tables_pb2.ExecuteSqlRequest(
    connector="shop", max_rows=100_000,
    sql="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
        "SELECT x, printf('%0500d', x) AS pad FROM c")


# -- the gate alone ------------------------------------------------------------------------


def test_gate_runs_n_queues_m_in_order_and_a_cancelled_waiter_takes_no_slot() -> None:
    async def scenario() -> None:
        gate = Gate(running=1, queued=2)
        order: list[str] = []
        release_first = asyncio.Event()

        async def call(name: str, hold: asyncio.Event | None = None) -> None:
            async with gate.slot():
                order.append(name)
                if hold is not None:
                    await hold.wait()

        first = asyncio.create_task(call("first", release_first))
        await asyncio.sleep(0)
        assert (gate.inside, gate.waiting, gate.full()) == (1, 0, False)
        second = asyncio.create_task(call("second"))
        gone = asyncio.create_task(call("gone"))
        await asyncio.sleep(0)
        assert (gate.inside, gate.waiting, gate.full()) == (1, 2, True)
        gone.cancel()  # its caller went away while it waited
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert (gate.waiting, gate.full()) == (1, False)
        release_first.set()
        await asyncio.gather(first, second)
        assert order == ["first", "second"] and (gate.inside, gate.waiting) == (0, 0)
        assert gate.hold_s > 0.0 and 0.05 <= gate.retry_after_s() <= 10.0

    asyncio.run(scenario())


def test_gate_bounds() -> None:
    with pytest.raises(ValueError, match="running >= 1"):
        Gate(running=0, queued=1)
    assert Gate(running=1, queued=0).full() is False  # nothing inside yet
    assert Settings().max_sql_running == 4 and Settings().max_sql_queued == 32


# -- through the server ---------------------------------------------------------------------


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[RagloomServer, BackgroundLoop]]:
    bg = BackgroundLoop()
    manager = CollectionManager(tmp_path / "collections")  # the Tables service is served beside Retrieval
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp_path / "server",
                        metrics_port=0, max_sql_running=1, max_sql_queued=1)
    server = bg.run(start_server(settings, None, collections=manager))
    try:
        db = tmp_path / "server" / "shop.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
            con.execute("INSERT INTO items (name) VALUES ('a'), ('b')")
        with Client(server.address, timeout=60) as client:
            client.register_connector("shop", f"sqlite:///{db}")
        yield server, bg
    finally:
        bg.run(server.stop(0))
        manager.close()
        bg.close()


def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _gauge(server: RagloomServer, state: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    line = next(s for s in text.splitlines()
                if s.startswith("ragloom_admitted_calls{") and 'method="ExecuteSql"' in s and f'state="{state}"' in s)
    return float(line.rsplit(" ", 1)[1])


def test_over_the_limits_is_refused_at_once_and_the_queue_drains(served: tuple[RagloomServer, BackgroundLoop]) -> None:
    server, _bg = served
    gate = server.gates[EXECUTE_SQL]
    with grpc.insecure_channel(server.address) as channel, grpc.insecure_channel(server.address) as held:
        stub = tables_pb2_grpc.TablesServiceStub(channel)
        holder = tables_pb2_grpc.TablesServiceStub(held).ExecuteSql(WIDE, timeout=60)
        assert next(holder).HasField("header")  # running, and it stays so while unread
        _wait_for(lambda: gate.inside == 1, "the first call to run")
        waiter = stub.ExecuteSql(tables_pb2.ExecuteSqlRequest(connector="shop", sql="SELECT name FROM items"),
                                 timeout=60)
        _wait_for(lambda: gate.waiting == 1, "the second call to wait")
        assert (_gauge(server, "running"), _gauge(server, "waiting")) == (1.0, 1.0)

        started = time.monotonic()
        with Client(server.address, timeout=60) as client, pytest.raises(ResourceExhausted) as info:
            client.execute_sql("shop", "SELECT count(*) FROM items")
        refused_in = time.monotonic() - started
        err = info.value
        assert err.reason == "OVERLOADED" and err.retry_after_s is not None and 0.05 <= err.retry_after_s <= 10
        assert "1 ExecuteSql calls running and 1 waiting" in str(err) and "--max-sql-running" in str(err)
        assert err.metadata == {"running": "1", "waiting": "1"}
        assert refused_in < 10  # at once, not after the calls ahead of it (which never end by themselves)

        # the raw status carries RetryInfo, as every OVERLOADED refusal does (services/status.py)
        try:
            next(stub.ExecuteSql(tables_pb2.ExecuteSqlRequest(connector="shop", sql="SELECT 1"), timeout=60))
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            status = status_pb2.Status.FromString(dict(exc.trailing_metadata())["grpc-status-details-bin"])
            assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        else:
            raise AssertionError("a third call was admitted past the limits")

        holder.cancel()  # the running call ends: the waiting one runs, in order
        rows = [r for msg in waiter if msg.HasField("rows") for r in msg.rows.rows]
        assert len(rows) == 2
    _wait_for(lambda: (gate.inside, gate.waiting) == (0, 0), "the gate to empty")
    with Client(server.address, timeout=60) as client:  # served again
        assert client.execute_sql("shop", "SELECT count(*) FROM items").rows == [[2]]


def test_a_waiting_caller_that_gives_up_takes_no_slot(served: tuple[RagloomServer, BackgroundLoop]) -> None:
    server, _bg = served
    gate = server.gates[EXECUTE_SQL]
    with grpc.insecure_channel(server.address) as channel, grpc.insecure_channel(server.address) as held:
        stub = tables_pb2_grpc.TablesServiceStub(channel)
        holder = tables_pb2_grpc.TablesServiceStub(held).ExecuteSql(WIDE, timeout=60)
        next(holder)
        _wait_for(lambda: gate.inside == 1, "the first call to run")
        quitter = stub.ExecuteSql(tables_pb2.ExecuteSqlRequest(connector="shop", sql="SELECT 1"), timeout=60)
        _wait_for(lambda: gate.waiting == 1, "the second call to wait")
        quitter.cancel()
        _wait_for(lambda: gate.waiting == 0, "the cancelled caller to leave the queue")
        assert gate.inside == 1
        holder.cancel()
    _wait_for(lambda: gate.inside == 0, "the slot to be free")
    with Client(server.address, timeout=60) as client:
        assert client.execute_sql("shop", "SELECT count(*) FROM items").rows == [[2]]
