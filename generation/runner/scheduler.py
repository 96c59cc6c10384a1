"""Continuous batching: which sequences run in the next step.

Two policies, each step filling a token budget (`max_num_batched_tokens`):

- *chunked prefill* (Sarathi-Serve; the engine's default): every running sequence that is
  decoding gets its one token first, then prompts fill what is left of the budget, a chunk at a
  time: a prompt longer than the budget is prefilled over several steps, each beside the
  decodes, so that one long prompt never stalls the streams already running for its whole
  prefill. Prompts part-way through go before new ones. A step without decodes stalls nobody:
  it prefills up to `max_prefill_tokens`.
- *prefill first* (nano-vllm): waiting prompts are prefilled whole, as many as fit the budget, in
  a step of their own; otherwise every running sequence decodes one token.

When a step runs out of blocks, the newest running sequence is preempted: its blocks are freed
and it goes back to the front of the queue to be recomputed later, so older requests always make
progress.

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
    num_tokens: list[int]  # per sequence: how many of its uncomputed tokens run in this step
    is_prefill: bool  # some sequence runs more than one token

    def completes(self, i: int) -> bool:
        """Whether seqs[i] is computed to its last token after this step (so it samples one)."""
        return self.seqs[i].num_computed + self.num_tokens[i] == self.seqs[i].num_tokens


class Scheduler:
    def __init__(self, kv: KVCache, max_num_seqs: int, max_num_batched_tokens: int,
                 prefix_caching: bool = True, chunked_prefill: bool = False,
                 max_prefill_tokens: int | None = None) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # Chunked prefill: a step with no decode in it stalls nobody, so prompts then take up to
        # this many tokens (fewer, larger chunks prefill faster on CPU).
        self.max_prefill_tokens = max(max_prefill_tokens or max_num_batched_tokens, max_num_batched_tokens)
        self.prefix_caching = prefix_caching
        self.chunked_prefill = chunked_prefill
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
        if self.chunked_prefill:
            return self._schedule_mixed()
        batch = self._schedule_prefill()
        if batch is not None:
            return batch
        return self._schedule_decode()

    # ---- chunked prefill -------------------------------------------------------------------------

    def _schedule_mixed(self) -> ScheduledBatch | None:
        budget = self.max_num_batched_tokens
        seqs: list[Sequence] = []
        counts: list[int] = []
        # Decodes first, oldest first, all of them (the budget is meant to exceed max_num_seqs);
        # blocks short -> the newest running sequence is preempted.
        for seq in [s for s in self.running if s.num_new == 1]:
            if seq not in self.running or not self._make_room(seq, seq.num_tokens, seqs):
                continue
            self.kv.reserve(seq.block_table, seq.num_tokens, seq.params.max_tokens)
            seqs.append(seq)
            counts.append(1)
            budget = max(budget - 1, 0)
        if not seqs:
            budget = self.max_prefill_tokens
        # Prompts part-way through their prefill, then new ones, a chunk each while budget lasts.
        for seq in [s for s in self.running if s.num_new > 1]:
            if budget == 0:
                break
            if seq not in self.running:
                continue
            n = min(seq.num_new, budget)
            if not self._make_room(seq, self._reserve_for(seq, n), seqs):
                continue
            self.kv.reserve(seq.block_table, self._reserve_for(seq, n), seq.params.max_tokens)
            seqs.append(seq)
            counts.append(n)
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            hits = self._cached_prefix(seq)
            todo = seq.num_new - len(hits) * self.kv.block_size
            # A custom (blended) prefill computes the whole prompt at once, outside the forward:
            # it goes when it fits the budget, or first of the step's prompts.
            n = todo if seq.custom_prefill is not None else min(todo, budget)
            if seq.custom_prefill is not None and n > budget and any(c > 1 for c in counts):
                break
            if not self._admit(seq, hits, self._reserve_for(seq, n, len(hits))):
                break
            self.running.append(seq)
            seqs.append(seq)
            counts.append(n)
            budget -= min(n, budget)
        if not seqs:
            return None
        return ScheduledBatch(seqs, counts, is_prefill=any(c > 1 for c in counts))

    def _reserve_for(self, seq: Sequence, n: int, hit_blocks: int = 0) -> int:
        """Tokens seq's blocks must hold to run n more: +1 when that completes the prompt, room
        for the token it then samples, so that the next decode needs no block at once."""
        done = max(seq.num_computed, hit_blocks * self.kv.block_size) + n
        return done + 1 if done == seq.num_tokens else done

    def _admit(self, seq: Sequence, hits: list[int], num_tokens: int) -> bool:
        """Move the queue's first sequence to running, sharing its cached leading blocks `hits`
        and reserving blocks for num_tokens; False, with nothing changed, if they do not fit."""
        need = self.kv.blocks_for(num_tokens) - len(seq.block_table) - len(hits)
        revived = sum(self.kv.allocator.refs(b) == 0 for b in hits)  # cached, unowned: counted as free
        if need + revived > self.kv.allocator.num_free:
            return False
        self._take_cached(seq, hits)
        self.kv.reserve(seq.block_table, num_tokens, seq.params.max_tokens)
        self.waiting.popleft()
        seq.status = Status.RUNNING
        return True

    def _make_room(self, seq: Sequence, num_tokens: int, scheduled: list[Sequence] | None = None) -> bool:
        """Free blocks until seq can hold num_tokens, preempting the newest running sequences
        not already scheduled in this step (seq itself when none is left); False if seq was
        preempted."""
        while self.kv.blocks_for(num_tokens) > len(seq.block_table) + self.kv.allocator.num_free:
            victim = next((s for s in reversed(self.running) if s is seq or s not in (scheduled or ())), seq)
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    # ---- prefill first ---------------------------------------------------------------------------

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
            if not self._admit(seq, hits, seq.num_tokens + 1):
                break
            seqs.append(seq)
            budget -= seq.num_new
        if not seqs:
            return None
        self.running.extend(seqs)
        return ScheduledBatch(seqs, [s.num_new for s in seqs], is_prefill=True)

    def _schedule_decode(self) -> ScheduledBatch | None:
        scheduled: list[Sequence] = []
        for seq in list(self.running):
            if seq not in self.running:  # preempted below to make room for an older one
                continue
            if self._make_room(seq, seq.num_tokens):
                self.kv.reserve(seq.block_table, seq.num_tokens, seq.params.max_tokens)
                scheduled.append(seq)
        return ScheduledBatch(scheduled, [1] * len(scheduled), is_prefill=False) if scheduled else None

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
