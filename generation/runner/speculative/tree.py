"""A draft as a tree of tokens, verified in one forward pass, and the greedy acceptance over it.

Node i holds `tokens[i]` and hangs under `parents[i]` (an earlier node, or -1: the sequence's last
token, the root). A linear draft is the chain parents = [-1, 0, 1, ...]. Nodes come in depth-first
order, the likeliest child first, so the path a draft most often keeps (each node's first child)
sits in consecutive rows and its KV is already in place after acceptance.

The verify pass runs the root and every node: row 0 is the root, row i + 1 node i. A node sits at
position `start + 1 + depth` (siblings share a position) and attends the context, its ancestors
and itself (`visible`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DraftTree:
    tokens: list[int]
    parents: list[int]  # per node: an earlier node's index, or -1 for the root
    depths: list[int] = field(init=False)  # per node: 1 for the root's children

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("a draft tree needs one parent per token")
        depths: list[int] = []
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i}'s parent {p} must be an earlier node or -1")
            depths.append(1 if p < 0 else depths[p] + 1)
        self.depths = depths

    @classmethod
    def chain(cls, tokens: list[int]) -> DraftTree:
        return cls(list(tokens), list(range(-1, len(tokens) - 1)))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def visible(self) -> torch.Tensor:
        """[1 + n, 1 + n] bool over the verify rows (root first): which rows each row attends
        among them (itself and its ancestors); every row sees the whole context as well."""
        n = len(self.tokens)
        mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
        mask[:, 0] = True
        for i, p in enumerate(self.parents):
            row = i + 1
            mask[row] = mask[p + 1]
            mask[row, row] = True
        return mask

    def accept(self, choice: list[int]) -> list[int]:
        """Greedy verification. `choice[r]`: the model's token after row r. A node is accepted when
        its parent is and the model chose its token there. Returns the nodes of the deepest
        accepted path, root to leaf (the first such path where several are as deep)."""
        accepted = [False] * len(self.tokens)
        best = -1
        for i, (t, p) in enumerate(zip(self.tokens, self.parents)):
            if (p < 0 or accepted[p]) and choice[p + 1] == t:
                accepted[i] = True
                if best < 0 or self.depths[i] > self.depths[best]:
                    best = i
        path: list[int] = []
        while best >= 0:
            path.append(best)
            best = self.parents[best]
        return path[::-1]
