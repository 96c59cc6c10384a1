"""Continuous batching: which sequences run in the next step.

Policy (as in nano-vllm): waiting prompts are prefilled first, as many as fit the token budget
and the free KV blocks; otherwise every running sequence decodes one token. When a decode step
runs out of blocks, the newest running sequence is preempted: its blocks are freed and it goes
back to the front of the queue to be recomputed later, so older requests always make progress.

Prefix caching: a prompt about to be prefilled first takes the longest chain of cached blocks
that holds its leading tokens (kv.py), and only the rest is computed; after each step the blocks
that became full are published for later requests.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ragloom.generation.runner.kv import KVCache, block_hash
from ragloom.generation.runner.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    is_prefill: bool


class Scheduler:
    def __init__(self, kv: KVCache, max_num_seqs: int, max_num_batched_tokens: int,
                 prefix_caching: bool = True) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefix_caching = prefix_caching
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.prefix_queried_tokens = 0  # tokens of the sequences that looked up the prefix cache
        self.prefix_hit_tokens = 0  # of which were found there

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
        seq.num_computed = seq.num_published = 0
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
            hits = self._cached_prefix(seq)
            # A prompt longer than the budget still runs, alone, rather than never.
            if seqs and seq.num_new - len(hits) * self.kv.block_size > budget:
                break
            # +1: room for the token this step samples, so the next decode needs no block at once.
            need = self.kv.blocks_for(seq.num_tokens + 1) - len(seq.block_table) - len(hits)
            revived = sum(self.kv.allocator.refs(b) == 0 for b in hits)  # cached, unowned: counted as free
            if need + revived > self.kv.allocator.num_free:
                break
            self._take_cached(seq, hits)
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
        self.kv.release(seq.block_table)  # its published blocks stay cached: the recompute may hit them
        seq.num_computed = seq.num_published = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    # ---- prefix cache --------------------------------------------------------------------------

    def _hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """seq.block_hashes, extended to cover at least its first num_blocks full blocks."""
        bs, chain = self.kv.block_size, seq.block_hashes
        if len(chain) < num_blocks:
            tokens = seq.token_ids
            for i in range(len(chain), num_blocks):
                chain.append(block_hash(chain[-1] if chain else None, tokens[i * bs : (i + 1) * bs]))
        return chain

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """The longest chain of cached blocks holding seq's leading tokens. The last token is
        always computed (its logits are needed), so the chain stops short of it: a fully cached
        prompt recomputes its whole last block rather than write into a shared one."""
        if not (self.prefix_caching and seq.cache_prefix) or seq.block_table:
            return []
        hits: list[int] = []
        for h in self._hashes(seq, (seq.num_tokens - 1) // self.kv.block_size):
            block = self.kv.allocator.lookup(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def _take_cached(self, seq: Sequence, hits: list[int]) -> None:
        if not (self.prefix_caching and seq.cache_prefix):
            return
        self.kv.allocator.share(hits)
        seq.block_table.extend(hits)
        seq.num_computed = len(hits) * self.kv.block_size
        seq.num_published = len(hits)
        if not seq.output_ids:  # usage reports the prompt's hit, not a recompute's after preemption
            seq.num_cached = seq.num_computed
        self.prefix_queried_tokens += seq.num_tokens
        self.prefix_hit_tokens += seq.num_computed

    def publish(self, seq: Sequence) -> None:
        """Publish seq's blocks that are now full and computed (after a step), so that later
        requests can share them. They are immutable from here: seq writes only past them."""
        if not (self.prefix_caching and seq.cache_prefix):
            return
        full = seq.num_computed // self.kv.block_size
        if full <= seq.num_published:
            return
        hashes = self._hashes(seq, full)
        for i in range(seq.num_published, full):
            self.kv.allocator.publish(seq.block_table[i], hashes[i])
        seq.num_published = full

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Roll seq's KV back to its first num_tokens tokens (rejected drafts); the caller trims
        output_ids to match. Hashes past the cut no longer describe seq's tokens."""
        self.kv.truncate(seq.block_table, num_tokens)
        full = num_tokens // self.kv.block_size
        del seq.block_hashes[full:]
        seq.num_published = min(seq.num_published, full)
        seq.num_computed = min(seq.num_computed, num_tokens)
