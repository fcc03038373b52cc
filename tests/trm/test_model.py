"""The TRM network: recursion schedule, bidirectional cores, init, losses, puzzle optimizer."""

import math

import pytest
import torch

from adamba.trm.config import TRMModelConfig, load_trm_config
from adamba.trm.loss import log_stablemax, token_ce, trm_loss
from adamba.trm.model import TRM, BiKDA, SparseSignSGD, core_calls, trunc_normal_


def tiny(pattern="AA", **kw) -> TRMModelConfig:
    base = dict(
        d_model=16, heads=2, pattern=pattern, n=2, T=3, n_sup=3, vocab_size=7, seq_len=6, n_puzzle_ids=3
    )
    return TRMModelConfig(**{**base, **kw})


def batch(cfg, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, cfg.vocab_size, (B, cfg.seq_len), generator=g)
    return x, torch.randint(0, cfg.n_puzzle_ids, (B,), generator=g)


def test_recursion_schedule_only_last_round_has_gradients():
    """T*(n+1) core calls per step, in the order z n times then y; only the last n+1 with grad."""
    cfg = tiny(n=3, T=4)
    torch.manual_seed(0)
    model = TRM(cfg)
    calls = []
    model.core.register_forward_hook(lambda mod, args, out: calls.append(torch.is_grad_enabled()))
    x, pid = batch(cfg)
    carry, logits, q = model(model.initial_carry(4), x, pid)
    with_grad, without = core_calls(cfg)
    assert calls == [False] * without + [True] * with_grad
    assert (with_grad, without) == (4, 12)
    assert not carry.y.requires_grad and not carry.z.requires_grad
    assert logits.shape == (4, cfg.seq_len, cfg.vocab_size) and q.shape == (4,)
    logits.sum().backward()  # the gradient reaches the embedding through the last round
    assert model.embed.weight.grad.abs().sum() > 0


def test_updates_follow_the_formulas():
    """One step equals z <- f(z + y + x) n times, y <- f(y + z), T times, written out."""
    cfg = tiny(n=2, T=2)
    torch.manual_seed(1)
    model = TRM(cfg)
    x, pid = batch(cfg)
    c0 = model.initial_carry(4)
    carry, logits, _ = model(c0, x, pid)
    emb = model.embed_input(x, model.puzzle_emb[pid])
    y, z = c0.y, c0.z
    for _ in range(cfg.T):
        for _ in range(cfg.n):
            z = model.core.blocks[1](model.core.blocks[0](z + y + emb))
        y = model.core.blocks[1](model.core.blocks[0](y + z))
    torch.testing.assert_close(carry.y, y)
    torch.testing.assert_close(carry.z, z)
    torch.testing.assert_close(logits, model.head(y[:, cfg.puzzle_len :]))


@pytest.mark.parametrize("pattern", ["A", "M", "K"])
def test_every_core_is_bidirectional(pattern):
    """The first cell's output changes when only the last cell's token changes."""
    cfg = tiny(pattern, rope=pattern == "A")
    torch.manual_seed(0)
    model = TRM(cfg)
    x, pid = batch(cfg, B=1)
    x2 = x.clone()
    x2[0, -1] = x[0, -1] % (cfg.vocab_size - 1) + 1
    _, a, _ = model(model.initial_carry(1), x, pid)
    _, b, _ = model(model.initial_carry(1), x2, pid)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4


def test_bikda_is_the_mean_of_both_scans():
    cfg = tiny("K")
    torch.manual_seed(0)
    layer = BiKDA(cfg.core_config())
    h = torch.randn(2, 5, 16)
    fwd = layer.kda(h)
    bwd = layer.kda(torch.flip(h, [1]))
    torch.testing.assert_close(layer(h), 0.5 * (fwd + torch.flip(bwd, [1])))
    # the backward scan's output at position 0 has read every position: explicit reverse order
    manual = layer.kda(h[:, [4, 3, 2, 1, 0]])[:, 4]
    torch.testing.assert_close(torch.flip(bwd, [1])[:, 0], manual)


