#!/usr/bin/env python
"""Constrained-decoding mask speed, MaskBench-style: ragloom vs xgrammar vs llguidance vs outlines-core.

All systems in one run, with the same tokenizer (the bundled SmolLM2-135M's, 49,152 ids) and the same
JSON Schemas: REALISTIC (below: records, orders with nested arrays, enums, optional fields, recursion
through $ref, string formats, tool calls, RAG answers) and every draft 2020-12 case of the
JSON-Schema-Test-Suite (`../shared/data/jsonschema-test-suite`) that has a valid instance.

For each schema and system:
- compile, then time-to-first-mask (TTFM) = compile + matcher + the first full-vocabulary mask;
- walk a valid instance, serialized canonically (`jsonschema.canonical_dumps`, compact) and tokenized
  with the tokenizer: at every position compute the full token mask (timed), check the next token is
  allowed, accept it; at the end the mask must allow EOS. ragloom is walked twice: the first pass is
  cold (its per-state mask cache is empty except the first state), the second warm (all cache hits).
- agreement: at every position of schemas that ragloom, xgrammar and llguidance all walk, the allowed
  sets are compared; differences are classified (whitespace, string escapes, other) and the "other"
  ones are listed with the schema, the prefix and the tokens.
Batched masks: 32 sequences with 32 different schemas step together; per step, every active
sequence's mask is computed into one [32, 1536] int32 bitmask (serial loop for all systems; also
xgrammar's BatchGrammarMatcher and llguidance's LLExecutor with --threads threads).

Whitespace (default --whitespace flexible) is configured alike everywhere: at most 16 of [ \\t\\n\\r]
between tokens (ragloom's default, xgrammar any_whitespace + max_whitespace_cnt=16, llguidance
whitespace_pattern [\\x20\\x0A\\x0D\\x09]{1,16}, outlines-core whitespace_pattern [ \\t\\n\\r]{0,16}).
`--whitespace compact` allows none anywhere. xgrammar runs with strict_mode=False (JSON Schema's own
semantics: properties not mentioned are allowed unless additionalProperties says otherwise, as in
ragloom and llguidance). outlines-core compiles in a worker process, killed after --compile-timeout.

    python benchmarks/constrain.py                    # everything, writes benchmarks/results/constrain-cpu.json
    python benchmarks/constrain.py --quick            # realistic schemas + 20 suite cases, smoke test
    python benchmarks/constrain.py --systems ragloom,xgrammar --no-suite
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import re
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from generate import _version, busy_cores, hardware_info
from results_io import write_results

ALL_SYSTEMS = ("ragloom", "xgrammar", "llguidance", "outlines")
AGREEMENT_PEERS = ("xgrammar", "llguidance")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MAX_WS = 16  # ragloom's default bound on whitespace between two tokens (schema_to_grammar max_whitespace)
_REPO = Path(__file__).resolve().parents[1]
_SUITE = Path("data/jsonschema-test-suite/tests/draft2020-12")
DEFAULT_SUITE = next(
    (p for p in (_REPO / "shared" / _SUITE, _REPO.parent / "shared" / _SUITE) if p.is_dir()),
    _REPO.parent / "shared" / _SUITE,
)

# --------------------------------------------------------------------------- schemas


@dataclass
class BenchSchema:
    name: str
    schema: Any
    instances: list[Any] = field(default_factory=list)  # valid instances, best candidates first
    source: str = "realistic"  # "realistic" | "suite"


_ADDRESS = {
    "type": "object",
    "properties": {
        "street": {"type": "string", "minLength": 1, "maxLength": 80},
        "city": {"type": "string", "minLength": 1},
        "postal_code": {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"},
        "country": {"type": "string", "enum": ["US", "CA", "MX", "GB", "FR", "DE"]},
    },
    "required": ["street", "city", "country"],
    "additionalProperties": False,
}

REALISTIC: list[BenchSchema] = [
    BenchSchema(
        "person",
        {
            "type": "object",
            "properties": {
                "first_name": {"type": "string", "minLength": 1, "maxLength": 40},
                "last_name": {"type": "string", "minLength": 1, "maxLength": 40},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "email": {"type": "string", "format": "email"},
                "phone": {"type": "string", "pattern": "^\\+?[0-9]{7,15}$"},
                "is_active": {"type": "boolean"},
            },
            "required": ["first_name", "last_name", "age", "is_active"],
            "additionalProperties": False,
        },
        [
            {
                "first_name": "Ada",
                "last_name": "Lovelace",
                "age": 36,
                "email": "ada@example.com",
                "is_active": False,
            }
        ],
    ),
    BenchSchema(
        "order",
        {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
                "customer": {
                    "type": "object",
                    "properties": {"id": {"type": "integer", "minimum": 1}, "name": {"type": "string"}},
                    "required": ["id", "name"],
                    "additionalProperties": False,
                },
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 20,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                            "unit_price": {"type": "number", "minimum": 0},
                        },
                        "required": ["sku", "quantity", "unit_price"],
                        "additionalProperties": False,
                    },
                },
                "total": {"type": "number", "minimum": 0},
                "status": {"enum": ["pending", "paid", "shipped", "delivered", "cancelled"]},
            },
            "required": ["order_id", "customer", "items", "total", "status"],
            "additionalProperties": False,
        },
        [
            {
                "order_id": "ORD-004211",
                "customer": {"id": 17, "name": "Grace Hopper"},
                "items": [
                    {"sku": "KBD-1001", "quantity": 2, "unit_price": 49.5},
                    {"sku": "MSE-2002", "quantity": 1, "unit_price": 19.99},
                ],
                "total": 118.99,
                "status": "paid",
            }
        ],
    ),
    BenchSchema(
        "tree",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "integer"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    },
                    "required": ["value"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/node",
        },
        [{"value": 1, "children": [{"value": 2, "children": [{"value": 4}]}, {"value": 3, "children": []}]}],
    ),
    BenchSchema(
        "linked_list",
        {
            "$defs": {
                "cell": {
                    "type": "object",
                    "properties": {
                        "head": {"type": "string"},
                        "tail": {"anyOf": [{"$ref": "#/$defs/cell"}, {"type": "null"}]},
                    },
                    "required": ["head", "tail"],
                    "additionalProperties": False,
                }
            },
            "$ref": "#/$defs/cell",
        },
        [{"head": "a", "tail": {"head": "b", "tail": {"head": "c", "tail": None}}}],
    ),
    BenchSchema(
        "event",
        {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "title": {"type": "string", "maxLength": 100},
                "date": {"type": "string", "format": "date"},
                "start": {"type": "string", "format": "time"},
                "created_at": {"type": "string", "format": "date-time"},
                "location": {
                    "type": "object",
                    "properties": {
                        "lat": {"type": "number", "minimum": -90, "maximum": 90},
                        "lon": {"type": "number", "minimum": -180, "maximum": 180},
                    },
                    "required": ["lat", "lon"],
                    "additionalProperties": False,
                },
            },
            "required": ["id", "title", "date"],
            "additionalProperties": False,
        },
        [
            {
                "id": "123e4567-e89b-12d3-a456-426614174000",
                "title": "Launch review",
                "date": "2026-03-14",
                "start": "09:30:00Z",
                "created_at": "2026-02-01T12:00:00Z",
                "location": {"lat": 48.8566, "lon": 2.3522},
            }
        ],
    ),
    BenchSchema(
        "user_profile",
        {
            "type": "object",
            "properties": {
                "username": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,15}$"},
                "display_name": {"type": ["string", "null"]},
                "address": _ADDRESS,
                "preferences": {
                    "type": "object",
                    "properties": {
                        "theme": {"enum": ["light", "dark", "system"]},
                        "language": {"type": "string", "enum": ["en", "fr", "de", "es"]},
                        "notifications": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 5},
            },
            "required": ["username", "display_name"],
            "additionalProperties": False,
        },
        [
            {
                "username": "ada_l",
                "display_name": None,
                "address": {"street": "12 Baker Street", "city": "London", "country": "GB"},
                "preferences": {"theme": "dark", "notifications": True},
                "tags": ["math", "engines"],
            }
        ],
    ),
    BenchSchema(
        "api_result",
        {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "ok": {"const": True},
                        "data": {
                            "type": "object",
                            "properties": {"count": {"type": "integer"}},
                            "required": ["count"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["ok", "data"],
                    "additionalProperties": False,
                },
                {
                    "type": "object",
                    "properties": {
                        "ok": {"const": False},
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "integer", "minimum": 400, "maximum": 599},
                                "message": {"type": "string"},
                            },
                            "required": ["code", "message"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["ok", "error"],
                    "additionalProperties": False,
                },
            ]
        },
        [{"ok": False, "error": {"code": 404, "message": "no such collection"}}],
    ),
    BenchSchema(
        "geojson_point",
        {
            "type": "object",
            "properties": {
                "type": {"const": "Point"},
                "coordinates": {
                    "type": "array",
                    "prefixItems": [{"type": "number"}, {"type": "number"}],
                    "items": {"type": "number"},
                    "minItems": 2,
                    "maxItems": 3,
                },
            },
            "required": ["type", "coordinates"],
            "additionalProperties": False,
        },
        [{"type": "Point", "coordinates": [-122.4194, 37.7749, 16]}],
    ),
    BenchSchema(
        "invoice",
        {
            "type": "object",
            "properties": {
                "number": {"type": "integer", "minimum": 1},
                "currency": {"enum": ["USD", "EUR", "GBP", "JPY"]},
                "lines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "description": {"type": "string", "minLength": 1},
                            "hours": {"type": "number", "exclusiveMinimum": 0},
                            "rate": {"type": "number", "minimum": 0},
                        },
                        "required": ["description", "hours", "rate"],
                        "additionalProperties": False,
                    },
                },
                "paid": {"type": "boolean"},
                "notes": {"type": "string"},
            },
            "required": ["number", "currency", "lines", "paid"],
            "additionalProperties": False,
        },
        [
            {
                "number": 1024,
                "currency": "EUR",
                "lines": [
                    {"description": "Design review", "hours": 3.5, "rate": 120},
                    {"description": "Fixes", "hours": 1, "rate": 95.5},
                ],
                "paid": False,
            }
        ],
    ),
    BenchSchema(
        "recipe",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                "ingredients": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "amount": {"type": "number"},
                            "unit": {"enum": ["g", "kg", "ml", "l", "tsp", "tbsp", "cup", "piece"]},
                        },
                        "required": ["name", "amount", "unit"],
                        "additionalProperties": False,
                    },
                },
                "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "vegetarian": {"type": "boolean"},
            },
            "required": ["title", "servings", "ingredients", "steps"],
            "additionalProperties": False,
        },
        [
            {
                "title": "Pancakes",
                "servings": 4,
                "ingredients": [
                    {"name": "flour", "amount": 200, "unit": "g"},
                    {"name": "milk", "amount": 300, "unit": "ml"},
                    {"name": "egg", "amount": 2, "unit": "piece"},
                ],
                "steps": ["Whisk everything together.", "Cook on a hot pan."],
                "vegetarian": True,
            }
        ],
    ),
    BenchSchema(
        "log_entry",
        {
            "type": "object",
            "properties": {
                "timestamp": {"type": "string", "format": "date-time"},
                "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
                "logger": {"type": "string"},
                "message": {"type": "string"},
                "context": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["timestamp", "level", "message"],
            "additionalProperties": False,
        },
        [
            {
                "timestamp": "2026-11-23T08:15:00Z",
                "level": "ERROR",
                "logger": "ragloom.server",
                "message": "deadline exceeded",
                "context": {"request_id": "r-42", "peer": "10.0.0.7"},
            }
        ],
    ),
    BenchSchema(
        "tool_call",
        {
            "type": "object",
            "properties": {
                "name": {"const": "search_documents"},
                "arguments": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "minLength": 1},
                        "collection": {"type": "string"},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
                        "filters": {
                            "type": "object",
                            "properties": {"year": {"type": "integer"}, "lang": {"enum": ["en", "fr", "de"]}},
                            "additionalProperties": False,
                        },
                    },
                    "required": ["query", "top_k"],
                    "additionalProperties": False,
                },
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        },
        [
            {
                "name": "search_documents",
                "arguments": {
                    "query": "binary quantization recall",
                    "collection": "papers",
                    "top_k": 5,
                    "filters": {"year": 2024},
                },
            }
        ],
    ),
    BenchSchema(
        "movie",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "year": {"type": "integer", "minimum": 1888, "maximum": 2030},
                "genres": {
                    "type": "array",
                    "items": {"enum": ["drama", "comedy", "action", "sci-fi", "horror", "documentary"]},
                    "minItems": 1,
                    "maxItems": 3,
                },
                "rating": {"type": "number", "minimum": 0, "maximum": 10},
                "cast": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"actor": {"type": "string"}, "role": {"type": "string"}},
                        "required": ["actor", "role"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["title", "year", "genres"],
            "additionalProperties": False,
        },
        [
            {
                "title": "Metropolis",
                "year": 1927,
                "genres": ["sci-fi", "drama"],
                "rating": 8.3,
                "cast": [{"actor": "Brigitte Helm", "role": "Maria"}],
            }
        ],
    ),
    BenchSchema(
        "rag_answer",
        {
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "citations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "doc_id": {"type": "integer", "minimum": 0},
                            "quote": {"type": "string", "maxLength": 200},
                        },
                        "required": ["doc_id", "quote"],
                        "additionalProperties": False,
                    },
                },
                "confidence": {"enum": ["low", "medium", "high"]},
                "refused": {"type": "boolean"},
            },
            "required": ["answer", "citations", "confidence"],
            "additionalProperties": False,
        },
        [
            {
                "answer": "Binary codes cut memory 32x; rescoring recovers most of the recall.",
                "citations": [
                    {"doc_id": 3, "quote": "32x smaller"},
                    {"doc_id": 7, "quote": "rescoring with int8"},
                ],
                "confidence": "high",
            }
        ],
    ),
    BenchSchema(
        "sql_answer",
        {
            "type": "object",
            "properties": {
                "sql": {"type": "string", "pattern": "^SELECT "},
                "tables": {
                    "type": "array",
                    "items": {"enum": ["customers", "orders", "products", "order_items"]},
                    "uniqueItems": True,
                },
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
            "required": ["sql", "tables"],
            "additionalProperties": False,
        },
        [{"sql": "SELECT name FROM customers WHERE id = 3", "tables": ["customers"], "limit": 10}],
    ),
    BenchSchema(
        "int_list",
        {
            "type": "array",
            "items": {"type": "integer", "minimum": -1000, "maximum": 1000},
            "minItems": 1,
            "maxItems": 16,
        },
        [[3, -14, 159, 26, 535, 89, 79]],
    ),
    BenchSchema(
        "classification",
        {
            "type": "object",
            "properties": {
                "label": {"enum": ["positive", "negative", "neutral"]},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            },
            "required": ["label", "score"],
            "additionalProperties": False,
        },
        [{"label": "positive", "score": 0.92, "keywords": ["fast", "reliable"]}],
    ),
    BenchSchema(
        "config",
        {
            "type": "object",
            "properties": {
                "host": {"type": "string", "format": "hostname"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tls": {"type": "boolean"},
                "timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                "log_level": {"enum": ["debug", "info", "warning", "error"]},
                "proxy": {"type": ["string", "null"]},
            },
            "required": ["host", "port", "tls"],
            "additionalProperties": False,
        },
        [
            {
                "host": "db.internal",
                "port": 5432,
                "tls": True,
                "timeout_s": 2.5,
                "retries": 3,
                "log_level": "info",
                "proxy": None,
            }
        ],
    ),
]


def load_suite(folder: Path = DEFAULT_SUITE) -> list[BenchSchema]:
    """Every draft 2020-12 test case with a valid instance (the required tests; not optional/)."""
    out: list[BenchSchema] = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        for i, case in enumerate(json.loads(path.read_text())):
            valid = [t["data"] for t in case["tests"] if t["valid"]]
            if valid:
                out.append(BenchSchema(f"suite/{path.stem}#{i}", case["schema"], valid, source="suite"))
    return out


def load_tokenizer(model: str | None, data_dir: Path | None) -> tuple[Any, Path]:
    from transformers import AutoTokenizer

    from ragloom.config import BUNDLED_LLM, default_data_dir
    from ragloom.models import resolve_model

    folder = resolve_model(model or BUNDLED_LLM, data_dir or default_data_dir())
    return AutoTokenizer.from_pretrained(folder), folder


# --------------------------------------------------------------------------- systems


class CompileFailed(Exception):
    """A system refused or could not compile a schema; kind is 'error', 'timeout' or 'crash'."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def _bit(row_u8: np.ndarray, token: int) -> bool:
    return bool((row_u8[token >> 3] >> (token & 7)) & 1)


