"""The quickstart pipeline end to end on a small corpus (the full 5-minute run is in the closing
note and benchmarks/README.md; this checks every stage is wired and the report is honest)."""

import json
import shutil

import pytest

from adamba.errors import AdambaError
from adamba.quickstart import quickstart
from adamba.train.monitor import read_metrics
from tests.helpers import MODULES, STDLIB

TINY = [
    "model.d_model=32",
    "model.n_layer=1",
    "model.attn.n_head=2",
    "model.attn.n_kv_head=1",
    "model.vocab_size=400",
    "data.seq_len=32",
    "model.max_seq_len=32",
    "train.batch_size=4",
    "train.max_steps=80",
    "train.lr=1e-2",
    "train.eval_every=40",
    "train.eval_batches=2",
    "train.ckpt_every=0",
]


def test_quickstart_on_user_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for m in MODULES:
        shutil.copy(STDLIB / m, corpus / (m + ".txt"))
    # an earlier run in the output folder: refused before any work, replaced with overwrite=True
    (tmp_path / "qs" / "run").mkdir(parents=True)
    (tmp_path / "qs" / "run" / "metrics.jsonl").write_text('{"step": 7, "loss": -1}\n')
    with pytest.raises(AdambaError, match="already holds a quickstart run"):
        quickstart(out=tmp_path / "qs", minutes=5, data=[str(corpus)], overrides=TINY, progress=False)
    with pytest.raises(AdambaError, match="--minutes nan"):
        quickstart(out=tmp_path / "qs", minutes=float("nan"), data=[str(corpus)], overwrite=True)
    report = quickstart(
        out=tmp_path / "qs", minutes=5, data=[str(corpus)], overrides=TINY, progress=False, overwrite=True
    )
    text = report.read_text()
    assert "val bits per byte" in text and "unigram bits per byte" in text
    s = json.loads((tmp_path / "qs" / "summary.json").read_text())
    assert s["steps"] == 80 and s["val_bpb"] > 0 and s["unigram_bpb"] > 0
    assert s["val_bpb"] < s["unigram_bpb"]  # even 80 tiny steps learn more than symbol frequencies
    assert (tmp_path / "qs" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "qs" / "run" / "checkpoints" / "LATEST").is_file()
    assert all(r["loss"] > 0 for r in read_metrics(tmp_path / "qs" / "run" / "metrics.jsonl"))
