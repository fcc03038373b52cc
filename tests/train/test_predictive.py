"""Predictive training (adamba/train/predictive.py): the original plan's five gaps, each shown
against an oracle (the real AdamW update, a naive loop, the untrained model), then the mode inside
the trainer: phases, pass and FLOPs accounting, exact resume, one-line refusals."""

import copy
import math
import os
import signal

import pytest
import torch

from adamba import checkpoint as ck
from adamba.config import Config, load_config
from adamba.errors import AdambaError
from adamba.model import flops
from adamba.model.lm import LM
from adamba.train import predictive, trainer
from adamba.train.monitor import read_metrics
from tests.helpers import make_tiny_data, model_config, tiny_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("data"))


def lm_setup(seed=0, **pc):
    """A tiny LM, its AdamW and the mode over all its weights; `step()` is one real step on a
    fixed stream of random batches: (update applied, loss)."""
    torch.manual_seed(seed)
    cfg = Config()
    cfg.model = model_config(
        vocab_size=64, d_model=32, n_layer=2, attn={"n_head": 2, "n_kv_head": 1}, max_seq_len=16
    )
    for k, v in {"enabled": True, "warmup_steps": 0, "full_steps": 1000, **pc}.items():
        setattr(cfg.predictive, k, v)
    model = LM(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    pred = predictive.build(cfg, model, "lm", 16, 1)
    # a learnable stream: a repeated pattern plus noise
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 64, (17,), generator=g)

    def batch():
        x = base.repeat(8, 1).clone()
        noise = torch.rand(x.shape, generator=g) < 0.2
        x[noise] = torch.randint(0, 64, (int(noise.sum()),), generator=g)
        return x[:, :-1], x[:, 1:]

    def step():
        x, y = batch()
        _, loss = model(x, y)
        loss.backward()
        before = [p.detach().clone() for p in pred.params]
        pred.real_step(opt.step, loss.item(), 3e-3)
        opt.zero_grad()
        return [p.detach() - b for p, b in zip(pred.params, before)], float(loss)

    return model, pred, step


def flat(ts):
    return torch.cat([t.reshape(-1).double() for t in ts])


def cosine(a, b):
    return float(flat(a) @ flat(b) / (flat(a).norm() * flat(b).norm()))


# ---- the five gaps ---------------------------------------------------------------------------
def test_predicted_update_is_full_size_and_follows_the_real_adamw_update():
    """Gap 1: the predicted delta is non-empty, every tensor's shape, and points where AdamW's next
    update (the oracle: the real step taken right after) goes."""
    model, pred, step = lm_setup()
    for _ in range(12):
        step()
    cos, ratio = [], []
    for _ in range(5):
        delta = pred.predicted_update(3e-3)
        real, _ = step()
        assert [d.shape for d in delta] == [p.shape for p in pred.params]
        assert all(d.abs().sum() > 0 for d in delta)
        cos.append(cosine(delta, real))
        ratio.append(float(flat(delta).norm() / flat(real).norm()))
    assert min(cos) > 0.5, cos
    assert all(0.5 < r < 2.0 for r in ratio), ratio


def test_history_gram_and_combination_match_a_naive_loop():
    """The incremental ring (Gram rows refreshed per push) and the combination against plain
    recomputation from the stored updates."""
    _, pred, step = lm_setup(history=3)
    updates = [step()[0] for _ in range(5)]  # the ring holds the last 3
    newest = updates[::-1][:3]
    G = pred._order(pred.G, pred.pos, 3)
    for t in range(len(pred.params)):
        naive = torch.tensor(
            [[float(a[t].double().flatten() @ b[t].double().flatten()) for b in newest] for a in newest]
        )
        torch.testing.assert_close(G[t].cpu(), naive.double(), rtol=1e-6, atol=1e-12)
    coef = torch.randn(len(pred.params), 3, dtype=torch.float64)
    got = pred._combine(pred.H, pred.pos, 3, coef)
    for t in range(len(pred.params)):
        want = sum(float(coef[t, j]) * newest[j][t].double() for j in range(3))
        torch.testing.assert_close(got[t].double(), want, rtol=1e-5, atol=1e-9)


def held_out_errors(pred, models: dict, step, n: int) -> dict:
    """Per model: the relative squared error of its predicted update against the real update of
    each of the next n steps, each measured before the mode learns from that step."""
    errs = {name: 0.0 for name in models}
    trained = pred.dyn
    for _ in range(n):
        deltas = {}
        for name, dyn in models.items():
            pred.dyn = dyn
            deltas[name] = pred.predicted_update(1.0 if isinstance(step, Rotating) else 3e-3)
        pred.dyn = trained
        real = step.real_update() if isinstance(step, Rotating) else step()[0]
        for name, d in deltas.items():
            errs[name] += float(((flat(d) - flat(real)).norm() / flat(real).norm()) ** 2) / n
    return errs