def _unpack(row_i32: np.ndarray, vocab: int) -> np.ndarray:
    return np.unpackbits(row_i32.view(np.uint8), count=vocab, bitorder="little").astype(bool)


class RagloomSystem:
    """ragloom's engine path: compile_constraint (caches cleared first), GrammarMatcher.mask()."""

    name = "ragloom"

    def __init__(
        self, tokenizer: Any, vocab: int, eos: frozenset[int], max_ws: int, timeout_s: float, cold_lexer: bool = False
    ) -> None:
        from ragloom.generation.constrain import grammar, lexer_tables, processor
        from ragloom.generation.constrain.vocab import vocab_for

        self.grammar_mod, self.processor, self.lexer_tables = grammar, processor, lexer_tables
        self.cold_lexer = cold_lexer
        self.tokenizer, self.vocab, self.eos, self.max_ws, self.timeout_s = (
            tokenizer,
            vocab,
            eos,
            max_ws,
            timeout_s,
        )
        self.token_vocab = vocab_for(tokenizer, vocab)  # per tokenizer, once, like the peers' tokenizer info
        self.version = _version("ragloom")
        self.notes = (
            f"compile_constraint('json_schema', strict=True, timeout_s={timeout_s:g}) with its caches cleared "
            "(processor._COMPILED, grammar._CACHE"
            + (", and the process-wide lexer tables: every schema as in a new process)" if cold_lexer else
               "; the process-wide lexer tables of terminals seen in earlier schemas are kept, as in a server)")
            + "; mask = GrammarMatcher.mask() copied into the bitmask row"
            + (
                ""
                if max_ws == MAX_WS
                else f"; max_whitespace={max_ws} via schema_to_grammar + TokenMasks (same steps)"
            )
        )

    def compile(self, schema: Any) -> tuple[Any, float]:
        from ragloom.errors import CompileTimeout, RagloomError

        self.processor._COMPILED.clear()
        self.grammar_mod._CACHE.clear()
        if self.cold_lexer:
            self.lexer_tables.clear()
        t0 = time.perf_counter()
        try:
            if self.max_ws == MAX_WS:
                c = self.processor.compile_constraint(
                    "json_schema",
                    schema,
                    self.tokenizer,
                    self.vocab,
                    self.eos,
                    strict=True,
                    timeout_s=self.timeout_s,
                )
            else:
                c = self._compile_ws(schema, t0)
        except CompileTimeout as e:
            raise CompileFailed(f"CompileTimeout: {e}", "timeout") from None
        except RagloomError as e:
            raise CompileFailed(f"{type(e).__name__}: {e}") from None
        except Exception as e:  # anything else is a bug in the engine, reported as a crash
            raise CompileFailed(f"{type(e).__name__}: {e}", "crash") from None
        return c, time.perf_counter() - t0

    def _compile_ws(self, schema: Any, started: float) -> Any:
        """compile_constraint's steps with another whitespace bound (it has no parameter for it)."""
        from ragloom.generation.constrain.jsonschema import schema_to_grammar
        from ragloom.generation.constrain.masks import TokenMasks
        from ragloom.generation.constrain.processor import Constraint

        jg = schema_to_grammar(
            schema, strict=True, max_whitespace=self.max_ws, deadline=started + self.timeout_s
        )
        g = self.grammar_mod.compile_grammar(jg.grammar)
        masks = TokenMasks(g, self.token_vocab, self.eos)
        masks.mask(g.initial)
        return Constraint(g, masks, "json_schema", jg.warnings, time.perf_counter() - started)

    def matcher(self, compiled: Any) -> Any:
        return compiled.matcher()

    def fill(self, m: Any, bitmask: np.ndarray, row: int) -> None:
        bitmask[row].view(np.uint8)[:] = m.mask()

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.accept_token(token))

    def misses(self, compiled: Any) -> int:
        return int(compiled.masks.misses)

    def close(self) -> None:
        pass


