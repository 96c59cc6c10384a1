"""Content-addressed store of chunk KV: memory (GPU or CPU) -> local disk -> Redis.

A chunk's KV (``k, v: [num_layers, num_tokens, num_kv_heads, head_dim]``, K post-RoPE at positions
``start_pos ..``) is keyed by ``chunk_key(model_id, dtype, token_ids, context)``. Entries record their
model id and dtype, and the store checks both on every read, so a KV computed by another model or
in another dtype is never returned, whatever the key says.

Tiers, looked up in the order given; a hit in a lower tier is copied into the tiers above it:

- ``MemoryTier``: decoded tensors on one device, LRU by bytes within a byte budget (hits need no decode).
- ``DiskTier``: one file per key under a directory; atomic writes (temp file + ``os.replace``),
  checksummed by the codec; a damaged file is detected on read, deleted, logged and treated as a
  miss (so the caller recomputes it); survives restarts; optional byte budget, LRU by mtime.
- ``RedisTier``: shared between replicas; optional TTL. When Redis is down the tier logs one warning
  per outage, counts errors, answers misses and skips writes; it never raises, and after a failure
  it leaves Redis alone for ``retry_interval_s`` so a dead server does not stall requests.

Disk and Redis hold the codec's bytes (``cache.codec``) inside a small envelope carrying the key,
model id, dtype, start position and token ids. With a lossy codec, the memory tier by default holds
the codec's reconstruction too (``consistent_memory``), so a hit returns the same KV from any tier.

Writes are write-through to every tier; a full tier evicts, it never fails. All classes are
thread-safe. Tensors of returned entries are shared with the memory tier: treat them as read-only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from ragloom.cache.codec import CodecConfig, CorruptEntry, decode, encode
from ragloom.errors import InvalidArgument

log = logging.getLogger(__name__)

__all__ = [
    "ChunkKV",
    "ChunkKVStore",
    "ChunkKVStoreConfig",
    "CorruptEntry",
    "DiskTier",
    "MemoryTier",
    "RedisTier",
    "chunk_key",
    "dtype_name",
]


def dtype_name(dtype: torch.dtype | str) -> str:
    """'float32' for torch.float32 (the spelling keys and entries use)."""
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def chunk_key(model_id: str, dtype: str | torch.dtype, token_ids: Sequence[int], context: str = "") -> str:
    """sha256 hex of (model id, dtype, context tag, token ids). ``context`` names what the chunk was
    prefilled after (e.g. a hash of the system prompt's tokens; "" for BOS only)."""
    h = hashlib.sha256(b"ragloom/chunk-kv/1\0")
    for part in (model_id, dtype_name(dtype), context):
        raw = part.encode("utf-8")
        h.update(struct.pack("<Q", len(raw)))
        h.update(raw)
    ids = list(token_ids)
    h.update(struct.pack("<Q", len(ids)))
    h.update(struct.pack(f"<{len(ids)}q", *ids))
    return h.hexdigest()


@dataclass
class ChunkKV:
    key: str
    token_ids: list[int]
    k: torch.Tensor  # [num_layers, num_tokens, num_kv_heads, head_dim], post-RoPE at start_pos..
    v: torch.Tensor
    start_pos: int
    model_id: str
    dtype: str  # 'float32', 'bfloat16', ... (the runner's KV dtype)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def validate(self) -> None:
        if self.k.dim() != 4 or self.v.dim() != 4 or self.k.shape[:2] != self.v.shape[:2]:
            raise InvalidArgument(f"chunk KV shapes k {tuple(self.k.shape)} / v {tuple(self.v.shape)} are not "
                                  "[layers, tokens, kv_heads, head_dim] alike")
        if self.k.shape[1] != len(self.token_ids):
            raise InvalidArgument(f"chunk KV holds {self.k.shape[1]} tokens but {len(self.token_ids)} token ids")
        if dtype_name(self.k.dtype) != self.dtype or dtype_name(self.v.dtype) != self.dtype:
            raise InvalidArgument(f"chunk KV tensors are {dtype_name(self.k.dtype)}, the entry says {self.dtype}")
        if not self.model_id:
            raise InvalidArgument("chunk KV needs a model id")


# ---- the envelope disk and Redis store -----------------------------------------------------------

_ENTRY_MAGIC = b"RLCE"
_ENTRY_VERSION = 1
_ENTRY_HEAD = struct.Struct("<4sBxxxII")  # magic, version, meta length, crc32(meta)


def encode_entry(entry: ChunkKV, config: CodecConfig) -> bytes:
    meta = json.dumps(
        {"key": entry.key, "model_id": entry.model_id, "dtype": entry.dtype, "start_pos": entry.start_pos,
         "token_ids": list(entry.token_ids)},
        separators=(",", ":"),
    ).encode()
    head = _ENTRY_HEAD.pack(_ENTRY_MAGIC, _ENTRY_VERSION, len(meta), zlib.crc32(meta))
    return b"".join([head, meta, encode(entry.k, entry.v, config)])


def decode_entry(blob: bytes, device: torch.device | str | None = None) -> ChunkKV:
    """Raises CorruptEntry for anything damaged (the codec checksums the KV part)."""
    if len(blob) < _ENTRY_HEAD.size:
        raise CorruptEntry(f"chunk KV entry truncated ({len(blob)} bytes)")
    magic, version, meta_len, crc = _ENTRY_HEAD.unpack_from(blob)
    if magic != _ENTRY_MAGIC or version != _ENTRY_VERSION:
        raise CorruptEntry(f"not a chunk KV entry (magic {magic!r}, version {version})")
    meta_raw = blob[_ENTRY_HEAD.size : _ENTRY_HEAD.size + meta_len]
    if len(meta_raw) != meta_len or zlib.crc32(meta_raw) != crc:
        raise CorruptEntry("chunk KV entry metadata checksum mismatch")
    try:
        meta = json.loads(meta_raw)
        k, v = decode(memoryview(blob)[_ENTRY_HEAD.size + meta_len :], device=device)
        entry = ChunkKV(key=str(meta["key"]), token_ids=[int(t) for t in meta["token_ids"]], k=k, v=v,
                        start_pos=int(meta["start_pos"]), model_id=str(meta["model_id"]), dtype=str(meta["dtype"]))
    except CorruptEntry:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptEntry(f"chunk KV entry metadata unreadable: {e}") from e
    if k.shape[1] != len(entry.token_ids) or dtype_name(k.dtype) != entry.dtype:
        raise CorruptEntry("chunk KV entry metadata does not match its tensors")
    return entry


# ---- tiers ---------------------------------------------------------------------------------------


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    puts: int = 0
    evictions: int = 0
    errors: int = 0
    corrupt: int = 0
    mismatches: int = 0
    rejected: int = 0  # entries larger than the whole budget
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


class MemoryTier:
    """Decoded entries on one device, LRU by bytes."""

    kind: Literal["memory"] = "memory"

    def __init__(self, budget_bytes: int, device: torch.device | str = "cpu", name: str = "memory") -> None:
        if budget_bytes < 0:
            raise InvalidArgument("memory tier budget must be >= 0 bytes")
        self.name = name
        self.budget_bytes = int(budget_bytes)
        self.device = torch.device(device)
        self._entries: OrderedDict[str, ChunkKV] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.counters = _Counters()

    def get(self, key: str) -> ChunkKV | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, entry: ChunkKV) -> None:
        size = entry.nbytes
        if size > self.budget_bytes:
            with self._lock:
                self.counters.rejected += 1
            return
        if entry.k.device != self.device or entry.v.device != self.device:
            entry = ChunkKV(entry.key, list(entry.token_ids), entry.k.to(self.device), entry.v.to(self.device),
                            entry.start_pos, entry.model_id, entry.dtype)
        with self._lock:
            old = self._entries.pop(entry.key, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._entries and self._bytes + size > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.counters.evictions += 1
            self._entries[entry.key] = entry
            self._bytes += size
            self.counters.puts += 1

    def contains(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def delete(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.nbytes
            return entry is not None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": self.kind, "device": str(self.device), "entries": len(self._entries),
                    "bytes": self._bytes, "budget_bytes": self.budget_bytes, **self.counters.as_dict()}


_SAFE_KEY = re.compile(r"[0-9A-Za-z_.-]{1,200}")


def _check_key(key: str) -> str:
    if not _SAFE_KEY.fullmatch(key) or key.startswith("."):
        raise InvalidArgument(f"chunk KV key {key[:80]!r} is not a plain token (use chunk_key())")
    return key


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that is writing temp file `tmp_name` (``<key>.kv.<pid>-<uuid>.tmp``) on
    this host may still be running; True when the name carries no pid (written by an older version)."""
    m = re.search(r"\.(\d+)-[0-9a-f]{32}\.tmp$", tmp_name)
    if m is None:
        return True
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive under another user / not a pid: leave it
        return True
    return True


class DiskTier:
    """One file per key (``<dir>/<key[:2]>/<key>.kv``); atomic writes; LRU by mtime within a budget."""

    kind: Literal["disk"] = "disk"
    SUFFIX = ".kv"
    STALE_TMP_S = 3600.0

    def __init__(self, directory: str | os.PathLike[str], budget_bytes: int | None = None, name: str = "disk",
                 fsync: bool = False) -> None:
        self.name = name
        self.directory = Path(directory)
        self.budget_bytes = budget_bytes
        self.fsync = fsync
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._index: dict[str, tuple[int, float]] = {}  # key -> (size, last use)
        self._bytes = 0
        self.counters = _Counters()
        self._scan()

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.directory / key[:2] / (key + self.SUFFIX)

    def _scan(self) -> None:
        now = time.time()
        for path in self.directory.glob("*/*"):
            try:
                st = path.stat()
            except OSError:
                continue
            if path.name.endswith(".tmp"):
                # left behind by a crash (kill -9 mid-write): the writer's pid is in the name, so a
                # dead writer's file goes now; an unknown one only once no live writer can own it
                if not _writer_alive(path.name) or now - st.st_mtime > self.STALE_TMP_S:
                    path.unlink(missing_ok=True)
            elif path.name.endswith(self.SUFFIX):
                self._index[path.name[: -len(self.SUFFIX)]] = (st.st_size, st.st_mtime)
                self._bytes += st.st_size
        log.info("chunk KV disk tier %s: %d entries, %.1f MiB", self.directory, len(self._index), self._bytes / 2**20)

    def _forget(self, key: str) -> None:
        old = self._index.pop(key, None)
        if old is not None:
            self._bytes -= old[0]

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._forget(key)
            return None
        except OSError as e:
            log.warning("chunk KV disk tier: cannot read %s: %s", path, e)
            with self._lock:
                self.counters.errors += 1
            return None
        now = time.time()
        try:
            os.utime(path, (now, now))  # mtime is the LRU clock, also across restarts
        except OSError:
            pass
        with self._lock:
            self._forget(key)
            self._index[key] = (len(data), now)
            self._bytes += len(data)
        return data

    def put_bytes(self, key: str, blob: bytes) -> None:
        path = self._path(key)
        if self.budget_bytes is not None and len(blob) > self.budget_bytes:
            with self._lock:
                self.counters.rejected += 1
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(blob)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            log.warning("chunk KV disk tier: cannot write %s: %s", path, e)
            tmp.unlink(missing_ok=True)
            with self._lock:
                self.counters.errors += 1
            return
        with self._lock:
            self._forget(key)
            self._index[key] = (len(blob), time.time())
            self._bytes += len(blob)
            self.counters.puts += 1
            self._evict_locked(keep=key)

    def _evict_locked(self, keep: str) -> None:
        if self.budget_bytes is None or self._bytes <= self.budget_bytes:
            return
        for key, _ in sorted(self._index.items(), key=lambda kv: kv[1][1]):
            if self._bytes <= self.budget_bytes:
                break
            if key == keep:
                continue
            self._path(key).unlink(missing_ok=True)
            self._forget(key)
            self.counters.evictions += 1

    def contains(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> bool:
        path = self._path(key)
        existed = path.exists()
        path.unlink(missing_ok=True)
        with self._lock:
            self._forget(key)
        return existed

    def clear(self) -> None:
        with self._lock:
            for path in self.directory.glob(f"*/*{self.SUFFIX}"):
                path.unlink(missing_ok=True)
            self._index.clear()
            self._bytes = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": self.kind, "directory": str(self.directory), "entries": len(self._index),
                    "bytes": self._bytes, "budget_bytes": self.budget_bytes, **self.counters.as_dict()}


class RedisTier:
    """A Redis shared by replicas. Never raises for Redis trouble: counts it, logs once per outage,
    answers a miss / skips the write, and leaves Redis alone for retry_interval_s after a failure."""

    kind: Literal["redis"] = "redis"

    def __init__(self, url: str, prefix: str = "ragloom:chunk_kv:", ttl_s: float | None = None, name: str = "redis",
                 connect_timeout_s: float = 0.2, socket_timeout_s: float = 1.0, retry_interval_s: float = 2.0) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.name = name
        self.url = url
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.retry_interval_s = retry_interval_s
        # connection trouble is an outage (back off); anything else Redis says is one failed call
        self._outage_errors: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        self._logged_errors: set[str] = set()
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout_s, socket_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
        )
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down = False
        self.counters = _Counters(extra={"skipped": 0, "outages": 0, "bytes_read": 0, "bytes_written": 0})

    def _name(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def _call(self, op: str, fn, default):
        with self._lock:
            if self._down and time.monotonic() < self._down_until:
                self.counters.extra["skipped"] += 1
                return default
        try:
            result = fn()
        except self._outage_errors as e:
            with self._lock:
                self.counters.errors += 1
                self._down_until = time.monotonic() + self.retry_interval_s
                if not self._down:
                    self._down = True
                    self.counters.extra["outages"] += 1
                    log.warning("chunk KV Redis tier %s unavailable (%s: %s: %s); serving from the other tiers, "
                                "retrying every %.0fs", _redact(self.url), op, type(e).__name__, e,
                                self.retry_interval_s)
            return default
        except self._redis_errors as e:
            with self._lock:
                self.counters.errors += 1
                first = type(e).__name__ not in self._logged_errors
                self._logged_errors.add(type(e).__name__)
            (log.warning if first else log.debug)("chunk KV Redis tier %s: %s failed: %s: %s",
                                                  _redact(self.url), op, type(e).__name__, e)
            return default
        with self._lock:
            if self._down:
                self._down = False
                log.warning("chunk KV Redis tier %s is back", _redact(self.url))
        return result

    @property
    def available(self) -> bool:
        with self._lock:
            return not self._down

    def get_bytes(self, key: str) -> bytes | None:
        name = self._name(key)
        data = self._call("get", lambda: self._client.get(name), None)
        if data is not None:
            with self._lock:
                self.counters.extra["bytes_read"] += len(data)
        return data

    def put_bytes(self, key: str, blob: bytes) -> None:
        name = self._name(key)
        ex = None if self.ttl_s is None else max(1, int(round(self.ttl_s)))
        if self._call("set", lambda: self._client.set(name, blob, ex=ex), None):
            with self._lock:
                self.counters.puts += 1
                self.counters.extra["bytes_written"] += len(blob)

    def contains(self, key: str) -> bool:
        name = self._name(key)
        return bool(self._call("exists", lambda: self._client.exists(name), 0))

    def delete(self, key: str) -> bool:
        name = self._name(key)
        return bool(self._call("delete", lambda: self._client.delete(name), 0))

    def clear(self) -> None:
        """Delete every key under this tier's prefix (SCAN, not KEYS)."""
        def run() -> int:
            n, batch = 0, []
            for name in self._client.scan_iter(match=_glob_escape(self.prefix) + "*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    n += self._client.delete(*batch)
                    batch = []
            if batch:
                n += self._client.delete(*batch)
            return n
        self._call("clear", run, 0)

    def usage(self) -> dict[str, int] | None:
        """Entries and bytes under the prefix, by scanning (an admin call, not for the hot path)."""
        def run() -> dict[str, int]:
            n = size = 0
            for name in self._client.scan_iter(match=_glob_escape(self.prefix) + "*", count=500):
                n += 1
                size += int(self._client.strlen(name))
            return {"entries": n, "bytes": size}
        return self._call("usage", run, None)

    def close(self) -> None:
        self._client.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": self.kind, "url": _redact(self.url), "prefix": self.prefix, "available": not self._down,
                    **self.counters.as_dict()}


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)


Tier = MemoryTier | DiskTier | RedisTier


# ---- the store -----------------------------------------------------------------------------------


class ChunkKVStore:
    """Tiers in lookup order (usually memory -> disk -> Redis); write-through ``put``; promotion on hit."""

    def __init__(self, tiers: Sequence[Tier], codec_config: CodecConfig | None = None,
                 device: torch.device | str | None = None, consistent_memory: bool = True) -> None:
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"chunk KV tier names must differ: {names}")
        self.tiers = list(tiers)
        self.codec_config = codec_config or CodecConfig()
        memory = [t for t in self.tiers if isinstance(t, MemoryTier)]
        self.device = torch.device(device) if device is not None else (memory[0].device if memory else torch.device("cpu"))
        self.consistent_memory = consistent_memory
        self._has_bytes = any(not isinstance(t, MemoryTier) for t in self.tiers)
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    # -- reads --

    def get(self, key: str, model_id: str, dtype: str | torch.dtype) -> tuple[ChunkKV | None, str | None]:
        """The entry for key if some tier holds one made by model_id in dtype, and the tier's name."""
        dtype = dtype_name(dtype)
        for i, tier in enumerate(self.tiers):
            blob: bytes | None = None
            if isinstance(tier, MemoryTier):
                entry = tier.get(key)
            else:
                blob = tier.get_bytes(key)
                entry = None if blob is None else self._decode(tier, key, blob)
            if entry is not None and not self._matches(tier, entry, key, model_id, dtype):
                entry = None
            with tier._lock:
                if entry is None:
                    tier.counters.misses += 1
                else:
                    tier.counters.hits += 1
            if entry is None:
                continue
            for upper in self.tiers[:i]:
                if isinstance(upper, MemoryTier):
                    upper.put(entry)
                elif blob is not None:
                    upper.put_bytes(key, blob)
                else:  # a memory hit below a byte tier (unusual order): encode for it
                    upper.put_bytes(key, encode_entry(entry, self.codec_config))
            with self._lock:
                self._hits += 1
            return entry, tier.name
        with self._lock:
            self._misses += 1
        return None, None

    def _decode(self, tier: DiskTier | RedisTier, key: str, blob: bytes) -> ChunkKV | None:
        try:
            return decode_entry(blob, device=self.device)
        except CorruptEntry as e:
            log.warning("chunk KV %s tier: entry %s is corrupt (%s); dropped, it will be recomputed", tier.name, key, e)
            tier.delete(key)
            with tier._lock:
                tier.counters.corrupt += 1
            return None

    @staticmethod
    def _matches(tier: Tier, entry: ChunkKV, key: str, model_id: str, dtype: str) -> bool:
        if entry.key == key and entry.model_id == model_id and entry.dtype == dtype:
            return True
        log.warning("chunk KV %s tier: entry %s belongs to model %r/%s (or key %s), not %r/%s; not used",
                    tier.name, key, entry.model_id, entry.dtype, entry.key, model_id, dtype)
        with tier._lock:
            tier.counters.mismatches += 1
        return False

    def contains(self, key: str) -> bool:
        return any(t.contains(key) for t in self.tiers)

    # -- writes --

    def put(self, entry: ChunkKV) -> None:
        """Write-through to every tier. Memory keeps tensors, disk and Redis the codec's bytes."""
        entry.validate()
        _check_key(entry.key)
        blob = encode_entry(entry, self.codec_config) if self._has_bytes else None
        for tier in self.tiers:
            if isinstance(tier, MemoryTier):
                if blob is not None and self.consistent_memory:
                    tier.put(decode_entry(blob, device=tier.device))
                else:
                    tier.put(entry)
            else:
                assert blob is not None
                tier.put_bytes(entry.key, blob)

    def delete(self, key: str) -> bool:
        return any([t.delete(key) for t in self.tiers])

    def clear(self) -> None:
        for t in self.tiers:
            t.clear()

    def stats(self) -> dict[str, Any]:
        tiers = {t.name: t.stats() for t in self.tiers}
        with self._lock:
            out: dict[str, Any] = {"hits": self._hits, "misses": self._misses}
        out["redis_errors"] = sum(s["errors"] for s in tiers.values() if s["kind"] == "redis")
        out["codec"] = {"bits": self.codec_config.bits, "group_size": self.codec_config.group_size,
                        "entropy": self.codec_config.entropy}
        out["tiers"] = tiers
        return out

    def close(self) -> None:
        for t in self.tiers:
            if isinstance(t, RedisTier):
                t.close()

    # -- construction --

    @classmethod
    def from_config(cls, config: ChunkKVStoreConfig, data_dir: str | os.PathLike[str] | None = None) -> ChunkKVStore:
        tiers: list[Tier] = []
        if config.memory_bytes > 0:
            tiers.append(MemoryTier(config.memory_bytes, device=config.memory_device))
        if config.disk:
            if config.disk_dir is not None:
                directory = Path(config.disk_dir)
            else:
                from ragloom.config import default_data_dir

                directory = Path(data_dir if data_dir is not None else default_data_dir()) / "chunk_kv"
            tiers.append(DiskTier(directory, budget_bytes=config.disk_bytes))
        if config.redis_url:
            tiers.append(RedisTier(config.redis_url, prefix=config.redis_prefix, ttl_s=config.redis_ttl_s,
                                   connect_timeout_s=config.redis_connect_timeout_s,
                                   socket_timeout_s=config.redis_socket_timeout_s))
        codec = CodecConfig(bits=config.codec_bits, group_size=config.codec_group_size, entropy=config.codec_entropy)
        return cls(tiers, codec, device=config.memory_device)

    @classmethod
    def from_settings(cls, memory_bytes: int = 512 * 2**20, disk_dir: str | os.PathLike[str] | None = None,
                      redis_url: str | None = None, codec: CodecConfig | None = None, *,
                      data_dir: str | os.PathLike[str] | None = None, **more: Any) -> ChunkKVStore:
        """Shorthand: ``from_settings(memory_bytes, disk_dir, redis_url, CodecConfig(...))``; any other
        ChunkKVStoreConfig field by keyword."""
        codec = codec or CodecConfig()
        cfg = ChunkKVStoreConfig(memory_bytes=memory_bytes, disk_dir=disk_dir, redis_url=redis_url,
                                 codec_bits=codec.bits, codec_group_size=codec.group_size,
                                 codec_entropy=codec.entropy, **more)
        return cls.from_config(cfg, data_dir=data_dir)


class ChunkKVStoreConfig(BaseModel):
    """Chunk-KV store settings (fit for embedding in the server's settings)."""

    memory_bytes: int = Field(512 * 2**20, ge=0, description="memory tier budget; 0 = no memory tier")
    memory_device: str = Field("cpu", description="where the memory tier keeps tensors: cpu, cuda, cuda:1, ...")
    disk: bool = Field(True, description="use a disk tier")
    disk_dir: Path | None = Field(None, description="default: <data dir>/chunk_kv")
    disk_bytes: int | None = Field(None, ge=0, description="disk tier budget (LRU by mtime); None = unbounded")
    redis_url: str | None = Field(None, description="redis://host:port/db for a tier shared by replicas; None = none")
    redis_prefix: str = "ragloom:chunk_kv:"
    redis_ttl_s: float | None = Field(None, gt=0, description="expiry of Redis entries; None = none (use Redis maxmemory-policy)")
    redis_connect_timeout_s: float = Field(0.2, gt=0)
    redis_socket_timeout_s: float = Field(1.0, gt=0)
    codec_bits: Literal[16, 8, 4, 2] = 8
    codec_group_size: int = Field(32, ge=1, le=65536)
    codec_entropy: bool = False
