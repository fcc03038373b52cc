"""Layers, one concept per file. Each sequence mixer takes (x, state=None) and, when given a
decoding state, reads and updates it in place, so prefill and token-by-token decoding share code."""