class XGrammarSystem:
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab: int, flexible: bool, threads: int) -> None:
        import torch
        import xgrammar as xgr

        self.xgr, self.torch = xgr, torch
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.kwargs: dict[str, Any] = (
            {"any_whitespace": True, "max_whitespace_cnt": MAX_WS}
            if flexible
            else {"any_whitespace": False, "separators": (",", ":")}
        )
        self.batch = xgr.BatchGrammarMatcher(max_threads=threads)
        self.threads = threads
        self._tensors: dict[int, Any] = {}
        self.version = _version("xgrammar")
        self.notes = (
            f"GrammarCompiler(max_threads=1, cache_enabled=False).compile_json_schema(strict_mode=False, "
            f"{', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())}); GrammarMatcher.fill_next_token_bitmask; "
            f"batch: BatchGrammarMatcher(max_threads={threads}).batch_fill_next_token_bitmask"
        )

    def _tensor(self, bitmask: np.ndarray) -> Any:
        t = self._tensors.get(id(bitmask))
        if t is None:
            t = self._tensors[id(bitmask)] = self.torch.from_numpy(bitmask)  # shares the memory
        return t

    def compile(self, schema: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            cg = self.compiler.compile_json_schema(json.dumps(schema), strict_mode=False, **self.kwargs)
        except Exception as e:
            raise CompileFailed(f"{type(e).__name__}: {str(e)[:300]}") from None
        return cg, time.perf_counter() - t0

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m: Any, bitmask: np.ndarray, row: int) -> None:
        m.fill_next_token_bitmask(self._tensor(bitmask), row)

    def fill_batch(self, ms: list[Any], bitmask: np.ndarray, rows: list[int]) -> None:
        self.batch.batch_fill_next_token_bitmask(ms, self._tensor(bitmask), rows)

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.accept_token(token))

    def close(self) -> None:
        self._tensors.clear()


class LLGuidanceSystem:
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab: int, flexible: bool, threads: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.numpy as lnp

        self.llg, self.lnp = llguidance, lnp
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        self.options: dict[str, Any] = (
            {"whitespace_pattern": rf"[\x20\x0A\x0D\x09]{{1,{MAX_WS}}}"}
            if flexible
            else {"whitespace_flexible": False}
        )
        self.executor = llguidance.LLExecutor(num_threads=threads)
        self.threads = threads
        self.version = _version("llguidance")
        self.notes = (
            f"LLMatcher(grammar_from_json_schema(defaults={self.options})), defaults otherwise (no lenient, "
            "no coerce_one_of); matcher = deep_copy of the compiled one; numpy.fill_next_token_bitmask; "
            f"batch: LLExecutor(num_threads={threads}) + fill_next_token_bitmask_par"
        )

    def compile(self, schema: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults=self.options)
        except Exception as e:
            raise CompileFailed(f"{type(e).__name__}: {e}") from None
        m = self.llg.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise CompileFailed(m.get_error()[:300])
        return m, time.perf_counter() - t0

    def matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def fill(self, m: Any, bitmask: np.ndarray, row: int) -> None:
        self.lnp.fill_next_token_bitmask(m, bitmask, row)

    def fill_batch(self, ms: list[Any], bitmask: np.ndarray, rows: list[int]) -> None:
        self.lnp.fill_next_token_bitmask_par(self.executor, list(zip(ms, rows, strict=True)), bitmask)

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.consume_token(token)) and not m.is_error()

    def close(self) -> None:
        pass


