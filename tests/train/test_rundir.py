"""Run directories that cannot be lost: one writer at a time, no silent overwrite, verified
checkpoints with fallback, nothing saved from a diverged streak, torn metrics lines, full disks."""

import errno
import json
import resource
import signal
import subprocess
import sys

import pytest
import torch

from adamba import checkpoint as ck
from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.train import trainer
from adamba.train.monitor import MetricsLog, read_metrics
from adamba.train.rundir import RunLock
from tests.helpers import adamba, assert_clean_error, nan_loss_on, tiny_overrides


def cfg_for(data, out, steps=8, *extra):
    return load_config("tiny-cpu", [*tiny_overrides(data, out, steps), "train.eval_every=0", *extra])


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def train_cli(data, out, *flags, steps=8):
    sets = [a for o in tiny_overrides(data, out, steps) for a in ("--set", o)]
    return adamba("train", "--config", "tiny-cpu", *sets, *flags)


def test_a_second_run_into_a_directory_in_use_is_refused(tiny_data, tmp_path):
    out = tmp_path / "r"
    with RunLock(out):  # this process holds it, as a running `adamba train` would
        res = train_cli(tiny_data, out)
        holder = json.loads((out / ".lock").read_text())
    assert_clean_error(res, f"{out} is in use by another run (pid {holder['pid']}", "--out")
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert not out.exists()  # released, and the folder it made for nothing is gone


def test_a_stale_lock_of_a_killed_run_is_reported_and_taken_over(tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))
    trainer.run(cfg_for(tiny_data, out, 2))
    err = capsys.readouterr().err
    assert "locked by a run that ended without releasing it (pid 999999 on gone" in err
    assert not (out / ".lock").exists() and losses(out)[-1][0] == 2


def test_a_fresh_run_over_an_earlier_one_needs_resume_or_overwrite(tiny_data, tmp_path):
    out = tmp_path / "r"
    trainer.run(cfg_for(tiny_data, out, 4))
    before = (out / "metrics.jsonl").read_bytes()
    res = train_cli(tiny_data, out, steps=4)  # forgot --resume
    assert_clean_error(
        res, "already holds a run (checkpoints up to step_000004, metrics.jsonl)", "--resume", "--overwrite"
    )
    assert (out / "metrics.jsonl").read_bytes() == before  # nothing deleted
    res = train_cli(tiny_data, out, "--resume", "--overwrite")
    assert_clean_error(res, "choose one")
    res = train_cli(tiny_data, out, "--overwrite", steps=2)
    assert res.returncode == 0, res.stderr
    assert [s for s, _ in losses(out)] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000002"]


def flip_a_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_corrupted_latest_falls_back_to_the_newest_intact_checkpoint(tiny_data, tmp_path, capsys):
    """Flipped bytes in the newest weights are found by their sha256: reading the run uses the
    checkpoint before, saying so; naming the damaged checkpoint is a one-line error; resuming
    from the fallback retrains the lost steps to the same losses."""
    ref, out = tmp_path / "ref", tmp_path / "r"
    trainer.run(cfg_for(tiny_data, ref, 12))
    trainer.run(cfg_for(tiny_data, out, 8))
    bad = out / "checkpoints" / "step_000008"
    flip_a_byte(bad / "model.safetensors")
    ckpt = ck.read_checkpoint(out)
    assert ckpt.path.name == "step_000004"
    assert "step_000008/model.safetensors does not match the sha256" in capsys.readouterr().err
    with pytest.raises(
        AdambaError, match=r"damaged checkpoint: .*step_000008/model.safetensors does not match"
    ):
        ck.read_checkpoint(bad)
    res = adamba("sample", "--ckpt", str(bad), "--max-new-tokens", "2")
    assert_clean_error(res, "step_000008/model.safetensors")
    res = adamba("sample", "--ckpt", str(out), "--max-new-tokens", "2")
    assert res.returncode == 0 and "using" in res.stderr and "step_000004" in res.stderr
    trainer.run(cfg_for(tiny_data, out, 12), resume=True)
    assert losses(out) == losses(ref)  # resumed from step 4, bit for bit
    assert ck.read_checkpoint(out).path.name == "step_000012"


