import json
import os
import signal

import pytest
import torch

from adamba import checkpoint as ck
from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from tests.helpers import make_tiny_data, nan_loss_on, tiny_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("data"))


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def test_training_reduces_loss_and_writes_run(data, tmp_path):
    res = trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "r", steps=12)))
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert "val_bpb" in rows[3] and res.val["bpb"] > 0
    ckpt = ck.read_checkpoint(tmp_path / "r")
    assert ckpt.state["step"] == 12 and (ckpt.path / "model.safetensors").is_file()


def test_resume_is_exact(data, tmp_path, monkeypatch):
    """2N steps in one go == N steps, an interruption, then --resume for N more."""
    trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "a", steps=8)))

    from adamba.data.loader import TokenLoader

    real_next = TokenLoader.__next__
    calls = {"n": 0}

    def flaky_next(self):
        calls["n"] += 1
        if calls["n"] == 6:  # training batch of step 6: interrupt mid-step
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C: the step in flight completes
        return real_next(self)

    monkeypatch.setattr(TokenLoader, "__next__", flaky_next)
    cfg_b = load_config("tiny-cpu", tiny_overrides(data, tmp_path / "b", steps=8) + ["train.eval_every=0"])
    with pytest.raises(KeyboardInterrupt):
        trainer.run(cfg_b)
    monkeypatch.setattr(TokenLoader, "__next__", real_next)
    assert ck.read_checkpoint(tmp_path / "b").state["step"] == 6  # saved at the step boundary
    cfg_b = load_config("tiny-cpu", tiny_overrides(data, tmp_path / "b", steps=8) + ["train.eval_every=0"])
    trainer.run(cfg_b, resume=True)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _ in b] == list(range(1, 9))
    assert a == b  # bit-identical losses at every step


def test_fault_between_write_and_rename_keeps_previous_checkpoint(data, tmp_path, monkeypatch):
    run_dir = tmp_path / "r"
    trainer.run(load_config("tiny-cpu", tiny_overrides(data, run_dir, steps=4)))
    before = ck.read_checkpoint(run_dir)
    weights_before = (before.path / "model.safetensors").read_bytes()

    def crash(*a, **k):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(ck, "_commit", crash)
    with pytest.raises(
        AdambaError, match=r"cannot save checkpoint step_000008 .*simulated.*step_000004 is intact"
    ):
        trainer.run(load_config("tiny-cpu", tiny_overrides(data, run_dir, steps=8)), resume=True)
    after = ck.read_checkpoint(run_dir)
    assert after.path == before.path and after.state["step"] == 4
    assert (after.path / "model.safetensors").read_bytes() == weights_before
    from adamba.model.lm import LM

    model = LM(after.cfg.model)
    ck.load_weights(model, after)  # loadable
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_fault_before_latest_update(data, tmp_path, monkeypatch):
    """A crash after the folder rename but before LATEST moves still resolves to the old step."""
    run_dir = tmp_path / "r"
    trainer.run(load_config("tiny-cpu", tiny_overrides(data, run_dir, steps=4)))
    real_replace = ck.os.replace

    def replace(src, dst):
        if str(dst).endswith("LATEST"):
            raise OSError("simulated crash before LATEST")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(AdambaError, match="simulated crash before LATEST"):
        trainer.run(load_config("tiny-cpu", tiny_overrides(data, run_dir, steps=8)), resume=True)
    assert ck.read_checkpoint(run_dir).state["step"] == 4


def test_resume_rejects_other_tokenizer(data, tmp_path):
    from tests.helpers import make_tiny_data

    trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "r", steps=4)))
    other = make_tiny_data(tmp_path / "other", vocab_size=360)
    over = tiny_overrides(data, tmp_path / "r", steps=8) + [f"data.tokenizer={other['tokenizer']}"]
    with pytest.raises(AdambaError, match="360 tokens.*trained with 400"):
        trainer.run(load_config("tiny-cpu", over), resume=True)


def test_missing_manifest_writes_nothing(data, tmp_path):
    over = tiny_overrides(data, tmp_path / "r") + [f"data.train={tmp_path / 'nope' / 'manifest.jsonl'}"]
    with pytest.raises(AdambaError, match="nope"):
        trainer.run(load_config("tiny-cpu", over))
    assert not (tmp_path / "r").exists()


def test_checkpoint_config_roundtrip(data, tmp_path):
    trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "r", steps=4)))
    ckpt = ck.read_checkpoint(tmp_path / "r")
    saved = json.loads((ckpt.path / "config.json").read_text())
    assert saved["model"]["d_model"] == 32 and ckpt.cfg.model.n_layer == 2
    assert torch.load(ckpt.path / "trainer.pt", weights_only=False)["optimizer"]["state"]


def test_flipped_byte_in_a_shard_stops_training(data, tmp_path):
    import shutil

    from adamba.data.shards import read_manifest

    bad = tmp_path / "bad"
    shutil.copytree(str(data["train"]).rsplit("/", 1)[0], bad)
    shard = read_manifest(bad / "manifest.jsonl")[0].path
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    over = tiny_overrides(data, tmp_path / "r") + [f"data.train={bad / 'manifest.jsonl'}"]
    with pytest.raises(AdambaError, match=shard.name):
        trainer.run(load_config("tiny-cpu", over))


