"""Prompt lookup drafting (PLD; vLLM's `ngram` method, HF's `prompt_lookup_num_tokens`).

The sequence's last n tokens (n from `max_ngram` down to `min_ngram`) are looked up among its
earlier tokens, prompt and output alike; the tokens that followed their latest occurrence are the
draft. Strong where the output copies its input: RAG answers quoting passages, summaries, SQL over
a given schema, code edits. Costs no model and no training.

Each sequence keeps its own index from n-gram to the end of its latest occurrence, extended by
the tokens added since the last proposal, so a proposal is O(new tokens), not a scan of the
whole context.
"""

from __future__ import annotations


class PromptLookup:
    def __init__(self, prompt_ids: list[int], max_ngram: int = 3, min_ngram: int = 2) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens = list(prompt_ids)
        self._prompt_len = len(prompt_ids)
        self._indexed = 0  # n-grams ending (exclusive) before this position are indexed
        self._latest: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest occurrence

    def propose(self, output_ids: list[int], k: int) -> list[int]:
        """Up to k draft tokens to follow prompt + output_ids (the output as it is now)."""
        toks = self.tokens
        toks.extend(output_ids[len(toks) - self._prompt_len :])
        end = len(toks)
        # Index every n-gram that ends before the last token: the suffix itself must not match.
        for e in range(max(self._indexed, 1), end):
            for n in range(self.min_ngram, min(self.max_ngram, e) + 1):
                self._latest[tuple(toks[e - n : e])] = e
        self._indexed = max(self._indexed, end)
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, end), self.min_ngram - 1, -1):
            at = self._latest.get(tuple(toks[end - n :]))
            if at is not None:
                return toks[at : at + k]
        return []
