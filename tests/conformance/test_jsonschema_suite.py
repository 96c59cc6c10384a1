"""JSON-Schema-Test-Suite (draft 2020-12) conformance of the JSON Schema -> grammar compiler.

Data: `../shared/data/jsonschema-test-suite` next to the checkout (see its SOURCE.md).

- the required files `tests/draft2020-12/*.json` and the optional non-format files
  `tests/draft2020-12/optional/*.json` are compiled with `formats="annotate"` (the draft 2020-12 default
  vocabulary: `format` is an annotation, which these files assume);
- `tests/draft2020-12/optional/format/*.json` are compiled with `formats="assert"`.

For every schema the compiler either compiles it or refuses it: `UnsupportedKeyword` naming a keyword, or
`UnsatisfiableSchema` for a schema no value satisfies (accepted as a refusal only when the suite lists no
valid instance for it). For every compiled schema, every instance is written in the engine's canonical
form (`canonical_dumps`: declared properties first in declared order, then the rest), compact and
indented by 2 (when the indentation stays within the whitespace bound), and fed to the grammar engine
twice: as text (`Grammar.accepts_text`) and token by token as the bundled model's tokenizer splits it
(each token must be in the mask computed for the state before it, and EOS in the mask at the end). Both
must accept it exactly when the suite says it is valid. A wrong answer is a failure; all failures of a
file are collected and listed together.

The per-file counts (compiled / refused / valid accepted / invalid rejected / failures) are printed as a
table (visible with `pytest -s`). A few files run in the default test run; the whole suite is marked
`slow` (`make test-all`).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import SHARED_DATA, shared_data

from ragloom.errors import GrammarError, UnsupportedKeyword
from ragloom.generation.constrain.grammar import Grammar
from ragloom.generation.constrain.jsonschema import UnsatisfiableSchema, canonical_dumps, schema_to_grammar
from ragloom.generation.constrain.masks import TokenMasks
from ragloom.generation.constrain.processor import Constraint
from ragloom.generation.constrain.vocab import vocab_for

SUITE = SHARED_DATA / "jsonschema-test-suite"
DRAFT = SUITE / "tests" / "draft2020-12"
MAX_WS = 16

# small files, a cross-section of the keywords: part of the default (fast) run
FAST = {
    "type.json", "required.json", "enum.json", "const.json", "additionalProperties.json", "items.json",
    "prefixItems.json", "minimum.json", "maxLength.json", "pattern.json", "anyOf.json", "oneOf.json",
    "not.json", "if-then-else.json", "contains.json", "boolean_schema.json", "defs.json",
    "infinite-loop-detection.json", "optional/format/date.json", "optional/format/ipv4.json",
    "optional/format/uuid.json",
}


def _files() -> list[tuple[str, str]]:
    if not DRAFT.is_dir():
        return []
    out = []
    for p in sorted(DRAFT.glob("*.json")):
        out.append((p.name, "annotate"))
    for p in sorted((DRAFT / "optional").glob("*.json")):
        out.append((f"optional/{p.name}", "annotate"))
    for p in sorted((DRAFT / "optional" / "format").glob("*.json")):
        out.append((f"optional/format/{p.name}", "assert"))
    return out


FILES = _files()
RESULTS: dict[str, dict[str, int]] = {}


def _params() -> list:
    if not FILES:  # one test that reports the missing data (a skip here, a failure in CI)
        return [pytest.param("", "annotate", id="no-data")]
    return [
        pytest.param(name, fmt, id=name, marks=() if name in FAST else pytest.mark.slow) for name, fmt in FILES
    ]


_TOKENIZER: list = []


def _tokenizer():
    """The bundled model's tokenizer (the token-by-token check walks its vocabulary)."""
    if not _TOKENIZER:
        from transformers import AutoTokenizer

        from ragloom.config import EngineSettings
        from ragloom.models import resolve_model

        settings = EngineSettings()
        _TOKENIZER.append(AutoTokenizer.from_pretrained(resolve_model(settings.model, settings.data_dir)))
    return _TOKENIZER[0]


def accepts_tokens(grammar: Grammar, masks: TokenMasks, ids: list[int], eos: int) -> bool:
    """Feed the instance token by token: each token must be in the mask of the state before it, and
    EOS must be allowed at the end (what constrained decoding would let the model write)."""
    matcher = Constraint(grammar, masks, "json_schema").matcher()
    for tid in ids:
        if not matcher.is_allowed(tid):
            return False
        assert matcher.accept_token(tid), f"mask allowed token {tid} that the matcher refuses"
    return matcher.is_allowed(eos)


