"""The post-training losses against oracles: distillation KL against TRL's own
GKDTrainer.generalized_jsd_loss (beta 1 = reverse KL, beta 0 = forward KL); GRPO's advantages and
its four token normalisations, and DPO's sigmoid loss, against the published formulas written out
token by token (TRL 1.16's GRPOTrainer / DPOTrainer compute them inside their trainers)."""

import math

import pytest
import torch

from adamba.post import distill, dpo, grpo


def test_distill_kl_equals_trl_generalized_jsd():
    trl_gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    jsd = trl_gkd.GKDTrainer.generalized_jsd_loss
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 13, generator=g) * 2, torch.randn(3, 7, 13, generator=g) * 2
    labels = torch.randint(0, 13, (3, 7), generator=g)
    labels[0, :3] = -100
    labels[2, 5:] = -100
    mask = labels != -100
    for temp in (1.0, 2.0):
        for direction, beta in (("reverse", 1.0), ("forward", 0.0)):
            want = jsd(s, t, labels=labels, beta=beta, temperature=temp)
            got = distill.kl(s, t, mask, direction, temp)
            assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6), (direction, temp)
    assert distill.kl(s, s, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_grpo_advantages_written_out():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 1.0, 2.0, 0.0])
    G = 4
    want_group, want_none = [], []
    for i in range(0, len(r), G):
        grp = r[i : i + G].tolist()
        mean = sum(grp) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (G - 1))  # Bessel
        want_group += [(x - mean) / (std + 1e-4) for x in grp]
        want_none += [x - mean for x in grp]
    assert torch.allclose(grpo.advantages(r, G, "group"), torch.tensor(want_group), atol=1e-6)
    assert torch.allclose(grpo.advantages(r, G, "none"), torch.tensor(want_none), atol=1e-6)
    mean = r.mean().item()
    batch_std = math.sqrt(sum((x - mean) ** 2 for x in r.tolist()) / (len(r) - 1))
    group_means = [sum(r[i : i + G].tolist()) / G for i in range(0, len(r), G)]
    want_batch = [(x - group_means[i // G]) / (batch_std + 1e-4) for i, x in enumerate(r.tolist())]
    assert torch.allclose(grpo.advantages(r, G, "batch"), torch.tensor(want_batch), atol=1e-6)
    assert grpo.advantages(r, G)[4:8].abs().max() == 0  # equal rewards: no signal


def _reference(logp, old, ref, adv, mask, loss_type, eps_lo, eps_hi, beta, max_len, n_tokens):
    """TRL 1.16 GRPOTrainer._compute_loss's formulas, one token at a time."""
    B, T = logp.shape
    logp, old, ref, adv, mask = (v.tolist() for v in (logp, old, ref, adv, mask))
    per = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            ratio = math.exp(logp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - eps_lo), 1 + eps_hi)
            loss = -min(ratio * adv[b], clipped * adv[b])
            if beta:
                d = ref[b][t] - logp[b][t]
                loss += beta * (math.exp(d) - d - 1)
            per[b][t] = loss * mask[b][t]
    tokens = [sum(mask[b]) for b in range(B)]
    if loss_type == "grpo":
        return sum(sum(per[b]) / max(tokens[b], 1) for b in range(B)) / B
    if loss_type == "bnpo":
        return sum(map(sum, per)) / max(sum(tokens), 1)
    if loss_type == "dr_grpo":
        return sum(map(sum, per)) / (B * max_len)
    return sum(map(sum, per)) / n_tokens


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_written_out(loss_type, beta):
    g = torch.Generator().manual_seed(1)
    B, T = 4, 6
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + torch.randn(B, T, generator=g) * 0.5  # ratios far enough from 1 to clip
    ref = logp + torch.randn(B, T, generator=g) * 0.3
    adv = torch.tensor([1.5, -0.7, 0.2, -2.0])
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    kw = dict(eps_lo=0.2, eps_hi=0.28, beta=beta, max_len=8, n_tokens=40.0)
    want = _reference(logp.double(), old.double(), ref.double(), adv.double(), mask, loss_type, **kw)
    got = grpo.policy_loss(
        logp,
        old,
        adv,
        mask,
        loss_type,
        0.2,
        0.28,
        beta,
        ref,
        max_len=8,
        n_tokens=40.0 if loss_type == "dapo" else None,
    )
    assert got.item() == pytest.approx(want, rel=1e-5)
    # on-policy (ratio 1), no KL: the gradient raises the log probability of good completions
    p = logp.clone().requires_grad_(True)
    grpo.policy_loss(p, p.detach(), adv, mask, loss_type).backward()
    assert (p.grad[0][mask[0] > 0] < 0).all() and (p.grad[3][mask[3] > 0] > 0).all()


def test_dpo_sigmoid_loss_written_out():
    c, r = torch.tensor([-10.0, -20.0, -5.0]), torch.tensor([-12.0, -15.0, -5.5])
    rc, rr = torch.tensor([-11.0, -19.0, -6.0]), torch.tensor([-11.5, -16.0, -5.0])
    for beta, ls in ((0.1, 0.0), (0.5, 0.1)):
        want = []
        for i in range(3):
            delta = (c[i] - rc[i]) - (r[i] - rr[i])
            sig = 1 / (1 + math.exp(-beta * delta))
            want.append(-(1 - ls) * math.log(sig) - ls * math.log(1 - sig))
        loss, acc = dpo.dpo_loss(c, r, rc, rr, beta, ls)
        assert loss.item() == pytest.approx(sum(want) / 3, rel=1e-6)
    assert acc.tolist() == [1.0, 0.0, 1.0]
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    assert dpo.sequence_logp(logp, torch.tensor([[0, 1, 1]])).item() == -5.0
