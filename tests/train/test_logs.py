"""Logs people read: TensorBoard event files beside metrics.jsonl, read back with TensorBoard's
own reader (EventAccumulator), and Weights & Biases in offline mode."""

import sys

import pytest

from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from tests.helpers import three_phase_config, tiny_overrides

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator


def events(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of a run's TensorBoard events: tag -> [(step, value)]."""
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r]


def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """The same steps, and values equal to float32 precision (events store float32)."""
    return [s for s, _ in a] == [s for s, _ in b] and [v for _, v in a] == pytest.approx(
        [v for _, v in b], rel=1e-6
    )


def test_tensorboard_events_equal_metrics_jsonl(tiny_data, tmp_path):
    out = tmp_path / "r"
    cfg = three_phase_config(tmp_path, tiny_data, out, extra=["train.eval_every=4"])
    trainer.run(cfg)
    rows, ev = read_metrics(out / "metrics.jsonl"), events(out)
    assert len(rows) == 9
    for key, tag in [("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm")]:
        assert same(ev[tag], series(rows, key)) and len(ev[tag]) == 9
    assert [s for s, _ in ev["train/tok_s"]] == list(range(1, 10))
    assert same(ev["val/bpb"], series(rows, "val_bpb"))
    assert [s for s, _ in ev["val/bpb"]] == [3, 4, 6, 8, 9]  # every 4 steps and at each phase's end
    # per phase: its index, and its own loss curve
    assert [v for _, v in ev["phase/index"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [s for s, _ in ev["phase_loss/mamba-only"]] == [4, 5, 6]
    assert same(ev["phase_loss/attn-only"], series(rows[6:], "loss"))


def test_resume_purges_the_steps_after_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    """A run killed at step 7 with its last checkpoint at step 4 logged steps 5 and 6; the
    resume logs them again. TensorBoard's reader must see each step once, with the resumed run's
    values (what metrics.jsonl holds too)."""
    out = tmp_path / "r"
    over = tiny_overrides(tiny_data, out, steps=8) + ["train.eval_every=0", "train.ckpt_every=4"]
    real = trainer.Trainer.train_step

    def crash_at_7(self):
        if self.step == 6:
            raise RuntimeError("the machine went away")
        return real(self)

    monkeypatch.setattr(trainer.Trainer, "train_step", crash_at_7)
    with pytest.raises(RuntimeError):
        trainer.run(load_config("tiny-cpu", over))
    assert [s for s, _ in events(out)["train/loss"]] == [1, 2, 3, 4, 5, 6]
    monkeypatch.setattr(trainer.Trainer, "train_step", real)
    trainer.run(load_config("tiny-cpu", over), resume=True)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per process run
    loss = events(out)["train/loss"]
    assert [s for s, _ in loss] == list(range(1, 9))  # 5 and 6 once each: the old ones purged
    assert same(loss, series(read_metrics(out / "metrics.jsonl"), "loss"))
    # a fresh run over the directory (--overwrite) starts the events again
    trainer.run(load_config("tiny-cpu", over + ["train.max_steps=2"]), overwrite=True)
    assert [s for s, _ in events(out)["train/loss"]] == [1, 2]


def test_tensorboard_off(tiny_data, tmp_path):
    out = tmp_path / "r"
    trainer.run(load_config("tiny-cpu", tiny_overrides(tiny_data, out, steps=2) + ["run.tensorboard=false"]))
    assert (out / "metrics.jsonl").exists() and not (out / "tensorboard").exists()


def wandb_history(path) -> list[dict]:
    """The history rows of a .wandb file: a LevelDB-style log (32 KiB blocks of records, each a
    CRC, a length and a FULL/FIRST/MIDDLE/LAST type) after a 7-byte ":W&B" header, holding
    wandb's Record protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item})
            buf = b""
    return rows


def test_wandb_offline(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "r"
    over = tiny_overrides(tiny_data, out, steps=4) + ["run.wandb=true", "run.wandb_project=adamba-test"]
    trainer.run(load_config("tiny-cpu", over))
    run_id = (out / "wandb_id.txt").read_text().strip()
    (offline,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
    (log,) = offline.glob("*.wandb")
    assert log.stat().st_size > 0
    logged = [(int(h["_step"]), float(h["train/loss"])) for h in wandb_history(log)]
    rows = read_metrics(out / "metrics.jsonl")
    assert same(logged, series(rows, "loss"))
    # a resume continues the same W&B run (its id is kept in the run directory)
    trainer.run(load_config("tiny-cpu", over + ["train.max_steps=6"]), resume=True)
    assert (out / "wandb_id.txt").read_text().strip() == run_id
    steps = {
        int(h["_step"])
        for f in (out / "wandb").glob(f"offline-run-*-{run_id}/*.wandb")
        for h in wandb_history(f)
    }
    assert steps == {1, 2, 3, 4, 5, 6}


def test_missing_wandb_is_one_line(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    out = tmp_path / "r"
    cfg = load_config("tiny-cpu", tiny_overrides(tiny_data, out, steps=2) + ["run.wandb=true"])
    with pytest.raises(AdambaError, match="run.wandb = true but wandb is not installed"):
        trainer.run(cfg)
    assert not out.exists()  # refused before the run directory was made
