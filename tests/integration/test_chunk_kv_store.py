"""The chunk-KV store: memory LRU, disk persistence and corruption, Redis (the machine's real server) and
Redis outages, model/dtype isolation, promotion between tiers, threads."""

from __future__ import annotations

import logging
import os
import threading
import uuid

import pytest
import redis
import torch

from ragloom.cache.chunk_kv import (
    ChunkKV,
    ChunkKVStore,
    ChunkKVStoreConfig,
    DiskTier,
    MemoryTier,
    RedisTier,
    chunk_key,
    decode_entry,
    encode_entry,
)
from ragloom.cache.codec import CodecConfig
from ragloom.errors import InvalidArgument

REDIS_URL = os.environ.get("RAGLOOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
MODEL = "smollm2-135m-instruct"
L, H, D = 3, 2, 8


def make_entry(tokens: int = 10, seed: int = 0, model: str = MODEL, dtype=torch.float32, context: str = "") -> ChunkKV:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50000, (tokens,), generator=g).tolist()
    k = torch.randn(L, tokens, H, D, generator=g).to(dtype)
    v = torch.randn(L, tokens, H, D, generator=g).to(dtype)
    name = str(dtype).removeprefix("torch.")
    return ChunkKV(chunk_key(model, name, ids, context), ids, k, v, start_pos=1, model_id=model, dtype=name)


def same_kv(a: ChunkKV, b: ChunkKV) -> bool:
    return torch.equal(a.k.cpu(), b.k.cpu()) and torch.equal(a.v.cpu(), b.v.cpu())


