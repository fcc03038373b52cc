"""Bad input gets one clear line, no traceback, exit code 2, and nothing half-written."""

import pytest

from adamba.config import load_config
from adamba.train import trainer
from tests.helpers import adamba, assert_clean_error, make_tiny_data, tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_tiny_data(root / "data")
    trainer.run(load_config("tiny-cpu", tiny_overrides(data, root / "run", steps=4)))
    return root


def test_unknown_config_key(tmp_path):
    res = adamba("train", "--config", "tiny-cpu", "--set", "model.n_layr=2", "--out", str(tmp_path / "o"))
    assert_clean_error(res, "model.n_layr", "n_layer")
    assert not (tmp_path / "o").exists()


def test_wrong_value_type(tmp_path):
    res = adamba(
        "train", "--config", "tiny-cpu", "--set", "train.batch_size=big", "--out", str(tmp_path / "o")
    )
    assert_clean_error(res, "train.batch_size", "integer")
    assert not (tmp_path / "o").exists()


def test_missing_data_path(tmp_path):
    res = adamba(
        "quickstart", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--no-progress"
    )
    assert_clean_error(res, "missing.txt")
    assert not (tmp_path / "o").exists()


def test_corpus_without_usable_text(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n\n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 8)
    res = adamba(
        "quickstart",
        "--data",
        str(tmp_path / "empty.txt"),
        "--data",
        str(tmp_path / "blob.bin"),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert_clean_error(res, "no usable text")
    assert not (tmp_path / "o").exists()


def test_checkpoint_dir_without_weights(tmp_path):
    (tmp_path / "ck").mkdir()
    res = adamba("sample", "--ckpt", str(tmp_path / "ck"), "--prompt", "x")
    assert_clean_error(res, "no model weights", "ck")


def test_tokenizer_vocab_mismatch(run_dir, tmp_path):
    other = make_tiny_data(tmp_path, vocab_size=360)
    res = adamba("sample", "--ckpt", str(run_dir / "run"), "--tokenizer", other["tokenizer"], "--prompt", "x")
    assert_clean_error(res, "360 tokens", "400")


def test_sample_and_eval_work(run_dir):
    res = adamba(
        "sample",
        "--ckpt",
        str(run_dir / "run"),
        "--prompt",
        "def ",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("def ")
    res = adamba("eval", "--ckpt", str(run_dir / "run"), "--tasks", "bpb", "--batches", "2")
    assert res.returncode == 0, res.stderr
    assert "bits/byte" in res.stdout


def test_phases_prints_the_plan_of_a_preset():
    """`adamba phases`: one row per phase with what it trains; the counts add up to the model."""
    res = adamba("phases", "--config", "plan-tiny")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    total = int(lines[0].split("model ")[1].split(" ")[0].replace(",", ""))
    rows = [ln.split() for ln in lines[2:]]
    assert [r[1:3] for r in rows] == [
        ["base", "lm"],
        ["mamba", "lm"],
        ["matryoshka", "elastic"],
        ["gates", "gate-calibration"],
    ]
    for r in rows:
        trainable, frozen = (int(v.replace(",", "")) for v in r[5:7])
        assert trainable + frozen == total and trainable > 0
    mamba = int(rows[1][5].replace(",", ""))
    assert mamba < 0.25 * total  # only the M layers train in phase 1
    bad = adamba("phases", "--config", "plan-tiny", "--set", "phase.1.train=['blocks.*.nothing']")
    assert_clean_error(bad, "matches no parameter")


def test_phases_counts_at_the_tokenizers_vocabulary(tiny_data):
    """With data.tokenizer set, the parameter counts are those of the model adamba train builds
    (the tokenizer's vocabulary), not of the default vocab_size."""
    from adamba.config import load_config
    from adamba.data.tokenizer import Tokenizer
    from adamba.model.lm import LM

    over = ["model.d_model=32", "model.n_layer=2", f"data.tokenizer={tiny_data['tokenizer']}"]
    res = adamba("phases", "--config", "tiny-cpu", *(a for o in over for a in ("--set", o)))
    assert res.returncode == 0, res.stderr
    cfg = load_config("tiny-cpu", over)
    cfg.model.vocab_size = Tokenizer.load(tiny_data["tokenizer"]).vocab_size
    want = sum(p.numel() for p in LM(cfg.model).parameters())
    assert f"model {want:,} " in res.stdout.splitlines()[0], res.stdout


def test_a_closed_pipe_is_not_a_traceback(tiny_data):
    """`adamba ... | head`: the reader leaves early; adamba stops without a BrokenPipeError traceback."""
    import subprocess
    import sys

    cmd = f"{sys.executable} -m adamba data inspect {tiny_data['train']} | head -c 20"
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in res.stderr and "BrokenPipeError" not in res.stderr, res.stderr