def _max_ws_run(text: str) -> int:
    runs = re.findall(r"[ \t\n\r]+", text)
    return max((len(r) for r in runs), default=0)


def run_file(name: str, formats: str) -> tuple[dict[str, int], list[str]]:
    cases = json.loads((DRAFT / name).read_text(encoding="utf-8"))
    counts = dict(compiled=0, refused=0, valid_accepted=0, invalid_rejected=0, failures=0)
    failures: list[str] = []
    for case in cases:
        schema, desc = case["schema"], case["description"]
        try:
            jg = schema_to_grammar(schema, formats=formats, max_whitespace=MAX_WS)  # type: ignore[arg-type]
        except UnsupportedKeyword as e:
            if not e.keyword or e.keyword not in str(e):
                failures.append(f"{name} | {desc}: refusal does not name its keyword: {e!r}")
                counts["failures"] += 1
            else:
                counts["refused"] += 1
            continue
        except UnsatisfiableSchema as e:
            if any(t["valid"] for t in case["tests"]):
                failures.append(f"{name} | {desc}: called unsatisfiable ({e}) but the suite has valid instances")
                counts["failures"] += 1
            else:
                counts["refused"] += 1
            continue
        except GrammarError as e:
            failures.append(f"{name} | {desc}: refused without naming a keyword: {e}")
            counts["failures"] += 1
            continue
        counts["compiled"] += 1
        grammar = Grammar.from_lark(jg.grammar)
        tok = _tokenizer()
        vocab = vocab_for(tok, len(tok))
        masks = TokenMasks(grammar, vocab, frozenset({tok.eos_token_id}))
        for t in case["tests"]:
            wrong = None
            for indent in (None, 2):
                text = canonical_dumps(t["data"], schema, indent=indent)
                if indent is not None and _max_ws_run(text) > MAX_WS:
                    continue
                if grammar.accepts_text(text) != t["valid"]:
                    wrong = text
                    break
                ids = tok.encode(text, add_special_tokens=False)
                if accepts_tokens(grammar, masks, ids, tok.eos_token_id) != t["valid"]:
                    wrong = f"(token by token) {text}"
                    break
            if wrong is not None:
                verdict = "rejected a valid" if t["valid"] else "accepted an invalid"
                failures.append(f"{name} | {desc} | {t['description']}: {verdict} instance {wrong[:120]!r}")
                counts["failures"] += 1
            elif t["valid"]:
                counts["valid_accepted"] += 1
            else:
                counts["invalid_rejected"] += 1
    return counts, failures


def _table(results: dict[str, dict[str, int]]) -> str:
    cols = ["compiled", "refused", "valid_accepted", "invalid_rejected", "failures"]
    head = f"{'file':44s} " + " ".join(f"{c:>16s}" for c in cols)
    lines = [head, "-" * len(head)]
    total = dict.fromkeys(cols, 0)
    for name in sorted(results):
        r = results[name]
        lines.append(f"{name:44s} " + " ".join(f"{r[c]:16d}" for c in cols))
        for c in cols:
            total[c] += r[c]
    lines.append("-" * len(head))
    lines.append(f"{'TOTAL':44s} " + " ".join(f"{total[c]:16d}" for c in cols))
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if RESULTS:
        print("\nJSON-Schema-Test-Suite draft 2020-12 conformance (compact and indent=2 forms)")
        print(_table(RESULTS))


@pytest.mark.parametrize("name,formats", _params())
def test_suite_file(name: str, formats: str) -> None:
    shared_data("jsonschema-test-suite/tests/draft2020-12")
    t0 = time.perf_counter()
    counts, failures = run_file(name, formats)
    RESULTS[name] = counts
    print(f"\n{name}: {counts} ({time.perf_counter() - t0:.1f} s)")
    assert not failures, f"{len(failures)} wrong answer(s) in {name}:\n" + "\n".join(failures)


def test_suite_present() -> None:
    """The data must be there: in CI a missing suite fails here instead of skipping the conformance run."""
    assert shared_data("jsonschema-test-suite/SOURCE.md").is_file()
    assert FILES, f"no test files under {DRAFT}"
