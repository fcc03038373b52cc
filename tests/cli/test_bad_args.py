"""Bad flags and config values at the command line: one line, exit 2, before any work.

"Before any work" is shown by pairing the bad flag with a checkpoint or data path that does not
exist: had the command read it first, the error would name the path instead. A few cases run
in a fresh interpreter as a user would meet them; the rest call `adamba.cli.main` in-process
(the same parser and handlers, without an interpreter start per case).
"""

import pytest

from adamba.cli import main
from tests.helpers import adamba, assert_clean_error


def cli_error(capsys, *argv: str) -> str:
    """Run `adamba ARGV` in-process; it must exit 2 with one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_config_mistakes_at_the_command_line(tmp_path):
    """What used to give a RoPE traceback and a silently converted TOML string, as a user runs them."""
    res = adamba(
        "train", "--config", "tiny-cpu", "--set", "model.attn.n_head=3", "--out", str(tmp_path / "o")
    )
    assert_clean_error(res, "model.attn.n_head=3 must divide model.d_model=128")
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nn_layer = "8"\n')
    res = adamba("train", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert_clean_error(res, "bad.toml", "'model.n_layer' expects an integer, got '8'")
    assert not (tmp_path / "o").exists()


def test_sample_eval_quickstart_flags_in_a_fresh_interpreter(tmp_path):
    missing = str(tmp_path / "no-run")
    # bytes that are not UTF-8 reach Python as surrogate escapes (b"\xff" -> "\udcff")
    res = adamba("sample", "--ckpt", missing, "--prompt", "def \udcff(")
    assert_clean_error(res, "--prompt is not valid UTF-8", "byte 0xff")
    res = adamba("eval", "--ckpt", missing, "--batches", "0")
    assert_clean_error(res, "--batches 0 must be >= 1")
    res = adamba("quickstart", "--minutes", "nan", "--data", missing, "--out", str(tmp_path / "qs"))
    assert_clean_error(res, "--minutes nan must be a finite number > 0")
    assert not (tmp_path / "qs").exists()


def test_sample_flags(capsys, tmp_path):
    ck = ["sample", "--ckpt", str(tmp_path / "no-run")]
    assert "--num-samples 0 must be >= 1" in cli_error(capsys, *ck, "--num-samples", "0")
    for t in ("-0.5", "nan", "inf"):
        assert f"--temperature {float(t)} must be a finite number >= 0" in cli_error(
            capsys, *ck, "--temperature", t
        )
    assert "--top-k -1 must be >= 0" in cli_error(capsys, *ck, "--top-k", "-1")
    assert "--max-new-tokens 0 must be >= 1" in cli_error(capsys, *ck, "--max-new-tokens", "0")
    assert "--seed -1 must lie in [0, 2**63)" in cli_error(capsys, *ck, "--seed", "-1")
    assert "--seed" in cli_error(capsys, *ck, "--seed", str(2**64))
    assert "U+D800" in cli_error(capsys, *ck, "--prompt", "a\ud800")  # a lone surrogate, not a byte
    # good flags get as far as the checkpoint
    assert "no-run" in cli_error(capsys, *ck, "--temperature", "0", "--top-k", "0", "--prompt", "é")


def test_eval_flags(capsys, tmp_path):
    ck = ["eval", "--ckpt", str(tmp_path / "no-run")]
    assert "--batches -3 must be >= 1" in cli_error(capsys, *ck, "--batches", "-3")
    line = cli_error(capsys, *ck, "--tasks", "efficiency", "--decode-batch", "0")
    assert "--decode-batch 0 must be >= 1" in line
    assert "--tasks is empty" in cli_error(capsys, *ck, "--tasks", " , ")
    assert "unknown eval task(s) bp" in cli_error(capsys, *ck, "--tasks", "bp")
    assert "no-run" in cli_error(capsys, *ck, "--tasks", "bpb, efficiency", "--batches", "1")


def test_quickstart_flags(capsys, tmp_path):
    qs = ["quickstart", "--no-progress", "--data", str(tmp_path / "missing.txt")]
    out = ["--out", str(tmp_path / "qs")]
    for m in ("inf", "-1", "0"):
        assert f"--minutes {float(m)} must be a finite number > 0" in cli_error(
            capsys, *qs, *out, "--minutes", m
        )
    assert "--out is empty" in cli_error(capsys, *qs, "--out", "")
    line = cli_error(capsys, *qs, *out, "--set", "model.vocab_size=100")
    assert "model.vocab_size=100 is too small" in line and "at least 288" in line
    assert "train.lr=nan" in cli_error(capsys, *qs, *out, "--set", "train.lr=nan")
    assert "model.attn.n_head=3 must divide" in cli_error(capsys, *qs, *out, "--set", "model.attn.n_head=3")
    (tmp_path / "file").write_text("x")
    assert "is a file" in cli_error(capsys, *qs, "--out", str(tmp_path / "file"))
    assert not (tmp_path / "qs").exists()
    # an earlier quickstart's run is kept unless --overwrite, before the corpus is read
    (tmp_path / "qs" / "run").mkdir(parents=True)
    (tmp_path / "qs" / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    line = cli_error(capsys, *qs, *out)
    assert "already holds a quickstart run (metrics.jsonl)" in line and "--overwrite" in line
    assert "missing.txt" in cli_error(capsys, *qs, *out, "--overwrite")  # passes the check, reads data
    assert (tmp_path / "qs" / "run" / "metrics.jsonl").is_file()  # nothing deleted before training
