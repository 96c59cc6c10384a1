"""VectorIndex + two-stage search against brute force; upsert, delete, persistence, crash-safety."""

from __future__ import annotations

import numpy as np
import pytest

import ragloom.retrieval.index as index_mod
from ragloom.retrieval.index import VectorIndex
from ragloom.retrieval.quantize import binarize, hamming
from ragloom.retrieval.search import matches, search


def _unit(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def built(tmp_path):
    x = _unit(400)
    idx = VectorIndex(tmp_path / "ix", 64, "flat")
    idx.build(np.arange(400), x)
    return idx, x


def test_binary_search_equals_brute_force_hamming(built):
    idx, x = built
    q = _unit(5, seed=9)
    d, ids = idx.binary_search(binarize(q), 400)
    ref = hamming(binarize(q), binarize(x))
    assert (np.sort(ref, axis=1) == d).all()
    assert (np.take_along_axis(ref, ids, axis=1) == d).all()


def test_rescored_search_equals_brute_force_int8_when_scanning_everything(built):
    idx, x = built
    q = _unit(1, seed=3)[0]
    hits = search(idx, q, k=10, oversample=40)  # 400 candidates = every vector
    brute = idx.quantizer.scores(q, idx.quantizer.encode(x))[0]
    assert [h.slot for h in hits] == list(np.argsort(-brute, kind="stable")[:10])
    assert np.allclose([h.score for h in hits], np.sort(brute)[::-1][:10], atol=1e-5)
    # ... and int8 scores are close to the exact float ones.
    assert np.allclose([h.score for h in hits], (x @ q)[[h.slot for h in hits]], atol=0.02)


def test_ivf_kind_finds_exact_neighbours_with_enough_probes(tmp_path):
    x = _unit(4000, seed=1)
    idx = VectorIndex(tmp_path / "ivf", 64, "ivf")
    idx.build(np.arange(4000), x)
    assert idx.kind == "ivf"
    idx.binary.nprobe = idx.binary.nlist  # all lists -> exact
    q = x[17] + 0.01
    assert search(idx, q, k=1)[0].slot == 17
    idx.remove(np.array([17]))
    assert search(idx, q, k=1)[0].slot != 17


def test_upsert_replaces_and_delete_removes(built):
    idx, x = built
    q = _unit(1, seed=11)[0]
    idx.add(np.array([400]), q[None])  # a new slot holding the query itself
    assert search(idx, q, k=1)[0].slot == 400
    idx.remove(np.array([400]))
    assert idx.ntotal == 400
    assert all(h.slot != 400 for h in search(idx, q, k=10, oversample=40))
    # Re-adding an existing slot replaces it (no duplicates).
    idx.add(np.array([5]), q[None])
    assert idx.ntotal == 400
    hits = search(idx, q, k=3)
    assert hits[0].slot == 5 and hits[1].slot != 5


def test_growth_beyond_capacity_keeps_rows(built):
    idx, x = built
    y = _unit(3000, seed=4)
    idx.add(np.arange(400, 3400), y)
    assert idx.ntotal == 3400
    assert search(idx, y[2999], k=1)[0].slot == 3399
    assert search(idx, x[0], k=1)[0].slot == 0


def test_save_and_load_gives_same_results(built, tmp_path):
    idx, x = built
    idx.add(np.array([400]), _unit(1, seed=2))
    idx.save(store_version=7)
    q = _unit(3, seed=6)
    before = [search(idx, qq, k=5) for qq in q]
    idx.close()
    again = VectorIndex.load(tmp_path / "ix")
    assert again is not None and again.store_version == 7 and again.ntotal == 401
    assert [search(again, qq, k=5) for qq in q] == before


def test_crash_during_save_leaves_previous_index_loadable(built, tmp_path, monkeypatch):
    idx, x = built
    idx.save(store_version=1)
    q = _unit(1, seed=8)[0]
    before = search(idx, q, k=5)
    # Change the index, then fail the save at each fsync in turn: after the new faiss file is
    # written (before the manifest) and while the manifest temp is written.
    idx.add(np.arange(400, 450), _unit(50, seed=12))
    idx.remove(np.arange(0, 100))
    for fail_at in (1, 2, 3):
        calls = {"n": 0}
        real = index_mod._fsync

        def flaky(fd: int, fail_at: int = fail_at, calls: dict = calls, real=real) -> None:
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise OSError("disk died mid-save")
            real(fd)

        monkeypatch.setattr(index_mod, "_fsync", flaky)
        with pytest.raises(OSError):
            idx.save(store_version=2)
        monkeypatch.setattr(index_mod, "_fsync", real)
        old = VectorIndex.load(tmp_path / "ix")
        assert old is not None and old.store_version == 1 and old.ntotal == 400
        assert search(old, q, k=5) == before
        old.close()
    # A later successful save supersedes it.
    idx.save(store_version=2)
    new = VectorIndex.load(tmp_path / "ix")
    assert new is not None and new.store_version == 2 and new.ntotal == 350


def test_filter_grows_candidates_until_k_survive(built):
    idx, x = built
    q = _unit(1, seed=21)[0]
    allowed = {3, 77, 201, 333}  # rare: most binary candidates are rejected
    calls = []

    def keep(slots: np.ndarray) -> np.ndarray:
        calls.append(len(slots))
        return np.isin(slots, list(allowed))

    hits = search(idx, q, k=3, oversample=2, keep=keep)
    brute = idx.quantizer.scores(q, idx.quantizer.encode(x[sorted(allowed)]))[0]
    want = [sorted(allowed)[i] for i in np.argsort(-brute)[:3]]
    assert [h.slot for h in hits] == want
    assert len(calls) > 1  # it had to grow


def test_metadata_filter_semantics():
    md = {"lang": "en", "year": 2020}
    assert matches(md, {"lang": "en"}) and not matches(md, {"lang": "de"})
    assert matches(md, {"year": {"$in": [2019, 2020]}}) and not matches(md, {"year": {"$in": [2021]}})
    assert matches(md, {"lang": {"$ne": "de"}}) and matches(md, {"x": {"$nin": [1]}})
    assert not matches(md, {"missing": "x"}) and not matches(md, {"missing": {"$in": ["x"]}})
    assert matches(md, {"lang": "en", "year": {"$in": [2020]}}) and not matches(md, {"lang": "en", "year": 1})


def test_cuda_search_branch_runs_the_torch_kernel_on_cpu_tensors(built, monkeypatch):
    """VectorIndex's device branch (codes and ids pulled out of the faiss IDMap after removals,
    searched by the torch popcount kernel, ids mapped back to slots), with the kernel's tensors
    on the CPU: the same distances and slots as faiss' own search."""
    from ragloom.retrieval import gpu

    idx, x = built
    idx.remove(np.arange(0, 50))
    extra = _unit(2, seed=30)
    idx.add(np.array([400, 401]), extra)
    q = np.concatenate([binarize(_unit(4, seed=31)), binarize(extra)])
    want_d, want_i = idx.binary_search(q, 20)

    made = []
    real = gpu.TorchBinaryFlat

    def on_cpu(codes, ids, device):
        made.append(device)
        return real(codes, ids, "cpu")

    monkeypatch.setattr(gpu, "has_faiss_gpu", lambda: False)
    monkeypatch.setattr(gpu, "TorchBinaryFlat", on_cpu)
    idx.device = "cuda"
    got_d, got_i = idx.binary_search(q, 20)
    assert made == ["cuda"]  # the device branch ran
    assert (got_d == want_d).all()
    codes = binarize(np.concatenate([x, extra]))  # slot s -> row s (400, 401 are the extras)
    ref = hamming(q, codes)
    for r in range(len(q)):
        assert len(set(got_i[r])) == 20 and not np.isin(got_i[r], np.arange(50)).any()
        assert (ref[r, got_i[r]] == got_d[r]).all()  # each slot really is at that distance
    assert got_i[4, 0] == 400 and got_i[5, 0] == 401
    # Two-stage search on the device branch equals the CPU one when every vector is rescored.
    qv = _unit(1, seed=32)[0]
    on_device = search(idx, qv, k=10, oversample=40)
    idx.device = "cpu"
    assert search(idx, qv, k=10, oversample=40) == on_device
    # A change drops the device mirror; the next search rebuilds it from the new state.
    idx.device = "cuda"
    idx.remove(np.array([400]))
    assert 400 not in idx.binary_search(q, 20)[1] and made == ["cuda", "cuda"]


def test_default_oversample_and_nprobe_grow_with_the_collection(built, monkeypatch):
    from ragloom.retrieval.index import default_nprobe
    from ragloom.retrieval.search import default_oversample

    assert [default_oversample(n) for n in (0, 5_000, 10_000, 100_000, 1_000_000, 10**8)] == [10, 10, 10, 32, 100, 100]
    assert [default_nprobe(nlist) for nlist in (1, 10, 32, 200, 1024)] == [1, 10, 32, 32, 128]
    idx, _ = built
    asked = []
    real = idx.binary_search
    monkeypatch.setattr(idx, "binary_search", lambda codes, n: asked.append(n) or real(codes, n))
    search(idx, _unit(1, seed=40)[0], k=3)  # oversample None -> default for 400 vectors
    search(idx, _unit(1, seed=40)[0], k=3, oversample=2)
    assert asked == [3 * default_oversample(400), 6]


def _crowded(tmp_path, kind: str = "flat") -> tuple[VectorIndex, np.ndarray, np.ndarray, np.ndarray]:
    """An index where one "document" (group 0: 300 near copies of the query) fills the top of the
    ranking, and 200 other documents of 3 chunks each follow at random distances."""
    q = _unit(1, seed=50)[0]
    crowd = q + 0.05 * _unit(300, seed=51)
    others = _unit(600, seed=52)
    x = np.concatenate([crowd, others]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups = np.concatenate([np.zeros(300, np.int64), 1 + np.arange(600) // 3])
    idx = VectorIndex(tmp_path / kind, 64, kind)
    idx.build(np.arange(len(x)), x)
    return idx, x, groups, q


def _best_per_group(idx: VectorIndex, q: np.ndarray, x: np.ndarray, groups: np.ndarray, k: int) -> list[int]:
    """Brute force: every slot rescored, then each group's best slot, best first."""
    scores = idx.quantizer.scores(q, idx.quantizer.encode(x))[0]
    seen: set[int] = set()
    best: list[int] = []
    for slot in np.argsort(-scores, kind="stable"):
        if int(groups[slot]) not in seen:
            seen.add(int(groups[slot]))
            best.append(int(slot))
    return best[:k]


def test_grouped_search_returns_k_groups_when_one_group_crowds_the_top(tmp_path):
    idx, x, groups, q = _crowded(tmp_path)
    group = lambda slots: [int(groups[s]) for s in slots]  # noqa: E731
    plain = search(idx, q, k=5, oversample=4)
    assert {int(groups[h.slot]) for h in plain} == {0}  # the long document fills every hit
    # grouped: 5 distinct groups, each once as its best slot, in score order, as brute force has it;
    # the first round's 20 candidates are all group 0, so this needs the deeper rounds
    hits = search(idx, q, k=5, oversample=4, group=group)
    assert [int(groups[h.slot]) for h in hits][0] == 0
    assert len({int(groups[h.slot]) for h in hits}) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert [h.slot for h in hits] == _best_per_group(idx, q, x, groups, 5)
    # the best chunk overall (an exhaustive search's first) stands for group 0
    assert hits[0].slot == search(idx, q, k=1, oversample=len(x))[0].slot
    # k beyond the number of groups: every group once, no more
    assert len(search(idx, q, k=1000, group=group)) == 201
    # grouping composes with a filter: the crowd is filtered out, the rest grouped
    keep = lambda slots: np.asarray(groups[slots] != 0)  # noqa: E731
    filtered = search(idx, q, k=7, oversample=2, keep=keep, group=group)
    assert [h.slot for h in filtered] == [s for s in _best_per_group(idx, q, x, groups, 8) if groups[s] != 0][:7]


def test_grouped_search_stops_when_an_ivf_index_has_no_more_to_give(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "AUTO_IVF_THRESHOLD", 10)
    idx, _, groups, q = _crowded(tmp_path, "ivf")
    assert idx.kind == "ivf"
    idx.binary.nprobe = 1  # one list: far fewer vectors than the index holds
    asked: list[int] = []
    real = idx.binary_search
    monkeypatch.setattr(idx, "binary_search", lambda codes, n: asked.append(n) or real(codes, n))
    hits = search(idx, q, k=50, oversample=2, group=lambda slots: [int(groups[s]) for s in slots])
    assert 0 < len(hits) < 50  # what the probed list holds, not a loop asking for more in vain
    assert len(asked) == 1
