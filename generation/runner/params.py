"""Sampling parameters of one request, validated once at the edge of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from ragloom.errors import InvalidArgument


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int) -> None:
        """Raise InvalidArgument naming the first bad field.

        The field paths are those of the API's SamplingParams inside its request ("sampling.top_p"):
        Generate, Ask and Query all carry it as `sampling`, and they are the callers that answer
        with a field path (BadRequest); for a local caller the path still names the argument."""
        if self.max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be >= 1, got {self.max_tokens}", field="sampling.max_tokens")
        if not self.temperature >= 0.0:  # also catches NaN
            raise InvalidArgument(f"temperature must be >= 0, got {self.temperature}", field="sampling.temperature")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 disables it), got {self.top_k}", field="sampling.top_k")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}", field="sampling.top_p")
        if not 0.0 <= self.min_p <= 1.0:
            raise InvalidArgument(f"min_p must be in [0, 1], got {self.min_p}", field="sampling.min_p")
        if not self.repetition_penalty > 0.0:
            raise InvalidArgument(
                f"repetition_penalty must be > 0, got {self.repetition_penalty}", field="sampling.repetition_penalty"
            )
        for i, s in enumerate(self.stop):
            if not s:
                raise InvalidArgument("stop strings must not be empty", field=f"sampling.stop[{i}]")
        for i, t in enumerate(self.stop_token_ids):
            if not 0 <= t < vocab_size:
                raise InvalidArgument(
                    f"stop_token_ids out of vocabulary range [0, {vocab_size}): {t}", field=f"sampling.stop_token_ids[{i}]"
                )