def test_the_dynamics_model_trains_and_its_held_out_error_falls():
    """Gap 2: the dynamics model's weights (encoder and head) train, and its error on steps it has
    not seen falls below its error at initialisation ("repeat the last update"): far below on a
    rotating update stream (where the best combination of the last two updates is exact), and
    below on a tiny LM's AdamW updates (where repeating the last one is already close)."""
    cfg = Config()
    cfg.predictive.enabled, cfg.predictive.history, cfg.predictive.lr = True, 2, 3e-2
    rot = Rotating(drift=0.0)
    pred = predictive.Predictive(cfg, [("p", rot.p)], None, 0)
    pred.phase, pred.left = "full", 10**9
    init = copy.deepcopy(pred.dyn)
    for _ in range(150):
        pred.real_step(rot.step, 1.0, 1.0)
    moved = {n for (n, a), b in zip(pred.dyn.named_parameters(), init.parameters()) if not torch.equal(a, b)}
    assert {"encoder.0.weight", "encoder.2.weight", "head.weight", "head.bias"} <= moved
    errs = held_out_errors(pred, {"trained": pred.dyn, "init": init}, rot, 10)
    assert errs["init"] > 1.0 and errs["trained"] < 0.1 * errs["init"], errs

    _, pred, step = lm_setup()
    init = copy.deepcopy(pred.dyn)
    for _ in range(40):
        step()
    errs = held_out_errors(pred, {"trained": pred.dyn, "init": init}, step, 8)
    assert errs["trained"] < 0.95 * errs["init"], errs


def test_the_state_encoder_is_learned_and_reads_the_state():
    """Gap 5: the encoder's code differs across tensors with different update histories, so the
    coefficients do too (the prediction is state-dependent, not one constant), and it trained."""
    _, pred, step = lm_setup()
    w0 = pred.dyn.encoder[0].weight.detach().clone()
    for _ in range(20):
        step()
    x, _ = pred.features(3e-3)
    h, c, _ = pred.dyn(x)
    assert not torch.equal(pred.dyn.encoder[0].weight, w0)
    assert h.std(0).mean() > 1e-3 and c.std(0).max() > 1e-3


class Rotating:
    """A synthetic 'optimizer' whose update is a rotation in each pair of coordinates plus a
    constant drift: two past updates cannot express both (history=2), so the dynamics prediction
    leaves a persistent residual a corrector can learn."""

    def __init__(self, n=64, seed=0, drift=1.0, theta=1.2):
        g = torch.Generator().manual_seed(seed)
        self.p = torch.zeros(n, requires_grad=True)
        self.v = torch.randn(n, generator=g) * 0.01
        self.drift = torch.randn(n, generator=g) * 0.01 * drift
        self.theta, self.t = theta, 0

    def real_update(self) -> list[torch.Tensor]:
        c, s = math.cos(self.theta * self.t), math.sin(self.theta * self.t)
        a, b = self.v[0::2], self.v[1::2]
        u = torch.empty_like(self.v)
        u[0::2], u[1::2] = c * a - s * b, s * a + c * b
        return [u + self.drift]

    def step(self):
        with torch.no_grad():
            self.p.add_(self.real_update()[0])
        self.t += 1


def test_residuals_are_stored_and_the_corrector_reduces_held_out_error():
    """Gaps 3 and 4: on CORRECT steps the residual (real update - dynamics prediction, the naive
    oracle recomputed here) is stored, and the corrector fitted on earlier residuals lowers the
    error on each new step before it trains on it."""
    cfg = Config()
    cfg.predictive.enabled, cfg.predictive.history, cfg.predictive.lr = True, 2, 1e-2
    rot = Rotating()
    pred = predictive.Predictive(cfg, [("p", rot.p)], None, 0)
    pred.phase, pred.left = "full", 10**9
    for _ in range(3):
        pred.real_step(rot.step, 1.0, 1.0)
    pred.phase, pred.left = "correct", 10**9
    x, _ = pred.features(1.0)
    _, c, _ = pred.dyn(x)
    expect = pred._combine(pred.H, pred.pos, 2, c.detach().double())[0]
    before = rot.p.detach().clone()
    pred.real_step(rot.step, 1.0, 1.0)
    torch.testing.assert_close(pred.R[0][pred.rpos], (rot.p.detach() - before) - expect.float())
    gains = []
    for _ in range(300):
        pred.real_step(rot.step, 1.0, 1.0)
        gains.append(pred.corr_base - pred.corr_error)
    assert pred.corr_base > 0.05  # the dynamics prediction alone leaves a real residual
    assert sum(gains[-100:]) / 100 > 0.3 * pred.corr_base, (gains[-5:], pred.corr_base)
    assert pred.dyn.corrector.weight.abs().sum() > 0


# ---- inside the trainer --------------------------------------------------------------------
PRED = [
    "predictive.enabled=true",
    "predictive.warmup_steps=4",
    "predictive.full_steps=3",
    "predictive.horizon=2",
    "predictive.correct_steps=2",
    "predictive.max_error=10",
    "predictive.band=100",
    "train.eval_every=0",
]


