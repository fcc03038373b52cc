"""Text generation from a loaded checkpoint, plain and under every compute mode."""

import pytest

from adamba.model import elastic as el


def test_generate_text_in_every_mode(elastic_run):
    from adamba.checkpoint import load_model
    from adamba.serve.generate import generate_text

    model, tok, _ = load_model(elastic_run / "el")
    flops = {}
    for mode in el.MODES:
        stats: dict = {}
        text = "".join(generate_text(model, tok, "def ", 12, 0.0, None, 0, mode=mode, stats=stats))
        assert isinstance(text, str) and stats["tokens"] >= 1
        flops[mode] = stats["flops_rel"]
        if mode == "think":  # full width, no exit: the plain model's greedy text
            assert text == "".join(generate_text(model, tok, "def ", 12, 0.0, None, 0))
            assert stats["kv_bytes"] == stats["kv_bytes_full"]
    assert flops["ghost"] < flops["normal"] < flops["think"] == pytest.approx(1.0)
