"""The runner's state of one request while it lives in the engine."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ragloom.generation.runner.detokenizer import IncrementalDetokenizer
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.sampler import LogitsProcessor
from ragloom.generation.runner.speculative.lookup import PromptLookup


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    processors: list[LogitsProcessor]
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose KV is in the cache
    num_cached: int = 0  # prompt tokens whose KV was reused rather than computed
    status: Status = Status.WAITING
    finish_reason: str | None = None
    text: str = ""  # output text so far (stop strings removed at the end)
    emitted_chars: int = 0  # how much of text has been streamed
    custom_prefill: Callable[[Any], Any] | None = None  # engine.CustomPrefill, run once
    # Prefix cache: False for a custom prefill, whose KV is approximate (neither hits nor publishes).
    cache_prefix: bool = True
    block_hashes: list[bytes] = field(default_factory=list)  # hash chain of token_ids' full blocks, so far
    num_published: int = 0  # leading blocks of block_table already offered to the prefix cache
    speculative: str = "off"  # its speculative decoding method (engine.SPECULATIVE_METHODS)
    lookup: PromptLookup | None = None  # its prompt lookup index, for lookup and auto
    draft_tokens: int = 0
    accepted_tokens: int = 0
    spec_k: int = 0  # current draft size in nodes (0: the engine's num_speculative_tokens)
    spec_misses: int = 0  # drafts in a row with nothing accepted
    spec_pause: int = 0  # steps to decode without drafting

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_new(self) -> int:
        """Tokens the next forward must run (all of them after a preemption)."""
        return self.num_tokens - self.num_computed