def test_phases_cycle_and_passes_and_flops_are_counted(data, tmp_path, monkeypatch):
    """WARMUP -> FULL -> PREDICT -> CORRECT -> PREDICT ...; PREDICT steps never call backward;
    the rows count forward / backward passes and FLOPs (oracle: adamba/model/flops.py per token
    times the step's tokens, plus the mode's own overhead)."""
    backwards = []
    real_backward = torch.Tensor.backward

    def counting(self, *a, **k):
        backwards.append(1)
        return real_backward(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "backward", counting)
    seen = []
    real_step = trainer.Trainer.train_step

    def spy(self):
        n = len(backwards)
        row = real_step(self)
        seen.append((row["predictive"], len(backwards) - n, self.predictive.count["flops_overhead"]))
        return row

    monkeypatch.setattr(trainer.Trainer, "train_step", spy)
    cfg = load_config("tiny-cpu", tiny_overrides(data, tmp_path / "r", steps=16) + PRED)
    trainer.run(cfg)
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    phases = [r["predictive"] for r in rows]
    assert phases[:4] == ["warmup"] * 4 and phases[4:7] == ["full"] * 3
    assert phases[7:] == ["predict", "predict", "correct", "correct"] + ["predict"] * 4 + ["correct"]
    # backward: the LM's once per real step, plus the dynamics model's once per learning step
    for ph, n, _ in seen:
        assert n == {"warmup": 1, "full": 2, "correct": 2, "predict": 0}[ph], (ph, n)
    assert [r.get("pred_loss") is not None for r in rows] == [p == "predict" for p in phases]
    last = rows[-1]
    n_pred = phases.count("predict")
    assert last["backward_skipped"] == n_pred and last["forwards"] == 16
    assert last["backwards"] == 16 - n_pred
    model = LM(cfg.model)
    per = flops.train_flops(model, cfg.data.seq_len)
    tokens = cfg.train.batch_size * cfg.data.seq_len
    want = tokens * ((16 - n_pred) * per.total + n_pred * per.forward) + seen[-1][2]
    assert last["flops"] == pytest.approx(want, rel=1e-9)
    assert all(r["horizon"] >= 1 for r in rows) and rows[-1]["horizon"] == 8


def test_a_departure_from_the_band_ends_predict_early(data, tmp_path):
    """A band of ~0 loss-noise standard deviations: the first PREDICT step whose observed loss
    exceeds the extrapolated loss ends the run (counted, horizon halved), and CORRECT follows."""
    over = (
        tiny_overrides(data, tmp_path / "r", steps=20)
        + PRED
        + ["predictive.band=1e-9", "predictive.horizon=8"]
    )
    trainer.run(load_config("tiny-cpu", over))
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    departed = [r for r in rows if r["predictive"] == "predict" and r["loss"] > r["pred_loss"]]
    assert departed, "no PREDICT step saw a loss above its prediction"
    i = rows.index(departed[0])
    assert rows[i + 1]["predictive"] == "correct" and rows[i + 1]["horizon"] == rows[i]["horizon"] // 2


def test_resume_with_the_mode_is_exact(data, tmp_path, monkeypatch):
    """An interruption inside a PREDICT run, then --resume: the same losses, phases and counts as
    one uninterrupted run (phase, dynamics model, corrector, rings and counters are checkpointed)."""
    over = PRED + ["predictive.correct_steps=3", "train.ckpt_every=0"]
    trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "a", steps=18) + over))
    real_step = trainer.Trainer.train_step

    def stop_at_8(self):
        row = real_step(self)
        if self.step == 8:  # the first PREDICT step
            os.kill(os.getpid(), signal.SIGINT)
        return row

    monkeypatch.setattr(trainer.Trainer, "train_step", stop_at_8)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "b", steps=18) + over))
    monkeypatch.setattr(trainer.Trainer, "train_step", real_step)
    assert ck.read_checkpoint(tmp_path / "b").state["step"] == 8
    trainer.run(load_config("tiny-cpu", tiny_overrides(data, tmp_path / "b", steps=18) + over), resume=True)
    keys = ("step", "loss", "predictive", "forwards", "backwards", "flops", "dyn_error", "horizon")
    a, b = (read_metrics(tmp_path / n / "metrics.jsonl") for n in ("a", "b"))
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    assert "predict" in [r["predictive"] for r in a[8:]]


def test_refusals_are_one_line(data, tmp_path):
    cfg = load_config("tiny-cpu", tiny_overrides(data, tmp_path / "r") + ["predictive.enabled=true"])
    model = LM(cfg.model)
    with pytest.raises(AdambaError, match="one process only"):
        predictive.build(cfg, model, "lm", 32, 2)
    with pytest.raises(AdambaError, match="supports the lm and sft objectives"):
        predictive.build(cfg, model, "grpo", 32, 1)
    with pytest.raises(AdambaError, match="max_horizon=2 must be >= predictive.horizon=4"):
        load_config("tiny-cpu", ["predictive.max_horizon=2"])
    with pytest.raises(AdambaError, match="predictive.history=1 is out of range"):
        load_config("tiny-cpu", ["predictive.history=1"])
    off = predictive.build(load_config("tiny-cpu"), model, "lm", 32, 4)  # off: AdamW's step, nothing kept
    assert isinstance(off, predictive.Off) and off.state_dict() == {} and not off.skips_backward
