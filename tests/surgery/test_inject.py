"""inject-mamba keeps the function: the grown model's logits equal the trained dense model's
(exactly: the new layers add zero), greedy generations are identical, the checkpoint loads like
any other; a run started from it with train = ["@M"] trains the new layers only, every old
weight bitwise unchanged, and its first loss is the dense model's."""

import json

import pytest
import torch
from safetensors.torch import load_file

from adamba.checkpoint import load_model
from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.model import decode
from adamba.surgery.inject import grown_config, inject_checkpoint, inject_mamba
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from tests.helpers import tiny_overrides

MAMBA = [
    "model.mamba.ffn=none",
    "model.mamba.d_state=16",
    "model.mamba.head_dim=16",
    "model.mamba.chunk_size=16",
]


@pytest.fixture(scope="module")
def dense(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("inject") / "dense"
    over = tiny_overrides(tiny_data, out, steps=6) + ["model.n_layer=4", "train.eval_every=0"] + MAMBA
    trainer.run(load_config("tiny-cpu", over))
    return out


def test_positions_and_pattern():
    cfg = load_config("tiny-cpu", ["model.n_layer=4"]).model
    new, old_at, new_at = grown_config(cfg, [1, 3])
    assert new.pattern == "AAMAAM" and new.n_layer == 6 and old_at == [0, 1, 3, 4] and new_at == [2, 5]
    with pytest.raises(AdambaError, match="distinct block indices in 0..3"):
        grown_config(cfg, [4])


def test_logits_and_generation_unchanged(dense, tmp_path):
    model, tok, _ = load_model(dense)
    grown, rec = inject_mamba(model)
    assert rec["pattern"] == "AAMAAM" and rec["max_abs_logit_diff"] == 0.0
    x = torch.randint(0, model.cfg.vocab_size, (3, 32))
    assert torch.equal(model(x)[0], grown(x)[0])  # bit for bit
    p = torch.tensor([[tok.bos_id] + tok.encode("def f(")])
    a = [int(t[0]) for t in decode.generate(model, p, 12, temperature=0.0)]
    b = [int(t[0]) for t in decode.generate(grown, p, 12, temperature=0.0)]
    assert a == b
    # the checkpoint on disk loads like any other, with the same logits and a surgery record
    path = inject_checkpoint(str(dense), str(tmp_path / "grown"), [0, 2])
    g2, tok2, ck = load_model(tmp_path / "grown")
    assert g2.cfg.pattern == "AMAAMA" and tok2.vocab_size == tok.vocab_size
    assert torch.equal(model(x)[0], g2(x)[0])
    assert json.loads((tmp_path / "grown/surgery.json").read_text())["new_blocks"] == [1, 4]
    assert ck.state["surgery"]["from"].endswith("step_000006") and path.name == "step_000000"
    with pytest.raises(AdambaError, match="not empty"):
        inject_checkpoint(str(dense), str(tmp_path / "grown"))


def test_training_the_new_layers_leaves_the_old_bitwise(dense, tiny_data, tmp_path):
    inject_checkpoint(str(dense), str(tmp_path / "grown"))
    out = tmp_path / "phase1"
    phases = tmp_path / "phase1.toml"
    phases.write_text('[[phase]]\nname = "mamba"\nsteps = 4\ntrain = ["@M"]\nlr = 1e-2\n')
    over = tiny_overrides(tiny_data, out, steps=4) + MAMBA
    over += [
        "model.n_layer=6",
        "model.pattern=AAMAAM",
        f"train.init_from={tmp_path / 'grown'}",
        "train.eval_every=0",
    ]
    trainer.run(load_config(str(phases), over))
    before = load_file(str(next((tmp_path / "grown/checkpoints").glob("step_*")) / "model.safetensors"))
    after = load_file(str(next((out / "checkpoints").glob("step_*")) / "model.safetensors"))
    new = ("blocks.2.", "blocks.5.")
    for k, v in before.items():
        if k.startswith(new):
            continue
        assert torch.equal(v, after[k]), k  # the old model, bit for bit
    assert not torch.equal(before["blocks.2.mixer.out_proj.weight"], after["blocks.2.mixer.out_proj.weight"])
    # step 1's loss is the dense model's on the same batch (the new layers start by adding zero)
    rows = read_metrics(out / "metrics.jsonl")
    ref = tmp_path / "dense-again"
    over = tiny_overrides(tiny_data, ref, steps=1) + MAMBA + ["model.n_layer=4", f"train.init_from={dense}"]
    trainer.run(load_config("tiny-cpu", over + ["train.eval_every=0"]))
    assert len(rows) == 4 and rows[0]["phase"] == "mamba"
    assert rows[0]["loss"] == read_metrics(ref / "metrics.jsonl")[0]["loss"]


def test_refusals(dense, tiny_data, tmp_path, elastic_run, capsys):
    from tests.cli.test_bad_args import cli_error

    with pytest.raises(AdambaError, match="without elastic heads"):
        inject_checkpoint(str(elastic_run / "el"), str(tmp_path / "x"))
    assert "--at 'a,b'" in cli_error(
        capsys, "surgery", "inject-mamba", "--ckpt", str(dense), "--out", str(tmp_path / "y"), "--at", "a,b"
    )
    over = tiny_overrides(tiny_data, tmp_path / "r") + [f"train.init_from={dense}", "model.n_layer=3"]
    with pytest.raises(AdambaError, match="train.init_from=.*model.n_layer: checkpoint 4 vs config 3"):
        trainer.run(load_config("tiny-cpu", over))


def test_a_dense_checkpoint_starts_an_elastic_model(dense, tmp_path):
    """The plan's phase 2 starts Matryoshka training from the injected dense checkpoint: its
    weights load into a model with elastic heads, which start fresh; any other mismatch fails."""
    from adamba.checkpoint import load_weights, read_checkpoint
    from adamba.config import ElasticConfig
    from adamba.model.elastic import attach_elastic
    from adamba.model.lm import LM

    inject_checkpoint(str(dense), str(tmp_path / "grown"))
    ck = read_checkpoint(tmp_path / "grown")
    model = LM(ck.cfg.model)
    attach_elastic(model, ElasticConfig(enabled=True, widths=[0.5, 1.0]))
    with pytest.raises(AdambaError, match="does not match the model config"):
        load_weights(model, ck)
    load_weights(model, ck, fresh=("elastic.",))
    saved = load_file(str(ck.path / "model.safetensors"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())


@pytest.mark.parametrize("kind", ["A", "K"])
def test_deepen_with_identity_blocks(dense, tmp_path, kind, capsys):
    from adamba.cli import main

    main(
        [
            "surgery",
            "deepen",
            "--ckpt",
            str(dense),
            "--out",
            str(tmp_path / "deep"),
            "--kind",
            kind,
            "--at",
            "0",
        ]
    )
    assert f"deepen-{kind}" in capsys.readouterr().out
    model, _, _ = load_model(dense)
    deep, _, _ = load_model(tmp_path / "deep")
    assert deep.cfg.pattern == f"A{kind}AAA" and deep.cfg.n_layer == 5
    x = torch.randint(0, model.cfg.vocab_size, (2, 24))
    assert torch.equal(model(x)[0], deep(x)[0])
