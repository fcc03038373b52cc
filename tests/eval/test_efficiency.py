"""Scoring compute modes: batched exit replay equals token-by-token decoding, FLOPs accounting,
and `adamba sample --mode` / `adamba eval --tasks efficiency` on a trained run."""

import pytest
import torch

from adamba.config import ElasticConfig
from adamba.eval.efficiency import batched_exits, teacher_forced
from adamba.model import elastic as el
from adamba.model.elastic_runner import ElasticRunner
from adamba.model.lm import LM
from tests.helpers import WIDTHS, adamba, assert_clean_error, elastic_config


def test_batched_exits_equal_token_by_token_decoding():
    """batched_exits (n_layer batched passes) makes the runner's exit decisions and gives its
    logits at every decoded position, with the real gate deciding."""
    torch.manual_seed(0)
    L, T, prompt = 4, 24, 4
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(elastic_config(n_layer=L)), ecfg).eval()
    with torch.no_grad():  # spread the gate so some tokens exit at various layers
        for p in model.elastic.gates.parameters():
            torch.nn.init.normal_(p, 0, 0.5)
    x = torch.randint(0, 97, (2, T))
    thr = 0.7
    h, exit_at = batched_exits(model, x, [1.0] * L, thr, start=prompt)
    logits = model.head(model.norm(h))
    hist = torch.bincount(exit_at[:, prompt:].flatten(), minlength=L)
    assert (hist[: L - 1] > 0).sum() >= 2 and hist[L - 1] > 0  # a real mix of exit layers
    assert (exit_at[:, :prompt] == L - 1).all()
    for b in range(2):
        r = ElasticRunner(model, ecfg, el.Policy([1.0] * L, exit_threshold=thr))
        r.prefill(x[b : b + 1, :prompt])
        steps = [r.step(x[b : b + 1, t : t + 1]) for t in range(prompt, T)]
        assert r.stats.exit_layer == exit_at[b, prompt:].tolist()
        torch.testing.assert_close(torch.cat(steps), logits[b, prompt:], atol=1e-5, rtol=1e-5)


def test_layer_flops_leave_out_the_head():
    """layer_flops_rel excludes the LM head every token pays: for a narrow mode it is below the
    whole-token ratio, at full width both are 1."""
    torch.manual_seed(0)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(elastic_config(n_layer=3)), ecfg).eval()
    x = torch.randint(0, 97, (8,))
    for widths, narrow in (([min(WIDTHS)] * 3, True), ([1.0] * 3, False)):
        *_, summ, _ = teacher_forced(model, ecfg, el.Policy(widths), [x], 3)
        if narrow:
            assert summ["layer_flops_rel"] < summ["flops_rel"] < 1.0
        else:
            assert summ["layer_flops_rel"] == pytest.approx(1.0) and summ["flops_rel"] == pytest.approx(1.0)


def test_cli_mode_and_efficiency(elastic_run):
    res = adamba("sample", "--ckpt", str(elastic_run / "el"), "--mode", "ghost", "--max-new-tokens", "5")
    assert res.returncode == 0, res.stderr
    assert "ghost:" in res.stderr and "FLOPs/token" in res.stderr
    res = adamba("sample", "--ckpt", str(elastic_run / "dense"), "--mode", "auto", "--max-new-tokens", "5")
    assert_clean_error(res, "trained with Matryoshka")
    res = adamba("eval", "--ckpt", str(elastic_run / "el"), "--tasks", "efficiency", "--batches", "2")
    assert res.returncode == 0, res.stderr
    rows = {
        ln.split()[0]: ln.split()
        for ln in res.stdout.splitlines()
        if ln.split() and ln.split()[0] in el.MODES
    }
    assert set(rows) == set(el.MODES)
    assert float(rows["think"][2]) == pytest.approx(1.0) and float(rows["ghost"][2]) < 0.5
    # the same sequences decoded two at a time: the same bits/byte and FLOPs for every mode
    res = adamba(
        "eval",
        "--ckpt",
        str(elastic_run / "el"),
        "--tasks",
        "efficiency",
        "--batches",
        "2",
        "--decode-batch",
        "2",
    )
    assert res.returncode == 0, res.stderr
    assert "decode batch 2" in res.stdout
    rows2 = {
        ln.split()[0]: ln.split()
        for ln in res.stdout.splitlines()
        if ln.split() and ln.split()[0] in el.MODES
    }
    for mode in el.MODES:  # bpb, FLOPs, exit rate (batched matmuls may differ in the last bits)
        assert [float(v) for v in rows2[mode][1:4]] == pytest.approx(
            [float(v) for v in rows[mode][1:4]], abs=2e-3
        )
    res = adamba("eval", "--ckpt", str(elastic_run / "el"), "--tasks", "efficiency", "--decode-batch", "0")
    assert_clean_error(res, "decode-batch")
    res = adamba("eval", "--ckpt", str(elastic_run / "dense"), "--tasks", "efficiency")
    assert_clean_error(res, "trained with Matryoshka")