def test_embed_lr_mult_scales_the_embedding_step_only(data, tmp_path):
    """One step with train.embed_lr_mult=10 moves the embedding 10x as far as with 1 (Adam's first
    step is lr * sign(grad)) and every other weight exactly as far."""
    from safetensors.torch import load_file

    from adamba.model.lm import LM

    weights = {}
    for mult in (1, 10):
        cfg = load_config("tiny-cpu", tiny_overrides(data, tmp_path / f"m{mult}", steps=1))
        cfg.train.embed_lr_mult = float(mult)
        cfg.train.warmup_frac = 0.0
        trainer.run(cfg)
        weights[mult] = load_file(str(ck.read_checkpoint(tmp_path / f"m{mult}").path / "model.safetensors"))
    torch.manual_seed(cfg.train.seed)
    init = LM(cfg.model).state_dict()
    step1 = (weights[1]["embed.weight"] - init["embed.weight"]).abs().max().item()
    step10 = (weights[10]["embed.weight"] - init["embed.weight"]).abs().max().item()
    assert step1 > 0 and abs(step10 / step1 - 10.0) < 0.05
    for name, w in weights[1].items():
        if name != "embed.weight":
            torch.testing.assert_close(w, weights[10][name], rtol=0, atol=0, msg=name)


def check_compiled_follows_eager(data, tmp_path) -> None:
    """train.compile=true (torch.compile on the training forward) trains the same model: the
    per-step losses match an eager run's, and the checkpoint and eval still work."""
    from torch._dynamo.utils import counters

    trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "e", steps=6)))
    counters.clear()
    res = trainer.run(
        load_config("tiny-cpu", [*tiny_overrides(data, tmp_path / "c", steps=6), "train.compile=true"])
    )
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did compile the forward
    eager, compiled = losses(tmp_path / "e"), losses(tmp_path / "c")
    assert [s for s, _ in compiled] == [s for s, _ in eager] == list(range(1, 7))
    for (_, a), (_, b) in zip(eager, compiled, strict=True):
        assert abs(a - b) < 2e-3, (a, b)
    assert res.val["bpb"] > 0 and ck.read_checkpoint(tmp_path / "c").state["step"] == 6


def test_compiled_training_follows_eager(data, tmp_path, monkeypatch):
    """The compile path of the trainer (toolchain check, dynamo capturing the training forward and
    its backward, losses, checkpoint) with the aot_eager backend: the same graphs inductor gets,
    run without generating C++ (seconds, not the ~80 s inductor takes on 2 cores; the `heavy`
    test below runs inductor itself)."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, **{**kw, "backend": "aot_eager"}))
    torch._dynamo.reset()
    check_compiled_follows_eager(data, tmp_path)
    torch._dynamo.reset()


@pytest.mark.heavy
def test_compiled_training_follows_eager_with_inductor(data, tmp_path):
    torch._dynamo.reset()
    check_compiled_follows_eager(data, tmp_path)


def test_compile_without_a_toolchain_is_a_clear_error_before_training(data, tmp_path, monkeypatch):
    """No working C++ compiler (simulated): train.compile=true stops with a one-line AdambaError
    naming the fix, before any step or checkpoint, instead of an inductor traceback at step 1."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-compiler-here",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # a cached kernel needs no compiler
    torch._dynamo.reset()
    with pytest.raises(AdambaError, match="train.compile=false"):
        trainer.run(
            load_config("tiny-cpu", [*tiny_overrides(data, tmp_path / "r", steps=2), "train.compile=true"])
        )
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
    torch._dynamo.reset()


def test_run_is_exported_from_the_train_package():
    """`adamba.train.run(cfg)` is the documented entry point (ARCHITECTURE.md)."""
    import adamba.train

    assert adamba.train.run is trainer.run


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's answer")
def test_a_device_that_is_not_here_is_one_line():
    for name, needle in (("cuda", "no CUDA device here"), ("cuda:1", "no CUDA device here"), ("mps", "MPS")):
        with pytest.raises(AdambaError, match=needle):
            trainer.pick_device(name)
    assert trainer.pick_device("auto").type == "cpu"


def test_a_non_finite_step_is_skipped_counted_and_logged(data, tmp_path, monkeypatch):
    """Steps 3 and 6 produce a NaN loss: their updates are skipped (the weights after step 3 equal
    those after step 2), the rows count them, and training goes on."""
    nan_loss_on(monkeypatch, lambda n: n in (3, 6))
    seen = []
    real_step = trainer.Trainer.train_step

    def spy(self):
        row = real_step(self)
        seen.append([p.detach().clone() for p in self.model.parameters()])
        return row

    monkeypatch.setattr(trainer.Trainer, "train_step", spy)
    res = trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "r", steps=8)))
    assert res.steps == 8
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r.get("skipped_steps", 0) for r in rows] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert all(torch.equal(a, b) for a, b in zip(seen[1], seen[2]))  # step 3 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(seen[2], seen[3]))
    assert all(r["grad_norm"] >= 0 for r in rows if r["step"] not in (3, 6))


def test_activation_checkpointing_trains_the_same_run(data, tmp_path, monkeypatch):
    """train.activation_checkpointing=true: every block's forward runs again in backward, and
    the loss curve is the same, bit for bit (the recomputation is exact); its memory and speed
    are in benchmarks/dist.py."""
    from adamba.model.lm import Block

    runs, calls = [], []
    real = Block._forward
    monkeypatch.setattr(Block, "_forward", lambda self, *a: calls.append(1) or real(self, *a))
    for name, on in (("a", "false"), ("b", "true")):
        calls.clear()
        over = tiny_overrides(data, tmp_path / name, steps=4) + [f"train.activation_checkpointing={on}"]
        over += ["train.eval_every=0"]
        trainer.run(load_config("tiny-cpu", over))
        runs.append((losses(tmp_path / name), len(calls)))
    assert runs[0][0] == runs[1][0]
    assert (runs[0][1], runs[1][1]) == (4 * 2, 2 * 4 * 2)  # 4 steps x 2 blocks, twice with checkpointing