def _outlines_worker(conn: Any, vocabulary: bytes, whitespace: str | None) -> None:
    """Child process: compile schema JSON texts to outlines-core Indexes, send them back pickled."""
    import outlines_core as oc

    vocab = pickle.loads(vocabulary)
    while True:
        text = conn.recv()
        if text is None:
            return
        t0 = time.perf_counter()
        try:
            regex = oc.json_schema.build_regex_from_schema(text, whitespace_pattern=whitespace)
            index = oc.Index(regex, vocab)
            conn.send(("ok", time.perf_counter() - t0, pickle.dumps(index)))
        except BaseException as e:  # pyo3 panics are BaseException
            conn.send(("error", time.perf_counter() - t0, f"{type(e).__name__}: {str(e)[:300]}"))


class OutlinesSystem:
    """outlines-core: schema -> regex -> Index (in a worker process, killed after the time limit) -> Guide."""

    name = "outlines"

    def __init__(self, tokenizer: Any, vocab: int, flexible: bool, timeout_s: float) -> None:
        import outlines_core as oc

        from ragloom.generation.constrain.vocab import token_bytes

        self.oc = oc
        eos = tokenizer.eos_token_id
        tokens: dict[bytes, list[int]] = {}
        for tid, b in enumerate(token_bytes(tokenizer, vocab)):  # raw bytes of each id; None = special
            if b is not None and tid != eos:
                tokens.setdefault(b, []).append(tid)
        self.vocabulary = pickle.dumps(oc.Vocabulary(eos, tokens))
        self.words = vocab // 32 + (vocab % 32 > 0)
        self.whitespace = rf"[ \t\n\r]{{0,{MAX_WS}}}" if flexible else ""
        self.timeout_s = timeout_s
        self.ctx = mp.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None
        self.version = _version("outlines_core")
        self.notes = (
            f"json_schema.build_regex_from_schema(whitespace_pattern={self.whitespace!r}) + Index in a worker "
            f"process (compile time measured there; killed after {timeout_s:g}s = timeout); Guide.write_mask_into; "
            "Vocabulary built from the tokenizer's raw token bytes"
        )

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_outlines_worker, args=(child, self.vocabulary, self.whitespace), daemon=True
        )
        self.proc.start()
        self.conn = parent

    def compile(self, schema: Any) -> tuple[Any, float]:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(json.dumps(schema))
        if not self.conn.poll(self.timeout_s + 5.0):  # + the worker's own start-up
            self.proc.kill()
            self.proc.join()
            self.proc = None
            raise CompileFailed(f"no Index after {self.timeout_s:g}s", "timeout")
        status, seconds, payload = self.conn.recv()
        if status != "ok":
            raise CompileFailed(payload)
        if seconds > self.timeout_s:
            raise CompileFailed(f"Index took {seconds:.1f}s, over {self.timeout_s:g}s", "timeout")
        return pickle.loads(payload), seconds

    def matcher(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def fill(self, m: Any, bitmask: np.ndarray, row: int) -> None:
        m.write_mask_into(bitmask[row].ctypes.data, self.words, 4)

    def accept(self, m: Any, token: int) -> bool:
        try:
            m.advance(token, return_tokens=False)
        except Exception:
            return False
        return True

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
        self.proc = None


# --------------------------------------------------------------------------- measuring


@dataclass
class Walk:
    times: list[float]  # seconds per mask, one per position (the tokens, then the end)
    complete: bool  # every token was in the mask and accepted, and EOS was allowed at the end
    failure: str | None = None
    masks: list[np.ndarray] | None = None  # bool [V] per position, when recorded
    misses: list[bool] | None = None  # ragloom: that position's mask was computed, not cached


def walk(
    system: Any, compiled: Any, tokens: list[int], eos: frozenset[int], vocab: int, record: bool = False
) -> Walk:
    words = vocab // 32 + (vocab % 32 > 0)
    bitmask = np.zeros((1, words), np.int32)
    row = bitmask[0].view(np.uint8)
    m = system.matcher(compiled)
    counting = hasattr(system, "misses")
    times: list[float] = []
    masks: list[np.ndarray] | None = [] if record else None
    misses: list[bool] | None = [] if counting else None
    failure = None
    for i in range(len(tokens) + 1):
        before = system.misses(compiled) if counting else 0
        t0 = time.perf_counter()
        system.fill(m, bitmask, 0)
        times.append(time.perf_counter() - t0)
        if misses is not None:
            misses.append(system.misses(compiled) > before)
        if masks is not None:
            masks.append(_unpack(bitmask[0], vocab))
        if i == len(tokens):
            if not any(_bit(row, e) for e in eos if e < vocab):
                failure = "EOS not allowed after the whole instance"
            break
        t = tokens[i]
        if not _bit(row, t):
            failure = f"token {i} (id {t}) not in the mask"
            break
        if not system.accept(m, t):
            failure = f"token {i} (id {t}) refused by accept"
            break
    return Walk(times, failure is None, failure, masks, misses)


def stats_us(seconds: list[float]) -> dict[str, float | int | None]:
    if not seconds:
        return {"n": 0, "avg": None, "p50": None, "p99": None, "max": None}
    a = np.asarray(seconds) * 1e6
    return {
        "n": int(a.size),
        "avg": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def stats_ms(seconds: list[float]) -> dict[str, float | int | None]:
    if not seconds:
        return {"n": 0, "avg": None, "p50": None, "p99": None, "max": None}
    a = np.asarray(seconds) * 1e3
    return {
        "n": int(a.size),
        "avg": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def instance_texts(s: BenchSchema) -> list[str]:
    """Each valid instance, written as ragloom writes JSON for this schema (compact)."""
    from ragloom.generation.constrain.jsonschema import canonical_dumps

    out = []
    for inst in s.instances:
        try:
            out.append(canonical_dumps(inst, s.schema))
        except Exception:
            out.append(json.dumps(inst, separators=(",", ":"), ensure_ascii=False))
    return out


def pick_instance(s: BenchSchema, constraint: Any) -> tuple[str, bool]:
    """The longest instance text ragloom's grammar accepts (True), else the longest one (False)."""
    texts = sorted(instance_texts(s), key=len, reverse=True)
    if constraint is not None:
        for t in texts:
            if constraint.grammar.accepts_text(t):
                return t, True
    return texts[0], False


# ---- agreement


def token_text(vocab_texts: list[str | None], tid: int) -> str:
    t = vocab_texts[tid] if tid < len(vocab_texts) else None
    return t if t is not None else f"<id {tid}: special/partial UTF-8>"


_WS = set(" \t\n\r")


def token_class(text: str | None) -> str:
    """Why a token may be allowed by one system and not another, by policy rather than by the schema:
    'charset' = a special token, a partial UTF-8 byte sequence (ragloom never allows those), a backslash
    (ragloom allows only json.dumps' escapes) or a control/non-ASCII character; 'whitespace' = holds
    whitespace; 'other' = none of these: the systems disagree on what the schema allows."""
    if text is None or "\\" in text or any(not (0x20 <= ord(c) < 0x7F) for c in text if c not in _WS):
        return "charset"
    if _WS & set(text):
        return "whitespace"
    return "other"


@dataclass
class Agreement:
    """ragloom's masks vs one peer's; every other system that walked the schema is the referee for the
    'other' differences: 'peer alone' = the referees side with ragloom on every such token, 'ragloom
    alone' = on at least one token they all side with the peer (look there for ragloom bugs)."""

    peer: str
    schemas: int = 0
    positions: int = 0
    identical: int = 0
    by_class: Counter = field(default_factory=Counter)
    verdicts: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        name: str,
        tokens: list[int],
        masks: dict[str, list[np.ndarray]],
        classes: np.ndarray,
        vocab_texts: list[str | None],
        tokenizer: Any,
        max_examples: int,
    ) -> None:
        self.schemas += 1
        ours, theirs = masks["ragloom"], masks[self.peer]
        referees = [m for n, m in masks.items() if n not in ("ragloom", self.peer)]
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            self.positions += 1
            d = a ^ b
            if not d.any():
                self.identical += 1
                continue
            diff = np.nonzero(d)[0]
            kinds = set(classes[diff].tolist())
            cls = "other" if 2 in kinds else ("charset" if 0 in kinds else "whitespace")
            self.by_class[cls] += 1
            if cls != "other":
                continue
            other = diff[classes[diff] == 2]
            verdict = "undecided"
            if referees:
                side_ours = all((r[i][other] == a[other]).all() for r in referees)
                side_peer = any(all(r[i][t] == b[t] for r in referees) for t in other)
                verdict = "ragloom alone" if side_peer else ("peer alone" if side_ours else "undecided")
            self.verdicts[verdict] += 1
            keep = sum(1 for e in self.examples if e["verdict"] == verdict)
            if keep < (max_examples if verdict != "peer alone" else max(3, max_examples // 8)):
                only_ours = other[a[other]]
                only_theirs = other[b[other]]
                self.examples.append(
                    {
                        "schema": name,
                        "position": i,
                        "verdict": verdict,
                        "prefix": tokenizer.decode(tokens[:i]),
                        "next_token": token_text(vocab_texts, tokens[i]) if i < len(tokens) else "<end>",
                        "only_ragloom": {
                            "count": int(only_ours.size),
                            "tokens": [token_text(vocab_texts, int(t)) for t in only_ours[:12]],
                        },
                        f"only_{self.peer}": {
                            "count": int(only_theirs.size),
                            "tokens": [token_text(vocab_texts, int(t)) for t in only_theirs[:12]],
                        },
                    }
                )

    def to_json(self) -> dict[str, Any]:
        p = max(self.positions, 1)
        return {
            "peer": self.peer,
            "schemas": self.schemas,
            "positions": self.positions,
            "identical": self.identical,
            "identical_fraction": self.identical / p,
            "differing_by_class": dict(self.by_class),
            "other_by_verdict": dict(self.verdicts),
            "other_examples": self.examples,
        }


# ---- batches


def run_batch(
    system: Any, compiled: list[Any], tokens: list[list[int]], vocab: int, parallel: bool
) -> dict[str, Any]:
    """All sequences step together: per step, each active sequence's mask into its bitmask row (timed
    together), then each accepts its next token (timed apart). A sequence takes len(tokens) + 1 masks."""
    words = vocab // 32 + (vocab % 32 > 0)
    bitmask = np.zeros((len(compiled), words), np.int32)
    matchers = [system.matcher(c) for c in compiled]
    pos = [0] * len(compiled)
    step_s: list[float] = []
    accept_s: list[float] = []
    active_counts: list[int] = []
    while True:
        active = [i for i in range(len(compiled)) if pos[i] <= len(tokens[i])]
        if not active:
            break
        t0 = time.perf_counter()
        if parallel:
            system.fill_batch([matchers[i] for i in active], bitmask, active)
        else:
            for i in active:
                system.fill(matchers[i], bitmask, i)
        step_s.append(time.perf_counter() - t0)
        active_counts.append(len(active))
        t0 = time.perf_counter()
        for i in active:
            if pos[i] < len(tokens[i]) and not system.accept(matchers[i], tokens[i][pos[i]]):
                raise RuntimeError(f"{system.name}: batch sequence {i} refused token {pos[i]}")
            pos[i] += 1
        accept_s.append(time.perf_counter() - t0)
    full = [s for s, n in zip(step_s, active_counts, strict=True) if n == len(compiled)]
    return {
        "sequences": len(compiled),
        "steps": len(step_s),
        "mean_active": statistics.fmean(active_counts),
        "step_ms": stats_ms(step_s),
        "full_batch_step_ms": stats_ms(full),
        "accept_ms_per_step": stats_ms(accept_s),
        "total_mask_s": sum(step_s),
        "mask_us_per_sequence_step": 1e6 * sum(step_s) / max(sum(active_counts), 1),
    }


# --------------------------------------------------------------------------- running


def make_system(name: str, args: argparse.Namespace, tokenizer: Any, vocab: int, eos: frozenset[int]) -> Any:
    flexible = args.whitespace == "flexible"
    if name == "ragloom":
        return RagloomSystem(tokenizer, vocab, eos, MAX_WS if flexible else 0, args.compile_timeout, args.cold_lexer)
    if name == "xgrammar":
        return XGrammarSystem(tokenizer, vocab, flexible, args.threads)
    if name == "llguidance":
        return LLGuidanceSystem(tokenizer, vocab, flexible, args.threads)
    if name == "outlines":
        return OutlinesSystem(tokenizer, vocab, flexible, args.compile_timeout)
    raise ValueError(name)


def first_mask_s(system: Any, compiled: Any, vocab: int) -> float:
    bitmask = np.zeros((1, vocab // 32 + (vocab % 32 > 0)), np.int32)
    t0 = time.perf_counter()
    system.fill(system.matcher(compiled), bitmask, 0)
    return time.perf_counter() - t0


def measure_schema(
    s: BenchSchema,
    systems: dict[str, Any],
    tokenizer: Any,
    vocab: int,
    eos: frozenset[int],
    agreements: dict[str, Agreement],
    vocab_texts: list[str | None],
    token_classes: np.ndarray,
    args: argparse.Namespace,
    keep: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    row: dict[str, Any] = {"name": s.name, "source": s.source, "systems": {}}
    compiled: dict[str, Any] = {}
    for name, system in systems.items():
        try:
            c, compile_s = system.compile(s.schema)
        except CompileFailed as e:
            row["systems"][name] = {"compiled": False, "error_kind": e.kind, "error": str(e)[:400]}
            continue
        first = first_mask_s(system, c, vocab)
        row["systems"][name] = {"compiled": True, "compile_s": compile_s, "ttfm_s": compile_s + first}
        compiled[name] = c
    text, accepted = pick_instance(s, compiled.get("ragloom"))
    tokens = tokenizer.encode(text, add_special_tokens=False)
    row.update(instance=text if len(text) <= 300 else text[:300] + "…", tokens=len(tokens))
    row["_tokens"] = tokens
    if "ragloom" in compiled:
        row["ragloom_accepts_an_instance"] = accepted
    walks: dict[str, Walk] = {}
    record = bool(agreements)
    for name, c in compiled.items():
        system = systems[name]
        w = walk(system, c, tokens, eos, vocab, record=record)
        entry = row["systems"][name]
        entry.update(walk_complete=w.complete, failure=w.failure, mask_us=stats_us(w.times), _times=w.times)
        if name == "ragloom":
            assert w.misses is not None
            entry["cold_miss_positions"] = sum(w.misses)
            entry["_miss_times"] = [t for t, miss in zip(w.times, w.misses, strict=True) if miss]
            warm = walk(system, c, tokens, eos, vocab)
            entry["mask_us_warm"] = stats_us(warm.times)
            entry["_warm_times"] = warm.times
        walks[name] = w
        if w.complete and name != "ragloom":
            keep.setdefault(name, {})[s.name] = c  # reused by the batch run (outlines compiles slowly)
    if agreements and "ragloom" in walks and walks["ragloom"].complete:
        masks = {n: w.masks for n, w in walks.items() if w.complete and w.masks is not None}
        for peer, agg in agreements.items():
            if peer in masks:
                agg.add(s.name, tokens, masks, token_classes, vocab_texts, tokenizer, args.examples)
    return row


# ---- SQL grammar masks (the text-to-SQL databases)

SQL_DATA = next(
    (p for p in (_REPO / "shared" / "data" / "text2sql", _REPO.parent / "shared" / "data" / "text2sql") if p.is_dir()),
    _REPO.parent / "shared" / "data" / "text2sql",
)


def sqlite_tables(path: Path) -> dict[str, list[str]]:
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: [r[1] for r in db.execute(f"PRAGMA table_info('{t}')")] for t in names}


def measure_sql(
    systems: dict[str, Any], tokenizer: Any, vocab: int, eos: frozenset[int], data: Path = SQL_DATA
) -> list[dict[str, Any]]:
    """Per text-to-SQL database: ragloom's schema-aware SQL grammar (what Ask compiles per database),
    compiled by ragloom and, from the same lark text, by llguidance; then the SQLite gold queries the
    grammar accepts are walked token by token (ragloom cold = each query's first walk, warm = again)."""
    from ragloom.generation.constrain import grammar as grammar_mod
    from ragloom.generation.constrain import processor
    from ragloom.generation.constrain.sql import sql_grammar

    questions = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines() if line.strip()]
    rows = []
    for db_path in sorted((data / "dbs").glob("*.sqlite")):
        db = db_path.stem
        tables = sqlite_tables(db_path)
        spec = {"tables": tables, "dialect": "sqlite"}
        row: dict[str, Any] = {"db": db, "tables": len(tables), "columns": sum(map(len, tables.values())), "systems": {}}
        compiled: dict[str, Any] = {}
        if "ragloom" in systems:
            processor._COMPILED.clear()
            grammar_mod._CACHE.clear()
            t0 = time.perf_counter()
            c = processor.compile_constraint("sql", spec, tokenizer, vocab, eos, timeout_s=60)
            row["systems"]["ragloom"] = {"ttfm_s": time.perf_counter() - t0}
            compiled["ragloom"] = c
        # llguidance's lark reads neither terminal priorities nor %declare: they go (its lexer settles
        # ties its own way, and it does not stop `SELECTname`), a slightly larger language, same shape
        text = re.sub(r"^%declare.*$", "", re.sub(r"^(\w+)\.-?\d+:", r"\1:", sql_grammar(tables, "sqlite"), flags=re.M),
                      flags=re.M)
        if "llguidance" in systems:
            llg = systems["llguidance"]
            t0 = time.perf_counter()
            try:
                m = llg.llg.LLMatcher(llg.tok, llg.llg.LLMatcher.grammar_from_lark(text), log_level=0)
                if m.is_error():
                    raise CompileFailed(m.get_error()[:300])
                llg.fill(m, np.zeros((1, vocab // 32 + (vocab % 32 > 0)), np.int32), 0)  # TTFM: + first mask
                row["systems"]["llguidance"] = {"ttfm_s": time.perf_counter() - t0}
                compiled["llguidance"] = m
            except Exception as e:
                row["systems"]["llguidance"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        golds = [q["gold_sql"] for q in questions if q["db"] == db]
        rg = compiled.get("ragloom")
        queries = [g for g in golds if rg is None or rg.grammar.accepts_text(g)]
        row.update(golds=len(golds), walked=len(queries))
        for name, c in compiled.items():
            system = systems[name]
            times: list[float] = []
            warm: list[float] = []
            ok = 0
            for sql in queries:
                tokens = tokenizer.encode(sql, add_special_tokens=False)
                w = walk(system, c, tokens, eos, vocab)
                times += w.times
                ok += w.complete
                if name == "ragloom":
                    warm += walk(system, c, tokens, eos, vocab).times
            entry = row["systems"][name]
            entry.update(walked_ok=ok, mask_us=stats_us(times), _times=times)
            if name == "ragloom":
                entry.update(mask_us_warm=stats_us(warm), _warm_times=warm)
        print(f"[sql] {db}: {len(tables)} tables, {len(queries)}/{len(golds)} golds walked: "
              + ", ".join(f"{n} ttfm {e.get('ttfm_s', float('nan')) * 1e3:.0f} ms, mask p50 "
                          f"{(e.get('mask_us') or {}).get('p50') or float('nan'):.0f} µs" for n, e in row["systems"].items()),
              file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def sql_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = sorted({n for r in rows for n in r["systems"]})
    for n in names:
        entries = [r["systems"][n] for r in rows if n in r["systems"] and "ttfm_s" in r["systems"][n]]
        out[n] = {
            "databases": len(entries),
            "ttfm_ms": stats_ms([e["ttfm_s"] for e in entries]),
            "mask_us": stats_us([t for e in entries for t in e.get("_times", [])]),
            "walked_ok": sum(e.get("walked_ok", 0) for e in entries),
        }
        if n == "ragloom":
            out[n]["mask_us_warm"] = stats_us([t for e in entries for t in e.get("_warm_times", [])])
    return out


def sql_table(summary: dict[str, Any], walked: int) -> str:
    head = ["system", "databases", "TTFM p50 ms", "TTFM max ms", f"queries ok / {walked}", "mask p50 µs", "mask p99 µs",
            "mask avg µs"]
    rows = []
    for n, e in summary.items():
        rows.append([n + (" cold" if n == "ragloom" else ""), str(e["databases"]), _fmt(e["ttfm_ms"]["p50"]),
                     _fmt(e["ttfm_ms"]["max"]), str(e["walked_ok"]), _fmt(e["mask_us"]["p50"]),
                     _fmt(e["mask_us"]["p99"]), _fmt(e["mask_us"]["avg"])])
        if "mask_us_warm" in e:
            w = e["mask_us_warm"]
            rows.append(["ragloom warm", "", "", "", "", _fmt(w["p50"]), _fmt(w["p99"]), _fmt(w["avg"])])
    return format_table(head, rows)


def pooled(rows: list[dict[str, Any]], name: str, key: str, only: set[str] | None = None) -> list[float]:
    out: list[float] = []
    for r in rows:
        e = r["systems"].get(name)
        if e and e.get("walk_complete") and (only is None or r["name"] in only):
            out.extend(e[key])
    return out


def summarize(rows: list[dict[str, Any]], names: list[str]) -> tuple[dict[str, Any], set[str]]:
    common = {r["name"] for r in rows if all(r["systems"].get(n, {}).get("walk_complete") for n in names)}
    out: dict[str, Any] = {}
    for n in names:
        entries = [r["systems"][n] for r in rows if n in r["systems"]]
        ok = [e for e in entries if e["compiled"]]
        kinds = Counter(e["error_kind"] for e in entries if not e["compiled"])
        ttfm = [e["ttfm_s"] for e in ok]
        ttfm_common = [r["systems"][n]["ttfm_s"] for r in rows if r["name"] in common]
        d: dict[str, Any] = {
            "schemas": len(entries),
            "compiled": len(ok),
            "compile_errors": dict(kinds),
            "walk_complete": sum(1 for e in ok if e.get("walk_complete")),
            "walk_failures": [
                {"schema": r["name"], "failure": r["systems"][n]["failure"]}
                for r in rows
                if r["systems"].get(n, {}).get("compiled") and not r["systems"][n].get("walk_complete")
            ],
            "ttfm_ms": stats_ms(ttfm),
            "ttfm_ms_common": stats_ms(ttfm_common),
            "mask_us": stats_us(pooled(rows, n, "_times")),
            "mask_us_common": stats_us(pooled(rows, n, "_times", common)),
        }
        if n == "ragloom":
            d["mask_us_warm"] = stats_us(pooled(rows, n, "_warm_times"))
            d["mask_us_warm_common"] = stats_us(pooled(rows, n, "_warm_times", common))
            d["mask_us_cold_misses_only"] = stats_us(pooled(rows, n, "_miss_times"))
            d["ragloom_rejects_every_valid_instance"] = [
                r["name"] for r in rows if r.get("ragloom_accepts_an_instance") is False
            ]
        out[n] = d
    return out, common


def batch_set(rows: list[dict[str, Any]], common: set[str], size: int) -> tuple[list[dict[str, Any]], bool]:
    cands = [r for r in rows if r["name"] in common and r["tokens"] > 0]
    cands.sort(key=lambda r: (r["source"] != "realistic", -r["tokens"]))
    if not cands:
        return [], False
    cycled = len(cands) < size
    return [cands[i % len(cands)] for i in range(size)], cycled


def measure_batches(
    systems: dict[str, Any],
    chosen: list[dict[str, Any]],
    schemas: dict[str, BenchSchema],
    tokenizer: Any,
    vocab: int,
    keep: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    texts = [r["_tokens"] for r in chosen]
    results = []
    for name, system in systems.items():
        if name == "ragloom":
            compiled = [system.compile(schemas[r["name"]].schema)[0] for r in chosen]  # fresh: cold caches
            for mode in ("serial, cold caches", "serial, warm caches"):
                results.append(
                    {"system": name, "mode": mode, **run_batch(system, compiled, texts, vocab, False)}
                )
            continue
        compiled = [keep[name][r["name"]] for r in chosen]
        results.append({"system": name, "mode": "serial", **run_batch(system, compiled, texts, vocab, False)})
        if hasattr(system, "fill_batch"):
            results.append(
                {
                    "system": name,
                    "mode": f"parallel API, {system.threads} threads",
                    **run_batch(system, compiled, texts, vocab, True),
                }
            )
    return results


# --------------------------------------------------------------------------- output


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def format_table(head: Sequence[str], rows: list[Sequence[str]]) -> str:
    allrows = [list(head), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(head))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in allrows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(summary: dict[str, Any], common_n: int) -> str:
    head = (
        "system",
        "compiled",
        "walked",
        "TTFM p50 ms",
        "TTFM avg ms",
        "TTFM max ms",
        "mask avg µs",
        "mask p50 µs",
        "mask p99 µs",
        f"common({common_n}) avg µs",
        "common p50 µs",
        "common p99 µs",
    )
    rows = []
    for n, d in summary.items():
        variants = [("", "mask_us", "mask_us_common")]
        if n == "ragloom":
            variants = [
                (" cold", "mask_us", "mask_us_common"),
                (" warm", "mask_us_warm", "mask_us_warm_common"),
            ]
        for suffix, k, kc in variants:
            first = suffix in ("", " cold")
            rows.append(
                (
                    n + suffix,
                    f"{d['compiled']}/{d['schemas']}" if first else "",
                    str(d["walk_complete"]) if first else "",
                    _fmt(d["ttfm_ms"]["p50"]) if first else "",
                    _fmt(d["ttfm_ms"]["avg"]) if first else "",
                    _fmt(d["ttfm_ms"]["max"]) if first else "",
                    _fmt(d[k]["avg"]),
                    _fmt(d[k]["p50"]),
                    _fmt(d[k]["p99"]),
                    _fmt(d[kc]["avg"]),
                    _fmt(d[kc]["p50"]),
                    _fmt(d[kc]["p99"]),
                )
            )
    return format_table(head, rows)


def batch_table(batches: list[dict[str, Any]]) -> str:
    head = (
        "system",
        "mode",
        "seqs",
        "steps",
        "mean active",
        "step avg ms",
        "step p50 ms",
        "step p99 ms",
        "full-batch step avg ms",
        "µs per seq-step",
    )
    rows = [
        (
            b["system"],
            b["mode"],
            str(b["sequences"]),
            str(b["steps"]),
            _fmt(b["mean_active"]),
            _fmt(b["step_ms"]["avg"], 2),
            _fmt(b["step_ms"]["p50"], 2),
            _fmt(b["step_ms"]["p99"], 2),
            _fmt(b["full_batch_step_ms"]["avg"], 2),
            _fmt(b["mask_us_per_sequence_step"]),
        )
        for b in batches
    ]
    return format_table(head, rows)


def agreement_table(agreements: dict[str, Agreement]) -> str:
    head = (
        "ragloom vs",
        "schemas",
        "positions",
        "identical",
        "whitespace-only",
        "charset/escape",
        "other",
        "other: peer alone",
        "other: ragloom alone",
        "other: undecided",
    )
    rows = []
    for a in agreements.values():
        p = max(a.positions, 1)
        rows.append(
            (
                a.peer,
                str(a.schemas),
                str(a.positions),
                f"{a.identical / p:.1%}",
                f"{a.by_class['whitespace'] / p:.1%}",
                f"{a.by_class['charset'] / p:.1%}",
                f"{a.by_class['other'] / p:.1%}",
                str(a.verdicts["peer alone"]),
                str(a.verdicts["ragloom alone"]),
                str(a.verdicts["undecided"]),
            )
        )
    return format_table(head, rows)


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if not k.startswith("_")}
    out["systems"] = {
        n: {k: v for k, v in e.items() if not k.startswith("_")} for n, e in row["systems"].items()
    }
    return out


# --------------------------------------------------------------------------- CLI


def _csv_systems(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in ALL_SYSTEMS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown system(s) {bad}; choose from {', '.join(ALL_SYSTEMS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Token-mask speed of JSON-Schema-constrained decoding (MaskBench-style): ragloom vs xgrammar vs "
            "llguidance vs outlines-core, same tokenizer and schemas; time to first mask, mask time per token, "
            "batched masks, and mask agreement. Prints tables; writes JSON to benchmarks/results/constrain-cpu.json."
        )
    )
    p.add_argument(
        "--systems",
        type=_csv_systems,
        default=",".join(ALL_SYSTEMS),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument(
        "--whitespace",
        choices=["flexible", "compact"],
        default="flexible",
        help=f"flexible: up to {MAX_WS} whitespace characters between tokens everywhere (ragloom's default); "
        "compact: none; default: flexible",
    )
    p.add_argument(
        "--suite",
        type=Path,
        default=DEFAULT_SUITE,
        help="JSON-Schema-Test-Suite draft2020-12 folder (default: %(default)s)",
    )
    p.add_argument("--no-suite", action="store_true", help="only the realistic schemas")
    p.add_argument("--max-suite", type=int, default=None, help="at most this many suite cases (default: all)")
    p.add_argument("--batch", type=int, default=32, help="sequences in the batched-mask run (default: 32)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the peers' parallel batch APIs (default: usable cores)",
    )
    p.add_argument(
        "--compile-timeout",
        type=float,
        default=30.0,
        help="seconds a compile may take (ragloom's limit, outlines' worker is killed); default: 30 (the engine's)",
    )
    p.add_argument("--no-agreement", action="store_true", help="skip comparing the masks")
    p.add_argument(
        "--cold-lexer",
        action="store_true",
        help="ragloom: clear the process-wide lexer tables before each schema (as if each were the first "
        "in a new process); default: keep them, as a server does",
    )
    p.add_argument(
        "--no-sql", action="store_true", help="skip the SQL grammar masks over the text-to-SQL databases"
    )
    p.add_argument(
        "--examples", type=int, default=40, help="'other' disagreements kept per peer (default: 40)"
    )
    p.add_argument(
        "--model",
        default=None,
        help="bundled model name or HF folder whose tokenizer is used (default: SmolLM2-135M)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="ragloom data dir (default: RAGLOOM_DATA_DIR or ~/.cache/ragloom)",
    )
    p.add_argument(
        "--output", type=Path, default=None, help="JSON path (default: benchmarks/results/constrain-cpu.json)"
    )
    p.add_argument(
        "--quick", action="store_true", help="realistic schemas + 20 suite cases, batch 8: a smoke test"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.max_suite = 20 if args.max_suite is None else args.max_suite
        args.batch = min(args.batch, 8)
    if args.threads is None:
        args.threads = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = busy_cores()
    started = time.perf_counter()
    tokenizer, folder = load_tokenizer(args.model, args.data_dir)
    config = json.loads((folder / "config.json").read_text())
    vocab = int(config.get("vocab_size") or len(tokenizer))
    eos = frozenset({tokenizer.eos_token_id})
    schemas = list(REALISTIC)
    if not args.no_suite:
        suite = load_suite(args.suite)
        schemas += suite[: args.max_suite] if args.max_suite is not None else suite
    by_name = {s.name: s for s in schemas}

    systems: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in args.systems:
        try:
            systems[name] = make_system(name, args, tokenizer, vocab, eos)
        except Exception as exc:  # a peer that is not installed or fails to load is skipped, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"
            print(f"skipping {name}: {skipped[name]}", file=sys.stderr)
    from ragloom.generation.constrain.vocab import vocab_for

    vocab_texts = vocab_for(tokenizer, vocab).texts
    codes = {"charset": 0, "whitespace": 1, "other": 2}
    token_classes = np.array([codes[token_class(t)] for t in vocab_texts], np.int8)
    peers = (
        [p for p in AGREEMENT_PEERS if p in systems] if "ragloom" in systems and not args.no_agreement else []
    )
    agreements = {p: Agreement(p) for p in peers}

    rows: list[dict[str, Any]] = []
    keep: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for i, s in enumerate(schemas):
        row = measure_schema(
            s, systems, tokenizer, vocab, eos, agreements, vocab_texts, token_classes, args, keep
        )
        rows.append(row)
        status = " ".join(
            f"{n}={'ok' if e.get('walk_complete') else ('walk-fail' if e['compiled'] else e['error_kind'])}"
            + (f"({e['ttfm_s'] * 1e3:.0f}ms)" if e["compiled"] else "")
            for n, e in row["systems"].items()
        )
        print(
            f"[{i + 1}/{len(schemas)}] {s.name} ({row['tokens']} tokens): {status}",
            file=sys.stderr,
            flush=True,
        )

    names = list(systems)
    summary, common = summarize(rows, names)
    chosen, cycled = batch_set(rows, common, args.batch)
    batches: list[dict[str, Any]] = []
    if chosen:
        try:
            batches = measure_batches(systems, chosen, by_name, tokenizer, vocab, keep)
        except Exception as exc:
            failed["batch"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    sql_rows: list[dict[str, Any]] = []
    if not args.no_sql and SQL_DATA.is_dir() and ({"ragloom", "llguidance"} & set(systems)):
        try:
            sql_rows = measure_sql(systems, tokenizer, vocab, eos)
        except Exception as exc:
            failed["sql"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    sql = sql_summary(sql_rows)
    for system in systems.values():
        system.close()

    notes = [
        "TTFM (time to first mask) = compile + matcher + first full mask, per schema, over the schemas each system compiled "
        "(ttfm_ms_common: over the schemas every system compiled and walked). The tokenizer's one-time preparation "
        "(ragloom vocab_for, xgrammar TokenizerInfo, llguidance LLTokenizer, outlines Vocabulary) is not included.",
        "mask µs: time to compute one full-vocabulary mask, pooled over every position (each token of the instance, "
        "then the end) of every schema the system walked completely; 'common' = the schemas every system walked.",
        "ragloom cold = first walk after compiling (its per-state mask cache empty except the first state); warm = a "
        "second walk with a new matcher (all cache hits); cold_misses_only = the cold positions whose mask was computed.",
        "Instances: the longest valid instance that ragloom's grammar accepts, written by jsonschema.canonical_dumps "
        "(compact), tokenized by the tokenizer (canonical tokenization).",
        f"whitespace: {args.whitespace}"
        + (
            f" (at most {MAX_WS} of [ \\t\\n\\r] between tokens on every system)"
            if args.whitespace == "flexible"
            else " (none anywhere)"
        ),
        "agreement: every position of the schemas that ragloom and the peer both walked; a position differs in "
        "'whitespace' when every differing token holds whitespace, in 'charset/escape' when some hold a special token, "
        "a partial UTF-8 sequence (never allowed by ragloom), a backslash (ragloom allows only json.dumps' escapes) "
        "or a control/non-ASCII character, and in 'other' when some differing token is none of these. 'other' "
        "positions are refereed by the remaining systems: 'peer alone' = they side with ragloom on every such token, "
        "'ragloom alone' = they all side with the peer on some token (candidate ragloom bugs: see other_examples).",
        f"batch: {args.batch} sequences, {len({r['name'] for r in chosen})} distinct schemas (every system walked them)"
        + (" — fewer than the batch size, so some repeat" if cycled else "")
        + "; a step computes the masks of every "
        "active sequence into one bitmask (accepting the tokens is timed apart); peers also with their parallel "
        f"batch APIs ({args.threads} threads).",
    ]
    if load_before is not None and load_before > 0.5:
        notes.append(
            f"WARNING: 1-minute load average was {load_before:.2f} before the run: other processes shared the CPU, "
            "so absolute timings are inflated (the systems ran interleaved per schema, so the ratios are less affected)."
        )
    report = {
        "benchmark": "constrain",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "hardware": {
            **hardware_info("cpu", args.threads),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": busy_cores(),
        },
        "software": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "ragloom": _version("ragloom"),
            "xgrammar": _version("xgrammar"),
            "llguidance": _version("llguidance"),
            "outlines_core": _version("outlines_core"),
            "transformers": _version("transformers"),
        },
        "settings": {
            "systems": args.systems,
            "whitespace": args.whitespace,
            "max_whitespace": MAX_WS if args.whitespace == "flexible" else 0,
            "tokenizer": str(folder),
            "vocab_size": vocab,
            "eos_ids": sorted(eos),
            "schemas": len(schemas),
            "realistic": len(REALISTIC),
            "suite": str(args.suite) if not args.no_suite else None,
            "batch": args.batch,
            "threads": args.threads,
            "compile_timeout_s": args.compile_timeout,
            "quick": args.quick,
        },
        "systems": {n: {"version": s.version, "notes": s.notes} for n, s in systems.items()},
        "summary": summary,
        "common_schemas": len(common),
        "batch": {"schemas": [r["name"] for r in chosen], "results": batches},
        "agreement": {p: a.to_json() for p, a in agreements.items()},
        "sql": {"summary": sql, "databases": [_strip(r) for r in sql_rows]},
        "schemas": [_strip(r) for r in rows],
        "skipped": skipped,
        "failed": failed,
        "notes": notes,
        "wall_s": time.perf_counter() - started,
    }
    output = args.output or RESULTS_DIR / "constrain-cpu.json"
    write_results(output, report)

    print(
        f"\nconstrain benchmark: {len(schemas)} schemas ({len(REALISTIC)} realistic), tokenizer vocab {vocab}, "
        f"whitespace {args.whitespace}, load before {load_before}"
    )
    print(summary_table(summary, len(common)))
    if batches:
        print(f"\nbatched masks: {args.batch} sequences stepping together")
        print(batch_table(batches))
    if sql_rows:
        walked = sum(r["walked"] for r in sql_rows)
        print(f"\nSQL grammar masks: {len(sql_rows)} text-to-SQL databases, {walked} SQLite gold queries the grammar accepts")
        print(sql_table(sql, walked))
    if agreements:
        print("\nmask agreement (allowed-token sets identical at a position)")
        print(agreement_table(agreements))
        for a in agreements.values():
            shown = sorted(a.examples, key=lambda e: e["verdict"] != "ragloom alone")[:6]
            for ex in shown:
                print(
                    f"  other vs {a.peer} ({ex['verdict']}): {ex['schema']} @ {ex['position']} prefix {ex['prefix'][-60:]!r}: "
                    f"only ragloom {ex['only_ragloom']}, only {a.peer} {ex[f'only_{a.peer}']}"
                )
    for name, reason in {**skipped, **failed}.items():
        print(f"{name}: {'skipped' if name in skipped else 'FAILED'}: {reason}")
    for note in notes:
        print(f"- {note}")
    print(f"JSON: {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