def test_truncated_missing_and_unreadable_checkpoint_files_name_the_file(tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    trainer.run(cfg_for(tiny_data, out, 8))
    root = out / "checkpoints"
    w = root / "step_000008" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])  # truncated
    with pytest.raises(AdambaError, match=r"model.safetensors has [\d,]+ bytes, [\d,]+ were written"):
        ck.read_checkpoint(root / "step_000008")
    assert ck.verify_checkpoint(root / "step_000008", full=False) is not None  # the fast path sees it too
    (root / "LATEST").unlink()  # LATEST gone: the newest intact checkpoint, with a note
    assert ck.read_checkpoint(out).path.name == "step_000004"
    assert "LATEST is missing" in capsys.readouterr().err
    (root / "LATEST").write_text("step_000099")  # names a folder that does not exist
    assert ck.read_checkpoint(out).path.name == "step_000004"
    (root / "step_000004" / "state.json").write_text("{torn")
    with pytest.raises(AdambaError, match=r"no intact checkpoint in .*step_000099 does not exist"):
        ck.read_checkpoint(out)
    res = adamba("eval", "--ckpt", str(root / "step_000004"))
    assert_clean_error(res, "step_000004/state.json is unreadable")


def test_a_flipped_byte_passes_the_fast_check_but_not_the_full_one(tiny_data, tmp_path):
    out = tmp_path / "r"
    trainer.run(cfg_for(tiny_data, out, 4))
    c = out / "checkpoints" / "step_000004"
    flip_a_byte(c / "model.safetensors")
    assert ck.verify_checkpoint(c, full=False) is None  # sizes and header only: by design
    assert "sha256" in ck.verify_checkpoint(c, full=True)


def test_nothing_is_saved_from_a_non_finite_streak(tiny_data, tmp_path, monkeypatch):
    """From step 6 on every loss is NaN: the step-8 checkpoint that falls inside the streak is not
    written, LATEST stays at step 4 (finite weights), and the error says so."""
    from adamba.model.lm import LM

    nan_loss_on(monkeypatch, lambda n: n >= 6)
    out = tmp_path / "r"
    with pytest.raises(
        AdambaError, match=r"diverged: 5 consecutive non-finite steps .*last checkpoint, step 4, predates it"
    ):
        trainer.run(cfg_for(tiny_data, out, 20))
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000004"]
    ckpt = ck.read_checkpoint(out)
    model = LM(ckpt.cfg.model)
    ck.load_weights(model, ckpt)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_torn_metrics_line_is_dropped_and_reported_on_resume(tiny_data, tmp_path, capsys):
    out = tmp_path / "r"
    trainer.run(cfg_for(tiny_data, out, 8))
    before = losses(out)
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 9, "loss": 3.1')  # a write cut short by a full disk or a kill
    assert losses(out) == before  # readers skip it
    trainer.run(cfg_for(tiny_data, out, 12), resume=True)  # extended: resumes from step 8
    assert "dropped 1 unreadable line(s)" in capsys.readouterr().err
    after = losses(out)
    assert after[:8] == before and [s for s, _ in after] == list(range(1, 13))


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    out = tmp_path / "r"
    trainer.run(cfg_for(tiny_data, out, 4))
    real = ck._write_bytes

    def full(path, data):
        real(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_write_bytes", full)
    with pytest.raises(
        AdambaError,
        match=r"cannot save checkpoint step_000008 in .*: No space left on device \(step_000004 is intact\)",
    ):
        trainer.run(cfg_for(tiny_data, out, 8), resume=True)
    assert ck.read_checkpoint(out).path.name == "step_000004"
    assert not list((out / "checkpoints").glob(".tmp-*"))
    log = MetricsLog(tmp_path / "m.jsonl")
    monkeypatch.setattr(
        "os.write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
    )
    with pytest.raises(AdambaError, match=r"cannot write .*m.jsonl: No space left on device"):
        log.write({"step": 1})
    monkeypatch.undo()
    log.close()


def test_a_real_write_error_at_the_cli_is_one_line(tiny_data, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes the OS refuse the checkpoint's writes for real:
    the error names the folder and the reason, not a serializer's "unexpected pos"."""
    out = tmp_path / "r"
    sets = [a for o in tiny_overrides(tiny_data, out, 4) for a in ("--set", o)]

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    res = subprocess.run(
        [sys.executable, "-m", "adamba", "train", "--config", "tiny-cpu", *sets],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    assert_clean_error(
        res, "cannot save checkpoint step_000004", "File too large", "no earlier checkpoint exists"
    )
