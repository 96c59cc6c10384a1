"""Sentence embeddings: the bundled all-MiniLM-L6-v2 or any local sentence-transformers folder.

Output is always L2-normalized float32 so that inner product == cosine everywhere downstream
(float flat index, int8 rescoring, binary sign codes all assume it). Never downloads: the hub is
put into offline mode before sentence-transformers is imported.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ragloom.errors import InvalidArgument, ModelError
from ragloom.models import BUNDLED_EMBEDDER, embedder_path

# Progress bars only pay for themselves on long jobs; short query batches stay quiet.
_PROGRESS_MIN_TEXTS = 1024


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """Thread-safe wrapper around a SentenceTransformer (encode is serialized: torch modules
    are not safe to call concurrently from several gRPC worker threads on one device)."""

    def __init__(self, model: str = BUNDLED_EMBEDDER, device: str = "auto", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if model == BUNDLED_EMBEDDER:
            folder = embedder_path()
            self.model_id = BUNDLED_EMBEDDER
        else:
            folder = Path(model).expanduser()
            if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
                raise ModelError(
                    f"embedder {model!r} is neither the bundled {BUNDLED_EMBEDDER!r} nor a local "
                    "sentence-transformers folder (modules.json/config.json missing)"
                )
            self.model_id = folder.resolve().name
        from sentence_transformers import SentenceTransformer

        self.device = _resolve_device(device)
        self.batch_size = batch_size
        # local_files_only: a folder path never triggers a hub lookup, even without HF_HUB_OFFLINE.
        self._model = SentenceTransformer(str(folder), device=self.device, local_files_only=True)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            raise ModelError(f"{folder}: cannot determine embedding dimension")
        self.dim = int(dim)
        self._lock = threading.Lock()

    @property
    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer
        return self._model.tokenizer

    @property
    def max_seq_length(self) -> int:
        limit = self._model.max_seq_length
        if limit is None:  # sentence-transformers leaves it unset for some models
            raise ValueError(f"{self.model_id} declares no max_seq_length")
        return int(limit)

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        if isinstance(texts, str):
            raise InvalidArgument("encode takes a sequence of texts, not one string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                show_progress_bar=show_progress and len(texts) >= _PROGRESS_MIN_TEXTS,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        return np.ascontiguousarray(out, dtype=np.float32)
