"""Speculative decoding (speculative/, engine._draft/_accept): the drafters' proposals (prompt
lookup chains, Token Recycling trees), tree verification, and greedy output equal to plain greedy
decoding, alone and in a batch, with drafts cut by max_tokens and by a full KV cache.

Verification attends a draft's rows as decode steps would, to the bit (model.MIN_QUERY_ROWS,
batch.KEY_TILE), so the output must equal plain greedy decoding's exactly, near-ties included.
"""

from __future__ import annotations

import pytest
import torch

from ragloom.config import EngineSettings
from ragloom.errors import InvalidArgument
from ragloom.generation.runner.engine import LLMEngine, Request
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.speculative.lookup import PromptLookup
from ragloom.generation.runner.speculative.recycling import TokenRecycling
from ragloom.generation.runner.speculative.tree import DraftTree


def test_lookup_drafts_what_followed_the_latest_longest_match() -> None:
    d = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3], max_ngram=3, min_ngram=1)
    # suffix (2, 3) occurred twice before; the latest occurrence is followed by 7, 8, 2, 3
    assert d.propose([], 3) == [7, 8, 2]
    # with output (7): suffix (2, 3, 7) matches at position 6..8 -> 8, 2, 3, 7
    assert d.propose([7], 10) == [8, 2, 3, 7]
    assert d.propose([7, 42], 4) == []  # 42 never occurred
    assert d.propose([7, 42], 0) == []


def test_lookup_never_matches_the_suffix_itself() -> None:
    d = PromptLookup([5, 6], max_ngram=2, min_ngram=1)
    assert d.propose([], 4) == []  # (5, 6) and (6,) occur only as the suffix
    assert d.propose([5], 4) == [6, 5]  # (5,) occurred at the start, followed by 6, 5
    with pytest.raises(ValueError):
        PromptLookup([1], max_ngram=1, min_ngram=2)


COPY = ("Here is a list: alpha beta gamma delta epsilon zeta eta theta iota kappa lambda. "
        "Repeat the list exactly: alpha beta gamma delta")
PROMPTS = [COPY, "The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
           "Water boils at 100 degrees Celsius. Water boils at"]


@pytest.fixture(scope="module")
def engines() -> tuple[LLMEngine, LLMEngine]:
    base = dict(device="cpu", kv_cache_tokens=2048, prefix_caching=False)
    return (LLMEngine(EngineSettings(**base)),
            LLMEngine(EngineSettings(**base, speculative="lookup", num_speculative_tokens=6)))


def _run(engine: LLMEngine, prompts: list[str], params: SamplingParams, method: str | None = None):
    for i, p in enumerate(prompts):
        engine.add_request(Request(f"r{i}", engine.encode(p), params, speculative=method))
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            done.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finished:
                done[out.request_id + ":last"] = out
    return [done[f"r{i}"] for i in range(len(prompts))], [done[f"r{i}:last"] for i in range(len(prompts))]


def _assert_greedy(got: list[list[int]], want: list[list[int]]) -> None:
    for g, w in zip(got, want):
        first = next((i for i, (x, y) in enumerate(zip(g, w)) if x != y), None)
        assert g == w, f"parts from plain greedy at token {first}"


@pytest.mark.parametrize("method", ["lookup", "recycling", "auto"])
def test_greedy_output_is_plain_greedy_alone(engines: tuple[LLMEngine, LLMEngine], method: str) -> None:
    plain, spec = engines
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    got = [_run(spec, [p], params, method)[0][0] for p in PROMPTS]
    want = [_run(plain, [p], params)[0][0] for p in PROMPTS]
    _assert_greedy(got, want)