@pytest.fixture
def redis_prefix():
    """A Redis key prefix of this test's own; everything under it is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except Exception as e:  # noqa: BLE001 - any connection failure means "no server here"
        if os.environ.get("CI"):  # CI has Redis: a missing server there is a failure, not a skip
            pytest.fail(f"Redis not reachable at {REDIS_URL}: {e}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {e}")
    prefix = f"ragloom_test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    names = list(client.scan_iter(match=prefix + "*"))
    if names:
        client.delete(*names)
    client.close()


# ---- keys and entries ---------------------------------------------------------------------------


def test_chunk_key_covers_model_dtype_context_and_tokens():
    base = chunk_key("m", "float32", [1, 2, 3])
    assert len(base) == 64 and int(base, 16) >= 0
    assert base == chunk_key("m", torch.float32, (1, 2, 3))
    others = {
        chunk_key("m2", "float32", [1, 2, 3]),
        chunk_key("m", "bfloat16", [1, 2, 3]),
        chunk_key("m", "float32", [1, 2, 3], context="sys:abc"),
        chunk_key("m", "float32", [1, 2, 4]),
        chunk_key("m", "float32", [1, 2]),
        chunk_key("m", "float32", [12, 3]),
        chunk_key("mf", "loat32", [1, 2, 3]),  # no ambiguity from concatenation
    }
    assert base not in others and len(others) == 7


def test_entry_envelope_round_trip_and_validation():
    e = make_entry(13)
    back = decode_entry(encode_entry(e, CodecConfig(bits=16)))
    assert (back.key, back.token_ids, back.start_pos, back.model_id, back.dtype) == (
        e.key, e.token_ids, e.start_pos, e.model_id, e.dtype)
    assert torch.equal(back.k, e.k.half().float())
    bad = make_entry(5)
    bad.token_ids = bad.token_ids[:4]
    with pytest.raises(InvalidArgument):
        ChunkKVStore([MemoryTier(1 << 20)]).put(bad)
    wrong_dtype = make_entry(5)
    wrong_dtype.dtype = "bfloat16"
    with pytest.raises(InvalidArgument):
        ChunkKVStore([MemoryTier(1 << 20)]).put(wrong_dtype)


# ---- memory --------------------------------------------------------------------------------------


def test_memory_tier_is_lru_by_bytes():
    size = make_entry(10).nbytes
    mem = MemoryTier(budget_bytes=3 * size + 10)
    store = ChunkKVStore([mem])
    entries = [make_entry(10, seed=i) for i in range(5)]
    for e in entries[:3]:
        store.put(e)
    assert store.get(entries[0].key, MODEL, "float32")[1] == "memory"  # 0 is now most recent
    store.put(entries[3])  # evicts 1, the least recently used
    assert not store.contains(entries[1].key)
    assert all(store.contains(e.key) for e in (entries[0], entries[2], entries[3]))
    big = make_entry(25, seed=9)  # 2.5 entries' worth: evicts until it fits
    store.put(big)
    assert store.contains(big.key) and mem.stats()["bytes"] <= mem.budget_bytes
    huge = make_entry(40, seed=10)  # more than the whole budget: not stored, not an error
    store.put(huge)
    assert not store.contains(huge.key)
    s = store.stats()["tiers"]["memory"]
    assert s["evictions"] >= 3 and s["rejected"] == 1 and s["bytes"] == sum(
        e.nbytes for e in entries + [big] if store.contains(e.key))
    # a memory-only store keeps the tensors exactly
    got, tier = store.get(big.key, MODEL, "float32")
    assert tier == "memory" and same_kv(got, big)


# ---- disk ----------------------------------------------------------------------------------------


def test_disk_persists_across_store_instances(tmp_path):
    cfg = CodecConfig(bits=8, group_size=32)
    a = ChunkKVStore([MemoryTier(1 << 20), DiskTier(tmp_path / "kv")], cfg)
    e = make_entry(40)
    a.put(e)
    got_mem, tier = a.get(e.key, MODEL, "float32")
    assert tier == "memory"
    # "restart": a new store on the same directory
    b = ChunkKVStore([MemoryTier(1 << 20), DiskTier(tmp_path / "kv")], cfg)
    assert b.stats()["tiers"]["disk"]["entries"] == 1
    got, tier = b.get(e.key, MODEL, "float32")
    assert tier == "disk" and got.token_ids == e.token_ids and got.start_pos == 1
    # memory held the codec's reconstruction, so both tiers give the same KV
    assert same_kv(got, got_mem)
    assert float((got.k - e.k).norm() / e.k.norm()) < 0.01
    assert b.get(e.key, MODEL, "float32")[1] == "memory"  # promoted
    st = b.stats()
    assert st["tiers"]["disk"]["hits"] == 1 and st["tiers"]["memory"]["hits"] == 1
    assert st["tiers"]["memory"]["misses"] == 1 and st["hits"] == 2
    assert not list((tmp_path / "kv").glob("*/*.tmp"))


def test_corrupt_disk_file_is_dropped_and_recomputed(tmp_path, caplog):
    disk = DiskTier(tmp_path / "kv")
    store = ChunkKVStore([disk], CodecConfig(bits=4))
    e = make_entry(20)
    store.put(e)
    path = next((tmp_path / "kv").glob("*/*.kv"))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="ragloom.cache.chunk_kv"):
        assert store.get(e.key, MODEL, "float32") == (None, None)
    assert "corrupt" in caplog.text
    assert not path.exists()
    assert store.stats()["tiers"]["disk"]["corrupt"] == 1
    # the caller recomputes and stores again; now it hits
    store.put(e)
    assert store.get(e.key, MODEL, "float32")[1] == "disk"
    # a truncated file (e.g. a crash mid-copy by some other tool) is a miss too
    path.write_bytes(path.read_bytes()[:100])
    assert store.get(e.key, MODEL, "float32") == (None, None)
    assert store.stats()["tiers"]["disk"]["corrupt"] == 2


def test_disk_budget_evicts_least_recently_used(tmp_path):
    cfg = CodecConfig(bits=16)
    one = len(encode_entry(make_entry(10), cfg))
    disk = DiskTier(tmp_path / "kv", budget_bytes=3 * one)
    store = ChunkKVStore([disk], cfg)
    entries = [make_entry(10, seed=i) for i in range(4)]
    for i, e in enumerate(entries[:3]):
        store.put(e)
        p = next((tmp_path / "kv").glob(f"*/{e.key}.kv"))
        os.utime(p, (1000 + i, 1000 + i))  # deterministic ages
    disk._index = {}
    disk._bytes = 0
    disk._scan()  # pick the ages up as a restart would
    assert store.get(entries[0].key, MODEL, "float32")[1] == "disk"  # touched: now the newest
    store.put(entries[3])
    assert [store.contains(e.key) for e in entries] == [True, False, True, True]
    s = disk.stats()
    assert s["evictions"] == 1 and s["bytes"] <= 3 * one and s["entries"] == 3


# ---- isolation -----------------------------------------------------------------------------------


def test_entry_of_another_model_or_dtype_is_never_returned(tmp_path, caplog):
    mem, disk = MemoryTier(1 << 20), DiskTier(tmp_path / "kv")
    store = ChunkKVStore([mem, disk], CodecConfig(bits=8))
    e = make_entry(12)
    store.put(e)
    # a reader asking with the same key but another model or dtype (a mis-keyed caller) gets nothing
    with caplog.at_level(logging.WARNING):
        assert store.get(e.key, "other-model", "float32") == (None, None)
        assert store.get(e.key, MODEL, "bfloat16") == (None, None)
    assert store.stats()["tiers"]["memory"]["mismatches"] == 2
    assert store.stats()["tiers"]["disk"]["mismatches"] == 2
    # an entry stored under a key that is not its own (e.g. a copied file) is refused on read too
    other = make_entry(12, seed=3, model="other-model")
    (tmp_path / "kv" / e.key[:2] / f"{e.key}.kv").write_bytes(
        encode_entry(ChunkKV(e.key, other.token_ids, other.k, other.v, 1, "other-model", "float32"), CodecConfig()))
    mem.clear()
    assert store.get(e.key, MODEL, "float32") == (None, None)
    # and a bfloat16 entry under the same tokens has its own key and stays apart
    eb = make_entry(12, dtype=torch.bfloat16)
    assert eb.key != e.key
    store.put(eb)
    got, _ = store.get(eb.key, MODEL, "bfloat16")
    assert got.k.dtype == torch.bfloat16


# ---- Redis ---------------------------------------------------------------------------------------


def test_redis_tier_round_trip_and_promotion(tmp_path, redis_prefix):
    cfg = CodecConfig(bits=4, group_size=32, entropy=True)
    redis_tier = RedisTier(REDIS_URL, prefix=redis_prefix, ttl_s=600)
    replica_a = ChunkKVStore([MemoryTier(1 << 20), DiskTier(tmp_path / "a"), redis_tier], cfg)
    e = make_entry(50)
    replica_a.put(e)
    assert redis_tier.contains(e.key)
    assert redis_tier.usage()["entries"] == 1
    # another replica with empty memory and disk finds it in Redis and promotes it into both
    replica_b = ChunkKVStore(
        [MemoryTier(1 << 20), DiskTier(tmp_path / "b"), RedisTier(REDIS_URL, prefix=redis_prefix)], cfg)
    got, tier = replica_b.get(e.key, MODEL, "float32")
    assert tier == "redis" and got.token_ids == e.token_ids
    assert same_kv(got, replica_a.get(e.key, MODEL, "float32")[0])  # same KV whichever tier answered
    assert replica_b.tiers[1].contains(e.key) and replica_b.tiers[0].contains(e.key)
    assert replica_b.get(e.key, MODEL, "float32")[1] == "memory"
    replica_b.tiers[0].clear()
    assert replica_b.get(e.key, MODEL, "float32")[1] == "disk"
    st = replica_b.stats()["tiers"]["redis"]
    assert st["hits"] == 1 and st["bytes_read"] > 0 and st["available"] and st["errors"] == 0
    ttl = redis_tier._client.ttl(redis_prefix + e.key)
    assert 0 < ttl <= 600
    # a corrupt Redis value is dropped like a corrupt file
    redis_tier._client.set(redis_prefix + e.key, b"RLCE garbage")
    fresh = ChunkKVStore([RedisTier(REDIS_URL, prefix=redis_prefix)], cfg)
    assert fresh.get(e.key, MODEL, "float32") == (None, None)
    assert not redis_tier.contains(e.key) and fresh.stats()["tiers"]["redis"]["corrupt"] == 1
    replica_a.delete(e.key)
    replica_a.put(make_entry(5, seed=1))
    replica_a.clear()
    assert redis_tier.usage() == {"entries": 0, "bytes": 0}
    for s in (replica_a, replica_b, fresh):
        s.close()


def test_redis_down_is_a_miss_not_an_error(tmp_path, caplog):
    dead = RedisTier(DEAD_REDIS_URL, retry_interval_s=0.0)
    store = ChunkKVStore([MemoryTier(1 << 20), DiskTier(tmp_path / "kv"), dead], CodecConfig(bits=8))
    e = make_entry(10)
    # a dead Redis cannot stall a request: short socket timeouts and no client-side retries
    kwargs = dead._client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] <= 0.2 and kwargs["socket_timeout"] <= 1.0
    assert dead._client.connection_pool.connection_kwargs["retry"]._retries == 0
    with caplog.at_level(logging.WARNING, logger="ragloom.cache.chunk_kv"):
        store.put(e)  # memory and disk still get it
        assert store.get(e.key, MODEL, "float32")[1] == "memory"
        store.tiers[0].clear()
        store.tiers[1].clear()
        assert store.get(e.key, MODEL, "float32") == (None, None)  # redis errors -> miss
        assert store.get(e.key, MODEL, "float32") == (None, None)
        assert not store.contains(e.key)
        store.delete(e.key)
        store.clear()
    st = store.stats()
    assert st["redis_errors"] >= 4 and st["tiers"]["redis"]["outages"] == 1
    assert st["tiers"]["redis"]["available"] is False
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per call


def test_redis_outage_backs_off_then_recovers(redis_prefix, caplog):
    tier = RedisTier(DEAD_REDIS_URL, prefix=redis_prefix, retry_interval_s=60)
    store = ChunkKVStore([tier], CodecConfig(bits=8))
    e = make_entry(8)
    store.put(e)
    for _ in range(5):
        assert store.get(e.key, MODEL, "float32") == (None, None)
    st = tier.stats()
    assert st["errors"] == 1 and st["skipped"] == 5  # inside the back-off window Redis is not even tried
    # the server comes back (simulated by pointing the same tier at the live one) after the window
    import redis

    tier._client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.2, socket_timeout=1)
    tier._down_until = 0.0
    with caplog.at_level(logging.WARNING, logger="ragloom.cache.chunk_kv"):
        store.put(e)
    assert tier.available and "is back" in caplog.text
    assert store.get(e.key, MODEL, "float32")[1] == "redis"
    tier.close()


# ---- config and threads --------------------------------------------------------------------------


def test_from_settings_builds_the_tiers(tmp_path, monkeypatch, redis_prefix):
    monkeypatch.setenv("RAGLOOM_DATA_DIR", str(tmp_path / "data"))
    store = ChunkKVStore.from_settings(memory_bytes=1 << 20, codec=CodecConfig(bits=4, group_size=64))
    assert [t.name for t in store.tiers] == ["memory", "disk"]
    assert store.tiers[1].directory == tmp_path / "data" / "chunk_kv"
    assert store.codec_config == CodecConfig(bits=4, group_size=64)
    store = ChunkKVStore.from_settings(0, tmp_path / "d", REDIS_URL, redis_prefix=redis_prefix, redis_ttl_s=30)
    assert [t.name for t in store.tiers] == ["disk", "redis"]
    e = make_entry(6)
    store.put(e)
    assert store.get(e.key, MODEL, "float32")[1] == "disk"
    store.close()
    cfg = ChunkKVStoreConfig(memory_bytes=0, disk=False, redis_url=REDIS_URL, redis_prefix=redis_prefix)
    only_redis = ChunkKVStore.from_config(cfg)
    assert only_redis.get(e.key, MODEL, "float32")[1] == "redis"
    only_redis.close()


def test_threads_share_one_store(tmp_path, redis_prefix):
    size = make_entry(16).nbytes
    store = ChunkKVStore(
        [MemoryTier(6 * size), DiskTier(tmp_path / "kv", budget_bytes=200_000), RedisTier(REDIS_URL, prefix=redis_prefix)],
        CodecConfig(bits=8),
    )
    entries = [make_entry(16, seed=i) for i in range(24)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(60):
                e = entries[(n * 7 + i) % len(entries)]
                got, _ = store.get(e.key, MODEL, "float32")
                if got is None:
                    store.put(e)
                else:
                    assert got.token_ids == e.token_ids
                    assert float((got.k - e.k).norm() / e.k.norm()) < 0.01
                if i % 17 == 0:
                    store.delete(entries[(n + i) % len(entries)].key)
        except BaseException as ex:  # noqa: BLE001 - reported below
            errors.append(ex)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    st = store.stats()
    assert st["hits"] + st["misses"] == 6 * 60
    mem = st["tiers"]["memory"]
    assert mem["bytes"] <= 6 * size and mem["evictions"] > 0
    assert st["tiers"]["disk"]["bytes"] <= 200_000
    assert st["redis_errors"] == 0
    store.close()
