"""`adamba grow`, the plan's route in miniature, at a few steps per phase: every stage runs and is
measured on the same held-out batches; the surgeries leave the full-width bpb unchanged (the
logits are kept); a second call resumes (nothing retrained)."""

import json

from adamba.grow import grow
from tests.helpers import adamba, assert_clean_error

STEPS = [f"phase.{i}.steps=3" for i in range(6)]
SMALL = ["model.vocab_size=300", "model.d_model=32", "model.attn.n_head=2", "model.attn.n_kv_head=1"]
SMALL += ["model.mamba.d_state=16", "model.mamba.chunk_size=16", "data.seq_len=32", "train.batch_size=4"]


def test_grow_route(tmp_path):
    out = tmp_path / "g"
    path = grow(out, overrides=STEPS + SMALL, widen_to=48, progress=False, max_corpus_mb=0.3)
    log = json.loads(path.read_text())
    st = log["stages"]
    assert list(st) == ["dense", "inject", "phase12", "widen", "widened"]
    assert st["inject"]["pattern"] == "AAMAAM" and st["dense"]["pattern"] == "A"
    assert st["inject"]["bpb@1"] == st["dense"]["bpb@1"]  # the new layers add exactly zero
    assert abs(st["widen"]["bpb@1"] - st["phase12"]["bpb@1"]) < 1e-5  # widening keeps the function
    assert (st["phase12"]["d_model"], st["widen"]["d_model"]) == (32, 48)
    assert st["widen"]["params"] > st["phase12"]["params"]
    assert all(f"bpb@{w}" in st["widened"] for w in ("0.25", "0.5", "0.75", "1"))
    assert any(line.strip().startswith("auto") for line in log["modes"])
    # a second call resumes: every stage already done, nothing retrained
    before = (out / "widened" / "checkpoints" / "LATEST").stat().st_mtime_ns
    assert json.loads(grow(out, overrides=STEPS + SMALL, widen_to=48, progress=False).read_text()) == log
    assert (out / "widened" / "checkpoints" / "LATEST").stat().st_mtime_ns == before


def test_grow_refuses_a_narrower_target(tmp_path):
    assert_clean_error(adamba("grow", "--out", str(tmp_path / "g"), "--widen-to", "32"), "--widen-to 32")
