"""Continuous batching: which sequences run in the next step.

Policy (as in nano-vllm): waiting prompts are prefilled first, as many as fit the token budget
and the free KV blocks; otherwise every running sequence decodes one token. When a decode step
runs out of blocks, the newest running sequence is preempted: its blocks are freed and it goes
back to the front of the queue to be recomputed later, so older requests always make progress.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ragloom.generation.runner.kv import KVCache
from ragloom.generation.runner.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    is_prefill: bool


class Scheduler:
    def __init__(self, kv: KVCache, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting):
            if seq.request_id == request_id:
                return seq
        return None

    def finish(self, seq: Sequence) -> None:
        """Drop a sequence (finished or aborted) and free its KV blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.release(seq.block_table)
        seq.num_computed = 0
        seq.status = Status.FINISHED

    def schedule(self) -> ScheduledBatch | None:
        batch = self._schedule_prefill()
        if batch is not None:
            return batch
        return self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch | None:
        seqs: list[Sequence] = []
        budget = self.max_num_batched_tokens
        while self.waiting and len(self.running) + len(seqs) < self.max_num_seqs:
            seq = self.waiting[0]
            # A prompt longer than the budget still runs, alone, rather than never.
            if seqs and seq.num_new > budget:
                break
            # +1: room for the token this step samples, so the next decode needs no block at once.
            need = self.kv.blocks_for(seq.num_tokens + 1) - len(seq.block_table)
            if need > self.kv.allocator.num_free:
                break
            self.kv.reserve(seq.block_table, seq.num_tokens + 1)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            seqs.append(seq)
            budget -= seq.num_new
        if not seqs:
            return None
        self.running.extend(seqs)
        return ScheduledBatch(seqs, is_prefill=True)

    def _schedule_decode(self) -> ScheduledBatch | None:
        scheduled: list[Sequence] = []
        for seq in list(self.running):
            if seq not in self.running:  # preempted below to make room for an older one
                continue
            while self.kv.blocks_for(seq.num_tokens) > len(seq.block_table) + self.kv.allocator.num_free:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self.kv.reserve(seq.block_table, seq.num_tokens)
                scheduled.append(seq)
        return ScheduledBatch(scheduled, is_prefill=False) if scheduled else None

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.kv.release(seq.block_table)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
