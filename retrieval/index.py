"""A collection's on-disk vector index: binary codes in RAM (faiss), int8 rows memory-mapped.

Layout of a folder:
    manifest.json          the commit point: names every file below + calibration + store version
    binary-<gen>.faissb    faiss binary index; ids are *slots* (rows of the int8 file)
    int8-<gen>.bin         (capacity, dim) int8 rescoring rows, np.memmap, row = slot

Slots are never reused between rebuilds: an upsert writes new rows at fresh slots and removes the
old slots from the faiss index, so rows a previously saved manifest points at are never
overwritten. That is what makes saves crash-safe with a single atomic step: new files are written
under new names (temp + fsync + os.replace), then the manifest is replaced the same way, and only
then are files no manifest names deleted. A crash anywhere before the manifest swap leaves the
previous manifest and all its files intact.

Kinds: "flat" = IndexBinaryIDMap(IndexBinaryFlat) (exact Hamming, remove_ids supported);
"ivf" = IndexBinaryIVF (binary k-means coarse quantizer, native add_with_ids/remove_ids).
IndexBinaryHNSW is not used for collections: it cannot remove ids, and collections need upsert
and delete (faiss #224/#879 are what mixing add/remove without ids produces).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np

from ragloom.errors import InvalidArgument
from ragloom.retrieval.quantize import Int8Quantizer, binarize

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Below this many vectors an exhaustive popcount scan is fast enough (~1 ms per 100k 48-B codes
# per core) and exact; above it an IVF bounds the scan.
AUTO_IVF_THRESHOLD = 200_000
KINDS = ("auto", "flat", "ivf")


def resolve_kind(requested: str, n: int) -> str:
    """The kind a build of n vectors uses for the requested one ("auto" -> flat or ivf by size)."""
    if requested == "auto":
        return "ivf" if n >= AUTO_IVF_THRESHOLD else "flat"
    return requested


def saved_kind(folder: Path) -> str | None:
    """The kind recorded in a saved index's manifest, or None without a readable one."""
    try:
        kind = json.loads((Path(folder) / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in KINDS else None


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        _fsync(f.fileno())
    os.replace(tmp, path)


# Binary k-means runs in float space over all training points; on a 2-core box 1024 lists x 40
# points each trains in seconds, 4000 lists on 1M points would take many minutes.
MAX_NLIST = 1024
TRAIN_POINTS_PER_LIST = 40


def ivf_nlist(n: int) -> int:
    # faiss guideline ~4*sqrt(n) lists; k-means needs >= 39 points per centroid.
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39 if n >= 39 else 1, MAX_NLIST))


def default_nprobe(nlist: int, n: int = 0) -> int:
    """Inverted lists an IVF search visits by default (n: vectors in the index; unused for now).

    An eighth of the lists, at least 32. Measured at 1M vectors, 1024 lists, oversample 100
    (benchmarks/retrieval_scale.py --data perturbed, recall@10 vs exact float): nprobe 32 -> 0.86,
    64 -> 0.885, 128 -> 0.91, 256 -> 0.93 (binary flat: 0.93). 128 reaches ~0.9 while scanning
    an eighth of the codes; the old 32 left recall at 0.86 whatever the oversample."""
    return min(nlist, max(32, nlist // 8))


def _new_binary(kind: str, dim: int, train_codes: np.ndarray | None) -> faiss.IndexBinary:
    if kind == "flat":
        # IDMap, not IDMap2: IDMap2's reverse hash map costs ~50 B/vector, more than the 48-B code.
        return faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(dim))
    nlist = ivf_nlist(0 if train_codes is None else len(train_codes))
    index: Any = faiss.index_binary_factory(dim, f"BIVF{nlist}")
    if train_codes is None or len(train_codes) == 0:
        raise InvalidArgument("an IVF index needs vectors to train on")
    sample = len(train_codes) if len(train_codes) <= nlist * TRAIN_POINTS_PER_LIST else nlist * TRAIN_POINTS_PER_LIST
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(train_codes), sample, replace=False)) if sample < len(train_codes) else slice(None)
    index.train(np.ascontiguousarray(train_codes[pick]))
    index.nprobe = default_nprobe(nlist, len(train_codes))
    return index


@dataclass
class SearchStats:
    candidates: int
    rescored: int


