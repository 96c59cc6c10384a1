"""Token Recycling (Luo et al., ACL 2025): the model's own rejected guesses become the next drafts.

An adjacency matrix [vocab, k] holds, per token, the top-k tokens the model last predicted after
it. Every verify pass computes logits at every draft node, accepted or not; their top-k overwrite
the nodes' rows, so candidates the model "threw away" are recycled. A draft is a tree read from the
matrix: the root's row gives the first level, each child's row the next, following a template of
child ranks. No training and no draft model; the matrix is per engine and kept across requests
(the paper's hot start), and rows no verify has reached yet are seeded with the prompt's bigrams.

The template is built best-first from each rank's measured acceptance rate (a node's worth is the
product of its path's rates, as Sequoia and EAGLE-2 size their trees), so its shape follows what
this model and workload accept; it starts from a prior and is rebuilt as verifies accumulate.
"""

from __future__ import annotations

import heapq

import torch

from ragloom.generation.runner.speculative.tree import DraftTree

# Rate at which a node of each child rank is accepted once its parent is, before any is measured:
# roughly what Token Recycling's tree sees (top-1 about half the time, a fast-decaying tail).
PRIOR_RATES = (0.5, 0.15, 0.08, 0.05, 0.035, 0.025, 0.02, 0.015)
PRIOR_WEIGHT = 50  # the prior counts as this many observations per rank
REBUILD_EVERY = 32  # verifies between template rebuilds


class TokenRecycling:
    def __init__(self, vocab_size: int, k: int = 8) -> None:
        self.k = k
        self.adj = torch.zeros(vocab_size, k, dtype=torch.int32)
        self.width = torch.zeros(vocab_size, dtype=torch.uint8)  # per row: how many ranks are filled
        self._tried = [float(PRIOR_WEIGHT)] * k
        self._hits = [PRIOR_WEIGHT * r for r in PRIOR_RATES[:k]] + [0.0] * max(0, k - len(PRIOR_RATES))
        self._templates: dict[int, list[tuple[int, int]]] = {}  # node budget -> (parent, rank) per node
        self._since_rebuild = 0

    # ---- learning ----------------------------------------------------------------------------

    def seed(self, token_ids: list[int]) -> None:
        """Prompt bigrams as rank-0 guesses for tokens the model has not been seen predicting after."""
        if len(token_ids) < 2:
            return
        ids = torch.tensor(token_ids, dtype=torch.long)
        prev, nxt = ids[:-1], ids[1:]
        fresh = self.width[prev] == 0
        self.adj[prev[fresh], 0] = nxt[fresh].to(torch.int32)
        self.width[prev[fresh]] = 1

    def update(self, tokens: list[int], logits: torch.Tensor) -> None:
        """Rows `tokens` <- top-k of `logits` [len(tokens), vocab], the model's predictions after
        each of them (in their contexts)."""
        top = logits.topk(self.k, dim=-1).indices.to("cpu", torch.int32)
        index = torch.tensor(tokens, dtype=torch.long)
        self.adj[index] = top
        self.width[index] = self.k

    def observe(self, tree: DraftTree, ranks: list[int], path: list[int]) -> None:
        """Count, per rank, the nodes whose parent was accepted and whether they were."""
        on_path = set(path)
        reached = {-1} | on_path
        for i, (p, r) in enumerate(zip(tree.parents, ranks)):
            if p in reached:
                self._tried[r] += 1
                self._hits[r] += i in on_path
        self._since_rebuild += 1
        if self._since_rebuild >= REBUILD_EVERY:
            self._templates.clear()
            self._since_rebuild = 0

    # ---- drafting ----------------------------------------------------------------------------

    def template(self, budget: int) -> list[tuple[int, int]]:
        """The `budget` most valuable nodes as (parent node, child rank), depth first, likeliest
        child first. Best-first: a node's value is the product of its path's rank rates, so every
        node's parent is worth more than it and is taken first."""
        if budget not in self._templates:
            rates = [h / t for h, t in zip(self._hits, self._tried)]
            heap: list[tuple[float, tuple[int, ...]]] = [(-rates[0], (0,))]
            chosen: list[tuple[int, ...]] = []
            while heap and len(chosen) < budget:
                neg, path = heapq.heappop(heap)
                chosen.append(path)
                heapq.heappush(heap, (neg * rates[0], path + (0,)))  # first child
                if path[-1] + 1 < self.k:  # next sibling
                    heapq.heappush(heap, (neg / rates[path[-1]] * rates[path[-1] + 1], path[:-1] + (path[-1] + 1,)))
            chosen.sort()  # lexicographic = depth first, rank 0 first
            index = {path: i for i, path in enumerate(chosen)}
            self._templates[budget] = [(index.get(path[:-1], -1), path[-1]) for path in chosen]
        return self._templates[budget]

    def propose(self, root: int, budget: int, max_depth: int | None = None) -> tuple[DraftTree, list[int]] | None:
        """A draft tree of at most `budget` nodes, at most `max_depth` deep, after token `root`,
        and each node's rank; None when the matrix knows nothing after root. Branches through
        ranks a row does not hold (never predicted after, or only seeded) are cut."""
        if budget <= 0 or not self.width[root]:
            return None
        tokens: list[int] = []
        parents: list[int] = []
        ranks: list[int] = []
        depths: list[int] = []
        kept: dict[int, int] = {}  # template node -> tree node
        rows: dict[int, list[int]] = {}
        for t_index, (parent, rank) in enumerate(self.template(budget)):
            if parent >= 0 and parent not in kept:
                continue
            depth = 1 if parent < 0 else depths[kept[parent]] + 1
            if max_depth is not None and depth > max_depth:
                continue
            after = root if parent < 0 else tokens[kept[parent]]
            if after not in rows:
                rows[after] = self.adj[after, : int(self.width[after])].tolist()
            if rank >= len(rows[after]):
                continue
            kept[t_index] = len(tokens)
            tokens.append(rows[after][rank])
            parents.append(-1 if parent < 0 else kept[parent])
            ranks.append(rank)
            depths.append(depth)
        return (DraftTree(tokens, parents), ranks) if tokens else None
