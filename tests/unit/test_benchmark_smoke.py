"""The generation benchmarks (generate.py, weights_quality.py): their pure parts without a model, and
end-to-end runs at tiny sizes (slow) that write the JSON they promise. No timing is asserted. Also
text2sql.py's eval / example split (no model)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pydantic
import pytest
from conftest import shared_data

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCH / "generate.py"
QUALITY = BENCH / "weights_quality.py"
sys.path.insert(0, str(BENCH))

import generate  # noqa: E402
import text2sql  # noqa: E402
import weights_quality  # noqa: E402


def _has_weights_setting() -> bool:
    from ragloom.config import EngineSettings

    return "weights" in EngineSettings.model_fields


# --------------------------------------------------------------------------- no model, seconds


def test_weights_support_error_refuses_a_settings_class_without_weights() -> None:
    class Old(pydantic.BaseModel):
        model: str = "x"

    class New(pydantic.BaseModel):
        weights: Literal["auto", "float32", "bf16", "int8", "int4"] | None = "auto"

    reason = generate.weights_support_error(["int4"], Old)
    assert reason is not None and "no `weights` field" in reason and "int4" in reason
    assert generate.weights_support_error(["auto", "int4", "float32"], New) is None
    bad = generate.weights_support_error(["int3"], New)
    assert bad is not None and "int3" in bad


def _result(system: str, scenario: str, kind: str, decode: float, ttft: float, tokens: list[list[int]]) -> generate.Result:
    return generate.Result(
        system=system, scenario=scenario, kind=kind, batch=1, prompt_len=16, new_tokens=8, ttft_ms=ttft,
        decode_tok_s=decode, decode_tok_s_per_seq=decode, wall_s=1.0, runs=[], token_ids=tokens,
    )


def test_ratios_targets_and_table_are_against_llamacpp() -> None:
    scenarios = [
        generate.Scenario("b1", 1, 16, 8, "decode"),
        generate.Scenario("b8", 8, 16, 8, "decode"),
        generate.Scenario("ttft1500", 1, 1500, 2, "ttft"),
    ]
    same, other = [[1, 2, 3]], [[1, 9, 9]]
    results = [
        _result("llamacpp", "b1", "decode", 100.0, 50.0, same),
        _result("llamacpp", "b8", "decode", 200.0, 80.0, same),
        _result("llamacpp", "ttft1500", "ttft", 1.0, 1000.0, same),
        _result("ragloom-int4", "b1", "decode", 120.0, 40.0, same),
        _result("ragloom-int4", "b8", "decode", 250.0, 90.0, other),
        _result("ragloom-int4", "ttft1500", "ttft", 7.0, 800.0, same),
        _result("transformers", "b1", "decode", 20.0, 60.0, same),
    ]
    generate.add_ratios(results)
    by = {(r.system, r.scenario): r for r in results}
    assert by["ragloom-int4", "b1"].decode_vs_llamacpp == pytest.approx(1.2)
    assert by["ragloom-int4", "b8"].decode_vs_llamacpp == pytest.approx(1.25)
    assert by["ragloom-int4", "ttft1500"].ttft_vs_llamacpp == pytest.approx(1.25)
    assert by["ragloom-int4", "ttft1500"].decode_vs_llamacpp is None  # a 2-token run has no decode rate
    assert by["ragloom-int4", "b1"].decode_vs_transformers == pytest.approx(6.0)
    assert by["ragloom-int4", "b8"].greedy_match["llamacpp"]["min_common_prefix"] == 1

    checks = {c["target"]: c for c in generate.verdicts(results, scenarios, "cpu")}
    assert checks["batch-1 decode"]["met"] and checks["1500-token TTFT"]["met"]
    assert not checks["batch-8 decode throughput"]["met"]  # 1.25x < 1.5x
    assert generate.verdicts(results, scenarios, "cuda") == []

    table = generate.format_table(results, scenarios)
    lines = table.splitlines()
    assert "b1 tok/s" in lines[0] and "TTFT 1500 ms" in lines[0] and "x llama.cpp" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["llamacpp", "ragloom-int4", "transformers"]
    assert "1.25x" in lines[3]


def test_model_slug_names_result_files() -> None:
    assert generate.model_slug("smollm2-135m-instruct") == "smollm2"
    assert generate.model_slug("qwen2.5-coder-1.5b") == "qwen2.5-coder-1.5b"
    assert generate.model_slug("/models/My Model/") == "My-Model"


def test_quality_data_selection_is_fixed() -> None:
    questions = weights_quality.load_prompts(shared_data("spec-bench/question.jsonl"), 80)
    assert len(questions) == 80 and questions[0]["question_id"] == 81
    per_category: dict[str, int] = {}
    for q in questions:
        per_category[q["category"]] = per_category.get(q["category"], 0) + 1
    # every Spec-Bench task is represented: 13-14 of each 80-question block
    for task in ("translation", "summarization", "qa", "math_reasoning", "rag"):
        assert 13 <= per_category[task] <= 14


def test_quality_missing_data_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(weights_quality.MissingData, match="spec-bench/question.jsonl"):
        weights_quality.shared_file("spec-bench/question.jsonl", tmp_path)


def test_logit_stats() -> None:
    import torch

    ref = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    test = torch.tensor([[0.0, 1.5, 2.0], [0.0, 3.5, 0.0]])
    stats = weights_quality.LogitStats()
    stats.add(ref, ref)
    assert stats.as_dict()["max_abs_diff"] == 0 and stats.as_dict()["mean_kl"] == pytest.approx(0, abs=1e-7)
    stats.add(ref, test)
    stats.add_top1(ref.argmax(-1), test.argmax(-1))
    d = stats.as_dict()
    assert d["max_abs_diff"] == pytest.approx(3.5) and d["positions"] == 4 and d["mean_kl"] > 0
    assert d["top1_agreement"] == pytest.approx(1 / 2) and d["top1_positions"] == 2


def test_text2sql_split_is_fixed_disjoint_and_stratified() -> None:
    from collections import Counter

    from text2sql_data import CATEGORIES, load_questions

    questions = load_questions(shared_data("text2sql"))
    ev, ex = text2sql.split_halves(questions)
    again = text2sql.split_halves(list(reversed(questions)))  # the input order does not matter
    assert [q.id for q in again[0]] == [q.id for q in ev] and [q.id for q in again[1]] == [q.id for q in ex]
    assert len(ev) == len(ex) == 105
    assert not {q.id for q in ev} & {q.id for q in ex} and {q.id for q in ev} | {q.id for q in ex} == set(range(210))
    # stratified: every (db, category) group, category and database splits as evenly as it can
    for key in (lambda q: (q.db, q.category), lambda q: q.category, lambda q: q.db):
        n_eval, n_example = Counter(map(key, ev)), Counter(map(key, ex))
        for k in n_eval | n_example:
            assert abs(n_eval[k] - n_example[k]) <= 1, k
    # ids 135 and 136 (scholar) share their SQLite gold: they stay in one half
    assert (135 in {q.id for q in ev}) == (136 in {q.id for q in ev})
    text2sql.check_split(ev, ex)
    with pytest.raises(AssertionError):
        text2sql.check_split(ev, [*ex, ev[0]])
    examples = {db: [{"question": q.text("sqlite"), "sql": q.gold["sqlite"][0]} for q in ex if q.db == db]
                for db in {q.db for q in questions}}
    text2sql.check_examples(ev, "sqlite", examples)
    leaked = ev[3]
    examples[leaked.db].append({"question": "another wording", "sql": leaked.gold["sqlite"][0] + ";"})
    with pytest.raises(AssertionError, match="gold SQL"):
        text2sql.check_examples(ev, "sqlite", examples)

    # --limit / --every / --all select from the eval half only
    eval_ids = {q.id for q in ev}
    for argv, n in ((["--limit", "12"], 12), ([], 42), (["--every", "5"], None), (["--all"], 105)):
        picked = text2sql.evaluated_questions(ev, text2sql.parse_args(argv))
        assert {q.id for q in picked} <= eval_ids, argv
        if n is not None:
            assert len(picked) == n, argv
    per_cat = Counter(q.category for q in text2sql.evaluated_questions(ev, text2sql.parse_args([])))
    assert per_cat == dict.fromkeys(CATEGORIES, 7)

    # only the steps from fewshot on see examples, and ground includes them
    assert text2sql.STEPS == ("plain", "link", "grammar", "correct", "fewshot", "ground")
    assert [text2sql.step_options(s, 64, 5.0)["few_shot"] > 0 for s in text2sql.STEPS] == [False] * 4 + [True] * 2
    assert [text2sql.step_options(s, 64, 5.0)["ground_values"] for s in text2sql.STEPS] == [False] * 5 + [True]


def test_text2sql_examples_go_through_the_registry(tmp_path: Path) -> None:
    """The example half's SQLite golds are added with ConnectorRegistry.add_example (the guard checks
    each), and what the registry then holds is what the fewshot step passes to the pipeline."""
    from text2sql_data import GoldCache, ReadOnlyDB, load_questions, sqlite_url

    from ragloom.connectors.registry import ConnectorRegistry

    data = shared_data("text2sql")
    questions = load_questions(data)
    ev, ex = text2sql.split_halves(questions)
    dbs = ["restaurants", "broker"]
    cache = GoldCache(lambda d, db: ReadOnlyDB(d, db, data))
    registry = ConnectorRegistry(None)
    try:
        info = text2sql.register_examples(registry, "sqlite", {db: sqlite_url(db, data) for db in dbs}, dbs, ex, cache)
        assert info["skipped"] == []
        for db in dbs:
            want = [q for q in ex if q.db == db]
            assert info["added"][db] == [q.id for q in want]
            assert registry.examples(db) == [{"question": q.question, "sql": q.gold["sqlite"][0]} for q in want]
        text2sql.check_examples([q for q in ev if q.db in dbs], "sqlite", {db: registry.examples(db) for db in dbs})
    finally:
        registry.close()
        cache.close()


# --------------------------------------------------------------------------- end to end (slow)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=540)


@pytest.mark.slow
def test_generate_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "generate-cpu.json"
    llamacpp = importlib.util.find_spec("llama_cpp") is not None
    # --output keeps the smoke run from overwriting real results in benchmarks/results/. Without
    # llama-cpp-python installed, llamacpp must show up as skipped, with the reason.
    proc = _run([str(SCRIPT), "--quick", "--systems", "ragloom,transformers,llamacpp", "--weights", "float32,int4",
                 "--output", str(out)])
    if not _has_weights_setting():
        # Until quantized weights exist the benchmark must refuse, not time float32 as "int4".
        assert proc.returncode == 2 and "no `weights` field" in proc.stderr, proc.stderr[-3000:]
        assert not out.exists()
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "b1 tok/s" in proc.stdout and "x llama.cpp" in proc.stdout  # the table header

    report = json.loads(out.read_text())
    for key in ("hardware", "software", "settings", "systems", "results", "targets", "skipped", "failed", "notes"):
        assert key in report, key
    assert report["failed"] == {}
    assert report["hardware"]["cpu_cores"] >= 1 and report["hardware"]["threads"] >= 1
    assert report["hardware"]["load_avg_1m_before"] is not None
    assert report["software"]["torch"]
    settings = report["settings"]
    assert settings["quick"] is True and settings["device"] == "cpu" and settings["weights"] == ["float32", "int4"]

    names = ["ragloom-float32", "ragloom-int4", "transformers"] + (["llamacpp"] if llamacpp else [])
    scenarios = [s["name"] for s in settings["scenarios"]]
    assert scenarios == [f"b{b}" for b in settings["batch_sizes"]] + [f"ttft{settings['long_prompt_len']}"]
    rows = {(r["system"], r["scenario"]): r for r in report["results"]}
    assert set(rows) == {(s, sc) for s in names for sc in scenarios}
    for row in rows.values():
        for metric in ("ttft_ms", "decode_tok_s", "wall_s"):
            assert math.isfinite(row[metric]) and row[metric] > 0, (row["system"], row["scenario"], metric)
        assert row["ttft_vs_transformers"] > 0
        assert len(row["runs"]) == settings["repeats"]
    assert rows[("transformers", "b1")]["decode_vs_transformers"] == pytest.approx(1.0)
    # Same float32 weights and greedy decoding: ragloom-float32's tokens should match transformers'.
    match = rows[("ragloom-float32", "b1")]["greedy_match"]["transformers"]
    assert match["sequences"] == 1 and match["min_common_prefix"] >= 1
    if llamacpp:
        assert report["software"]["llama_cpp_python"]
        assert rows[("ragloom-int4", "b1")]["decode_vs_llamacpp"] > 0
        assert {c["target"] for c in report["targets"]} >= {"batch-1 decode", f"{settings['long_prompt_len']}-token TTFT"}
    else:
        assert "llamacpp" in report["skipped"]


@pytest.mark.slow
def test_weights_quality_quick(tmp_path: Path) -> None:
    shared_data("spec-bench/question.jsonl")
    shared_data("scifact/corpus.jsonl")
    out = tmp_path / "quality.json"
    proc = _run([str(QUALITY), "--quick", "--weights", "int4", "--output", str(out)])
    if not _has_weights_setting():
        assert proc.returncode == 2 and "no `weights` field" in proc.stderr, proc.stderr[-3000:]
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ppl vs f32" in proc.stdout

    report = json.loads(out.read_text())
    assert report["failed"] == {}
    settings = report["settings"]
    assert settings["text"]["tokens"] == settings["ppl_tokens"]
    assert len(settings["prompt_source"]["question_ids"]) == settings["prompts"]
    ref, int4 = report["results"]
    assert ref["weights"] == "float32" and int4["weights"] == "int4"
    assert math.isfinite(ref["perplexity"]) and ref["perplexity"] > 1
    # the forward used for the logits is the one the engine decodes with
    assert ref["forward_matches_greedy"] >= 0.9
    assert int4["agreement"]["prompts"] == settings["prompts"]
    assert 0 <= int4["agreement"]["rate"] <= 1
    assert int4["logits"]["positions"] > 0 and math.isfinite(int4["logits"]["max_abs_diff"])
    assert int4["logits"]["top1_positions"] == settings["ppl_tokens"]
    assert set(int4["targets"]) == {"agreement", "perplexity"}
