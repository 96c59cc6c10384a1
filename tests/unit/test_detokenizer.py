from __future__ import annotations

from ragloom.generation.runner.detokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello, world! This is a test.",
    "naïve café — déjà vu 😀 emoji 🚀 and 日本語のテキスト",
    "  leading spaces\n\nand newlines\ttabs",
    "def f(x):\n    return x ** 2",
]


def test_incremental_equals_full_decode(engine):
    tok = engine.tokenizer
    for text in TEXTS:
        prompt = tok.encode("Say:", add_special_tokens=False)
        ids = tok.encode(text, add_special_tokens=False)
        detok = IncrementalDetokenizer(tok, prompt)
        pieces = [detok.add(t) for t in ids]
        assert "".join(pieces) == tok.decode(ids), text
        # no piece ever carries a broken character
        assert all("\ufffd" not in p for p in pieces)


def test_multibyte_character_is_held_until_complete(engine):
    tok = engine.tokenizer
    ids = tok.encode("😀", add_special_tokens=False)
    assert len(ids) > 1  # byte-level BPE splits the emoji
    detok = IncrementalDetokenizer(tok, [])
    pieces = [detok.add(t) for t in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "😀"
