"""Speculative decoding: drafters propose the next tokens of a sequence, the engine verifies
them in one forward pass and keeps the longest prefix the target model agrees with (engine.py)."""