class VectorIndex:
    """Binary candidates + int8 rescoring for one collection, persisted in one folder."""

    def __init__(self, folder: Path, dim: int, kind: str = "auto", device: str = "cpu") -> None:
        if dim % 8:
            raise InvalidArgument(f"binary codes need a dimension divisible by 8, got {dim}")
        if kind not in KINDS:
            raise InvalidArgument(f"index kind must be one of {KINDS}, got {kind!r}")
        self.folder = Path(folder)
        self.dim = dim
        self.requested_kind = kind
        self.kind = resolve_kind(kind, 0)
        self.device = device
        self.gen = 0
        self.store_version = -1
        self.quantizer: Int8Quantizer | None = None
        self.calibrated_rows = 0
        self.next_slot = 0
        # Any: faiss's SWIG classes are declared as the IndexBinary base, which lacks the
        # subclass attributes (id_map, nprobe) used here.
        self.binary: Any = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(dim))
        self._int8_name: str | None = None
        self._int8: np.memmap | None = None
        self._gpu: Any = None  # lazily built device mirror (flat only)

    # ------------------------------------------------------------------ size

    @property
    def ntotal(self) -> int:
        return int(self.binary.ntotal)

    def memory_bytes(self) -> int:
        """RAM held by the binary index: codes + int64 ids (the int8 rows are memory-mapped)."""
        return self.ntotal * (self.dim // 8 + 8)

    # ------------------------------------------------------------------ building

    def _open_int8(self, name: str, capacity: int) -> None:
        path = self.folder / name
        if not path.exists() or path.stat().st_size < capacity * self.dim:
            with open(path, "ab") as f:
                f.truncate(max(capacity, 1) * self.dim)
        self._int8_name = name
        # reshape keeps the memmap subclass (and its flush); numpy's stubs say ndarray
        self._int8 = cast(np.memmap, np.memmap(path, dtype=np.int8, mode="r+").reshape(-1, self.dim))

    def _ensure_capacity(self, needed: int) -> None:
        assert self._int8 is not None and self._int8_name is not None
        if needed <= self._int8.shape[0]:
            return
        capacity = max(needed, 2 * self._int8.shape[0], 1024)
        self._int8.flush()
        self._int8 = None
        # Growing in place only appends rows; rows a saved manifest points at are unchanged.
        self._open_int8(self._int8_name, capacity)

    def build(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        """Replace everything: recalibrate int8 on these vectors, pick the kind, new files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        slots = np.asarray(slots, dtype=np.int64)
        self.gen += 1
        self.quantizer = Int8Quantizer.fit(vectors) if len(vectors) else None
        self.calibrated_rows = len(vectors)
        codes = binarize(vectors) if len(vectors) else np.zeros((0, self.dim // 8), np.uint8)
        self.kind = resolve_kind(self.requested_kind, len(vectors))
        self.binary = _new_binary(self.kind, self.dim, codes if self.kind == "ivf" else None)
        self.next_slot = int(slots.max()) + 1 if len(slots) else 0
        self._int8 = None
        self._open_int8(f"int8-{self.gen}.bin", max(self.next_slot, 1024))
        if len(vectors):
            self.binary.add_with_ids(codes, slots)
            assert self._int8 is not None
            self._int8[slots] = self.quantizer.encode(vectors)  # type: ignore[union-attr]
        self._gpu = None

    def needs_recalibration(self) -> bool:
        """Ranges fitted on few rows go stale as a collection grows: rebuild when it doubles."""
        return self.ntotal >= 2 * max(self.calibrated_rows, 50)

    def add(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if self.quantizer is None:
            self.build(slots, vectors)
            return
        if len(slots) == 0:
            return
        self._ensure_capacity(int(slots.max()) + 1)
        self.remove(slots)  # upsert of an id already present replaces it
        assert self._int8 is not None
        self._int8[slots] = self.quantizer.encode(vectors)
        self.binary.add_with_ids(binarize(vectors), slots)
        self.next_slot = max(self.next_slot, int(slots.max()) + 1)
        self._gpu = None

    def remove(self, slots: np.ndarray) -> int:
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots) == 0 or self.ntotal == 0:
            return 0
        self._gpu = None
        return int(self.binary.remove_ids(faiss.IDSelectorBatch(slots)))

    # ------------------------------------------------------------------ search

    def binary_search(self, query_codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top-n: (distances int32, slots int64; -1 = fewer than n)."""
        n = max(1, min(n, self.ntotal))
        if self.device.startswith("cuda") and self.kind == "flat":
            return self._device_search(query_codes, n)
        return self.binary.search(np.ascontiguousarray(query_codes), n)

    def _device_search(self, query_codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        from ragloom.retrieval import gpu

        if self._gpu is None:
            ids = faiss.vector_to_array(self.binary.id_map).astype(np.int64)
            # The IDMap's `index` is typed as the IndexBinary base, which has no `xb`: downcast.
            flat: Any = faiss.downcast_IndexBinary(self.binary.index)
            codes = faiss.vector_to_array(flat.xb).reshape(-1, self.dim // 8)
            if gpu.has_faiss_gpu():
                res = faiss.StandardGpuResources()
                g = faiss.GpuIndexBinaryFlat(res, self.dim)
                g.add(codes)
                self._gpu = ("faiss", g, ids, res)
            else:
                self._gpu = ("torch", gpu.TorchBinaryFlat(codes, ids, self.device))
        if self._gpu[0] == "faiss":
            d, i = self._gpu[1].search(query_codes, n)
            return d, np.where(i >= 0, self._gpu[2][np.maximum(i, 0)], -1)
        return self._gpu[1].search(query_codes, n)

    def int8_rows(self, slots: np.ndarray) -> np.ndarray:
        assert self._int8 is not None
        return np.asarray(self._int8[np.asarray(slots, dtype=np.int64)])

    def rescore(self, query: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Float query against dequantized int8 rows of these slots -> (len(slots),) scores."""
        if self.quantizer is None or len(slots) == 0:
            return np.zeros(len(slots), np.float32)
        # Reading rows in slot order turns random page faults into a forward sweep.
        order = np.argsort(slots)
        rows = self.int8_rows(np.asarray(slots)[order])
        s = np.empty(len(slots), np.float32)
        s[order] = self.quantizer.scores(query, rows)[0]
        return s

    # ------------------------------------------------------------------ persistence

    def save(self, store_version: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        assert self._int8 is not None or self.quantizer is None
        self.gen += 1
        faiss_name = f"binary-{self.gen}.faissb"
        atomic_write_bytes(self.folder / faiss_name, faiss.serialize_index_binary(self.binary).tobytes())
        if self._int8 is not None:
            self._int8.flush()
            fd = os.open(self.folder / str(self._int8_name), os.O_RDONLY)
            try:
                _fsync(fd)
            finally:
                os.close(fd)
        manifest = {
            "format": FORMAT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "requested_kind": self.requested_kind,
            "gen": self.gen,
            "faiss": faiss_name,
            "int8": self._int8_name,
            "quantizer": self.quantizer.to_dict() if self.quantizer else None,
            "calibrated_rows": self.calibrated_rows,
            "next_slot": self.next_slot,
            "store_version": store_version,
            "ntotal": self.ntotal,
        }
        atomic_write_bytes(self.folder / MANIFEST, json.dumps(manifest).encode())
        _fsync_dir(self.folder)
        self.store_version = store_version
        self._remove_unreferenced(manifest)

    def _remove_unreferenced(self, manifest: dict) -> None:
        keep = {MANIFEST, manifest["faiss"], manifest["int8"]}
        for p in self.folder.iterdir():
            if p.name not in keep and (p.name.startswith(("binary-", "int8-", "."))):
                p.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> VectorIndex | None:
        """The last saved state, or None when there is none (or it is unreadable)."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            if manifest.get("format") != FORMAT_VERSION:
                return None
            self = cls(folder, manifest["dim"], manifest["requested_kind"], device)
            self.kind = manifest["kind"]
            self.gen = manifest["gen"]
            data = np.fromfile(folder / manifest["faiss"], dtype=np.uint8)
            self.binary = faiss.deserialize_index_binary(data)
            if self.kind == "ivf":
                self.binary.nprobe = default_nprobe(int(self.binary.nlist), self.ntotal)
            q = manifest["quantizer"]
            self.quantizer = Int8Quantizer.from_dict(q) if q else None
            self.calibrated_rows = manifest["calibrated_rows"]
            self.next_slot = manifest["next_slot"]
            self.store_version = manifest["store_version"]
            if manifest["int8"]:
                self._open_int8(manifest["int8"], max(self.next_slot, 1))
            if self.ntotal != manifest["ntotal"]:
                return None
            self._remove_unreferenced(manifest)
            return self
        except (OSError, ValueError, KeyError, RuntimeError):
            return None

    def close(self) -> None:
        if self._int8 is not None:
            self._int8.flush()
        self._int8 = None
        self._gpu = None