def test_init_q_head_and_state():
    cfg = tiny()
    model = TRM(cfg)
    assert torch.all(model.q_head.weight == 0) and torch.all(model.q_head.bias == -5)
    assert torch.all(model.puzzle_emb == 0)
    c = model.initial_carry(3)
    assert torch.equal(c.y[2, 4], model.y_init) and torch.equal(c.z[0, 0], model.z_init)
    # the initial y, z are saved with the weights (buffers in the state dict)
    assert {"y_init", "z_init", "puzzle_emb"} <= set(model.state_dict())


def test_trunc_normal_has_the_asked_std():
    t = trunc_normal_(torch.empty(200_000), 0.5)
    assert abs(t.std().item() - 0.5) < 0.01 and t.abs().max() <= 2 * 0.5 / 0.87


def test_stablemax_against_the_written_formula():
    logits = torch.tensor([[-2.0, 0.0, 3.0, -0.5]], dtype=torch.float64)

    def s(v):
        return 1 / (1 - v) if v < 0 else v + 1

    vals = [s(v) for v in logits[0].tolist()]
    want = [math.log(v / sum(vals)) for v in vals]
    torch.testing.assert_close(log_stablemax(logits)[0], torch.tensor(want, dtype=torch.float64))
    labels = torch.tensor([[2, -100]])
    two = torch.cat([logits, logits])[None]  # [1, 2, 4]
    ce = token_ce(two, labels, "stablemax")
    assert ce[0, 1] == 0 and abs(ce[0, 0].item() + want[2]) < 1e-12
    soft = token_ce(two, labels, "softmax")
    assert abs(soft[0, 0].item() + torch.log_softmax(logits[0], -1)[2].item()) < 1e-6


def test_loss_halting_target_is_whole_answer_right():
    logits = torch.zeros(2, 3, 4)
    logits[0, torch.arange(3), torch.tensor([1, 2, 3])] = 5  # row 0 all right
    logits[1, torch.arange(3), torch.tensor([1, 2, 2])] = 5  # row 1 one cell wrong
    labels = torch.tensor([[1, 2, 3], [1, 2, 3]])
    labels[1, 0] = -100
    q = torch.tensor([0.3, -0.7])
    loss, st = trm_loss(logits, q, labels, "softmax", 0.5)
    assert st["exact"].tolist() == [True, False]
    bce = -(math.log(torch.sigmoid(q[0]).item()) + math.log(1 - torch.sigmoid(q[1]).item()))
    ce = token_ce(logits, labels, "softmax")
    want = (ce[0].sum() / 3 + ce[1].sum() / 2 + 0.5 * bce) / 2
    assert abs(loss.item() - want.item()) < 1e-5


def test_sparse_sign_sgd_against_a_loop():
    table = torch.randn(5, 3)
    ref = table.clone()
    opt = SparseSignSGD(table, lr=0.1, weight_decay=0.5)
    ids = torch.tensor([3, 1, 3, 0])
    rows = opt.gather(ids)
    (rows * torch.tensor([[1.0, -2, 3]]) * torch.tensor([[1.0], [2], [-4], [0.5]])).sum().backward()
    opt.step(ids, rows, lr=0.1)
    for i in range(5):
        g = sum(rows.grad[j] for j in range(4) if ids[j] == i) if i in ids.tolist() else None
        want = ref[i] if g is None else ref[i] * (1 - 0.1 * 0.5) - 0.1 * torch.sign(g)
        torch.testing.assert_close(table[i], want)


def test_kda_100m_preset_is_the_plan_size():
    cfg = load_trm_config("trm-kda-100m").model
    cfg.vocab_size, cfg.seq_len, cfg.n_puzzle_ids = 12, 900, 1
    with torch.device("meta"):
        model = TRM(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 95e6 < n < 110e6 and cfg.pattern == "KKKA"
    arc = load_trm_config("trm-arc-7m").model
    arc.vocab_size, arc.seq_len, arc.n_puzzle_ids = 12, 900, 1
    with torch.device("meta"):
        small = TRM(arc)
    assert 6e6 < sum(p.numel() for p in small.parameters()) < 8e6  # TRM's ~7M