@pytest.mark.parametrize("method", ["lookup", "recycling"])
def test_greedy_output_is_plain_greedy_in_a_batch(
        engines: tuple[LLMEngine, LLMEngine], method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a batch, too, when plain decoding reads keys in place like verification does (batched
    decodes of short contexts otherwise go through one padded kernel, whose rounding differs)."""
    from ragloom.generation.runner import batch

    monkeypatch.setattr(batch, "IN_PLACE_MIN_CONTEXT", 0)
    plain, spec = engines
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    want, _ = _run(plain, PROMPTS, params)
    got, last = _run(spec, PROMPTS, params, method)
    _assert_greedy(got, want)
    assert all(len(t) == 40 for t in got) and all(o.completion_tokens == 40 for o in last)
    assert last[0].accepted_tokens > 0 and last[0].draft_tokens >= last[0].accepted_tokens


def test_recycling_learns_from_rejected_branches(engines: tuple[LLMEngine, LLMEngine]) -> None:
    """Repeating a prompt, recycling drafts from what the model predicted the first time: more
    accepted tokens per step the second time (the matrix is kept across requests)."""
    _, spec = engines
    spec.recycling = None
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    prompt = PROMPTS[2]
    _, first = _run(spec, [prompt], params, "recycling")
    _, second = _run(spec, [prompt], params, "recycling")
    assert second[0].accepted_tokens > first[0].accepted_tokens
    assert second[0].accepted_tokens >= 10  # a third of the 30 tokens come from accepted drafts


def test_drafts_stop_at_max_tokens_and_at_eos(engines: tuple[LLMEngine, LLMEngine]) -> None:
    plain, spec = engines
    for params in (SamplingParams(max_tokens=3, temperature=0, ignore_eos=True),
                   SamplingParams(max_tokens=60, temperature=0)):
        want, want_last = _run(plain, [COPY], params)
        got, got_last = _run(spec, [COPY], params, "auto")
        _assert_greedy(got, want)
        assert got_last[0].finish_reason == want_last[0].finish_reason
        assert len(got[0]) <= params.max_tokens


def test_who_speculates(engines: tuple[LLMEngine, LLMEngine]) -> None:
    _, spec = engines
    _, last = _run(spec, [COPY], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True), method="off")
    assert last[0].draft_tokens == 0
    _, last = _run(spec, [COPY], SamplingParams(max_tokens=20, temperature=0.8, seed=1, ignore_eos=True))
    assert last[0].draft_tokens == 0  # sampling decodes a token a step
    with pytest.raises(InvalidArgument, match="speculative"):
        spec.add_request(Request("bad", [1, 2, 3], SamplingParams(), speculative="medusa"))


def test_full_kv_cache_drops_drafts_not_tokens() -> None:
    """With room for the sequence but not its drafts, decoding goes on without them."""
    spec = LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=96, block_size=16, prefix_caching=False,
                                    speculative="lookup", num_speculative_tokens=16))
    plain = LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=96, block_size=16, prefix_caching=False))
    ids = spec.encode(COPY)
    params = SamplingParams(max_tokens=96 - len(ids) - 1, temperature=0, ignore_eos=True)
    want = plain.generate([ids], params)[0].token_ids
    got = spec.generate([ids], params)[0].token_ids
    assert got == want


def test_no_drafts_in_steps_with_more_decodes_than_speculative_max_batch(
        engines: tuple[LLMEngine, LLMEngine]) -> None:
    _, spec = engines
    assert spec.settings.speculative_max_batch == 4
    _, last = _run(spec, [COPY] * 5, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert all(o.draft_tokens == 0 for o in last)  # five in lockstep: every step decodes five


def test_draft_length_adapts_to_acceptance(engines: tuple[LLMEngine, LLMEngine]) -> None:
    from ragloom.generation.runner.engine import SPEC_MISSES, SPEC_PAUSE
    from ragloom.generation.runner.sequence import Sequence

    _, spec = engines
    seq = Sequence("s", [1, 2], SamplingParams(temperature=0), [], spec.tokenizer, None)  # type: ignore[arg-type]
    spec._adapt(seq, 6, 6)
    assert seq.spec_k == 6  # capped at num_speculative_tokens
    spec._adapt(seq, 6, 2)
    assert seq.spec_k == 3  # mostly rejected: halved
    for _ in range(SPEC_MISSES):
        spec._adapt(seq, 3, 0)
    assert seq.spec_pause == SPEC_PAUSE and seq.spec_k == 1


def test_tree_rows_see_their_ancestors_and_accept_the_deepest_agreeing_path() -> None:
    #            root
    #          /   |   \
    #        0:a  3:b  4:c          (depth 1)
    #        /  \
    #      1:d  2:e                 (depth 2)
    tree = DraftTree([10, 11, 12, 20, 30], [-1, 0, 0, -1, -1])
    assert tree.depths == [1, 2, 2, 1, 1] and not tree.is_chain
    vis = tree.visible()
    assert vis[2].tolist() == [True, True, True, False, False, False]  # node 1: root, node 0, itself
    assert vis[4].tolist() == [True, False, False, False, True, False]  # node 3: root, itself
    # choice per row (root, then nodes): after root the model says 10; after node 0, 12
    assert tree.accept([10, 12, 0, 0, 0, 0]) == [0, 2]
    assert tree.accept([30, 12, 0, 0, 0, 0]) == [4]  # 12 follows node 0, but node 0 was rejected
    assert tree.accept([99, 0, 0, 0, 0, 0]) == []
    assert DraftTree.chain([5, 6, 7]).is_chain
    with pytest.raises(ValueError):
        DraftTree([1, 2], [-1, 1])


def test_recycling_tree_follows_the_adjacency_matrix() -> None:
    tr = TokenRecycling(vocab_size=100, k=4)
    assert tr.propose(7, 8) is None  # nothing known after 7
    tr.seed([7, 8, 9])
    tree, ranks = tr.propose(7, 8)
    assert tree.tokens == [8, 9] and tree.parents == [-1, 0] and ranks == [0, 0]  # seeded bigrams, rank 0 only
    logits = torch.zeros(2, 100)
    logits[0, [40, 41, 42, 43]] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # after 7
    logits[1, [50, 51, 52, 53]] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # after 40
    tr.update([7, 40], logits)
    tree, ranks = tr.propose(7, 5)
    template = tr.template(5)
    assert template[:3] == [(-1, 0), (0, 0), (1, 0)] and len(template) == 5
    assert len(tree) == 4  # the template's third level hangs under 50, whose row is unknown: cut
    assert tree.tokens[:2] == [40, 50]  # depth first: the likeliest chain comes first
    assert all(t in (40, 41, 42, 43) for t, p in zip(tree.tokens, tree.parents) if p < 0)
    # a node's token is its parent's row at its rank
    for t, p, r in zip(tree.tokens, tree.parents, ranks):
        after = 7 if p < 0 else tree.tokens[p]
        assert t == tr.adj[after, r]


def test_recycling_template_follows_measured_acceptance() -> None:
    tr = TokenRecycling(vocab_size=10, k=4)
    deep = tr.template(6)
    assert [rank for _, rank in deep].count(0) >= 3
    tree = DraftTree([1, 2, 3, 4], [-1, -1, -1, -1])  # four siblings, ranks 0-3
    for _ in range(200):  # rank 1 always accepted, rank 0 never: a tree wider at rank 1
        tr.observe(tree, [0, 1, 2, 3], [1])
    tr._templates.clear()
    assert tr.template(6)[0] == (-1, 0) and (-1, 1) in tr.template(6)
    assert sum(1 for p, r in tr.template(6) if p >= 0 and tr.template(6)[p][1] == 1) >= 2  # grows under rank 1


def test_recycling_tree_respects_max_depth() -> None:
    tr = TokenRecycling(vocab_size=10, k=2)
    tr.update([1, 2, 3], torch.eye(10)[[2, 3, 4]] * 5 + torch.eye(10)[[5, 5, 5]])  # 1->2->3->4, each also ->5
    tree, _ = tr.propose(1, 8)
    assert max(tree.depths) == 3
    tree, _ = tr.propose(1, 8, max_depth=1)
    assert tree.depths == [1, 1] and sorted(tree.tokens) == [2, 5]
