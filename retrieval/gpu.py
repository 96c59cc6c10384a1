"""Binary Hamming search on a GPU without faiss-gpu: XOR + popcount lookup in torch.

faiss-gpu has `GpuIndexBinaryFlat` (the only classic binary GPU index; `index_cpu_to_gpu` does not
convert binary indexes, faiss #1428), used when installed. Otherwise this torch kernel runs the
exhaustive scan: torch has no popcount op, so bytes are XORed and looked up in a 256-entry table.
It runs on any device, which is how it is tested (CPU tensors vs faiss distances).
"""

from __future__ import annotations

import numpy as np
import torch

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)
# Bound the (queries x rows x bytes) XOR intermediate to keep memory flat on large scans.
_MAX_ELEMENTS = 1 << 26


def has_faiss_gpu() -> bool:
    import faiss

    return hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0


def hamming_distances(queries: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(nq, nb) uint8 x (n, nb) uint8 -> (nq, n) int32 Hamming distances."""
    table = _POPCOUNT.to(codes.device)
    x = torch.bitwise_xor(queries[:, None, :], codes[None, :, :])
    return table[x.long()].sum(dim=2, dtype=torch.int32)


def hamming_topk(queries: torch.Tensor, codes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest-k Hamming distances and row positions, scanning `codes` in chunks."""
    nq, nb = queries.shape
    n = codes.shape[0]
    k = min(k, n)
    chunk = max(k, _MAX_ELEMENTS // max(1, nq * nb))
    best_d = torch.empty((nq, 0), dtype=torch.int32, device=codes.device)
    best_i = torch.empty((nq, 0), dtype=torch.int64, device=codes.device)
    for start in range(0, n, chunk):
        d = hamming_distances(queries, codes[start : start + chunk])
        kk = min(k, d.shape[1])
        dv, di = torch.topk(d, kk, dim=1, largest=False, sorted=True)
        best_d = torch.cat([best_d, dv], dim=1)
        best_i = torch.cat([best_i, di + start], dim=1)
        if best_d.shape[1] > k:
            # Stable sort keeps the earlier (lower) row first on ties, like faiss' heap.
            order = torch.sort(best_d, dim=1, stable=True).indices[:, :k]
            best_d = torch.gather(best_d, 1, order)
            best_i = torch.gather(best_i, 1, order)
    return best_d, best_i


class TorchBinaryFlat:
    """A device-resident copy of packed codes + ids, searched with `hamming_topk`."""

    def __init__(self, codes: np.ndarray, ids: np.ndarray, device: str = "cuda") -> None:
        self.codes = torch.from_numpy(np.ascontiguousarray(codes)).to(device)
        self.ids = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(device)
        self.device = device

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.codes.shape[0] == 0:
            return np.zeros((len(queries), 0), np.int32), np.zeros((len(queries), 0), np.int64)
        q = torch.from_numpy(np.ascontiguousarray(queries)).to(self.device)
        d, i = hamming_topk(q, self.codes, k)
        return d.cpu().numpy(), self.ids[i].cpu().numpy()
