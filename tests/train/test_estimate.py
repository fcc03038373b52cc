"""`adamba estimate`: the FLOPs a training token costs, checked against PyTorch's own FLOP
counter on a real forward + backward (frozen layers included), and the original plan's figures.

torch.utils.flop_counter counts every matmul autograd runs: with frozen parameters it sees the
weight gradients that are skipped and the activation gradients below the lowest trained layer
that are never computed, so it is an oracle for the frozen-layer accounting. On CPU it does not
count the fused attention kernel, so the attention scores/values (4 x heads x head_dim x mean
context per token forward, twice that backward) are added by formula; depthwise convolutions
are left out on both sides (the counter's convolution-backward formula ignores groups).
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.model.flops import MoE, mean_context, mlp_flops, moe_flops, scan_flops, train_flops
from adamba.model.lm import LM
from adamba.train import estimate as est
from adamba.train.objectives import OBJECTIVES
from adamba.train.phases import plan, trainable
from tests.helpers import model_config

SEQ = 64
SHAPE = {
    "d_model": 64,
    "n_layer": 3,
    "vocab_size": 300,
    "max_seq_len": SEQ,
    "attn": {"n_head": 4, "n_kv_head": 2},
    "mamba": {"ffn": "none", "d_state": 16, "head_dim": 16, "chunk_size": 16},
    "kda": {"chunk_size": 16},
}


def counted(model: LM, train: set[str]) -> dict[str, float]:
    """FLOPs per token of one forward + backward by torch's counter, `train` trainable: weight
    matmuls (mm), weightless ones (bmm: the scans) and the forward of the depthwise convolutions."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in train)
    x = torch.randint(0, model.cfg.vocab_size, (2, SEQ))
    fc = FlopCounterMode(display=False)
    with fc:
        model(x)[0].float().sum().backward()
    out = {"mm": 0.0, "bmm": 0.0, "conv": 0.0}
    for op, v in fc.get_flop_counts()["Global"].items():
        op = str(op).removeprefix("aten.")
        key = {"mm": "mm", "addmm": "mm", "bmm": "bmm", "baddbmm": "bmm", "convolution": "conv"}.get(op)
        if key:
            out[key] += v / (2 * SEQ)
    return out


def first_trained(train: set[str]) -> int:
    return min(int(n.split(".")[1]) for n in train if n.startswith("blocks."))


def by_formula(model: LM, train: set[str], kinds: str) -> float:
    """What the counter misses or the CPU code computes differently, per token, each layer's
    forward x 3 above the lowest trained mixer (backward = 2 x forward there), x 1 below:
    attention scores + values (the fused CPU kernel is not counted), the KDA scan as the GPU kernel
    computes it (the CPU reference uses a cheaper intra-chunk algorithm), the depthwise
    convolutions (the counter's convolution-backward formula ignores groups)."""
    first, out = first_trained(train), 0.0
    for i, b in enumerate(model.blocks):
        f = 2.0 * b.mixer.conv1d.weight.numel() if hasattr(b.mixer, "conv1d") else 0.0
        if b.kind == "A" and "A" in kinds:
            f += 4 * b.mixer.n_head * b.mixer.head_dim * mean_context(SEQ, b.mixer.window)
        if b.kind == "K" and "K" in kinds:
            f += scan_flops(b.mixer)
        mixer_trains = any(n.startswith((f"blocks.{i}.mixer.", f"blocks.{i}.norm1.")) for n in train)
        out += f * (3 if i > first or mixer_trains else 1)
    return out


@pytest.mark.parametrize("pattern", ["A", "MAM", "K"])
def test_train_flops_match_torchs_counter_with_and_without_frozen_layers(pattern):
    torch.manual_seed(0)
    model = LM(model_config(SHAPE, pattern=pattern))
    names = {n for n, _ in model.named_parameters()}
    last = {n for n in names if n.startswith("blocks.2.")}
    selections = {
        "everything": names,
        "last block": last,
        "last mixer": {n for n in last if ".mixer." in n},  # no gradient for its input projection
        "last MLP": {n for n in last if ".mlp." in n},  # its block's mixer: forward only
        "head": {"head.weight"},
    }
    for what, train in selections.items():
        if pattern == "MAM" and what == "last MLP":
            continue  # the last M layer has no MLP
        c = counted(model, train)
        ours = train_flops(model, SEQ, train)
        if what == "head":  # no block trains: forward of everything, head's weight gradient only
            conv = sum(
                2.0 * b.mixer.conv1d.weight.numel() for b in model.blocks if hasattr(b.mixer, "conv1d")
            )
            cores = by_formula(model, {"blocks.99.x"}, "AK") - conv
            assert ours.total == pytest.approx(
                c["mm"] + c["bmm"] * (pattern == "MAM") + cores + conv, rel=1e-4
            )
            continue
        oracle = c["mm"] + by_formula(model, train, "AK")
        if pattern == "MAM":
            oracle += c["bmm"]  # the Mamba2 scan: the counter sees what the GPU kernel computes
        assert ours.total == pytest.approx(oracle, rel=1e-4), (pattern, what)  # 1e-4: KDA's A_log
    # freezing the lower layers saves work: the last mixer alone costs well under the full step
    assert train_flops(model, SEQ, selections["last mixer"]).total < 0.7 * train_flops(model, SEQ).total


def test_scans_against_the_cpu_code():
    """The Mamba2 SSD count equals what the chunked CPU code computes; the KDA count (fla's
    chunk kernel: Q K^T and K K^T over whole chunks) is above the CPU reference's cheaper
    sub-block algorithm but within 2x of it at chunk 16."""
    for pattern, lo, hi in (("M", 1.0, 1.0), ("K", 1.0, 2.0)):
        model = LM(model_config(SHAPE, pattern=pattern, n_layer=1))
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.blocks[0].mixer(torch.randn(2, SEQ, SHAPE["d_model"]))
        ops = fc.get_flop_counts()["Global"]
        bmm = sum(v for k, v in ops.items() if "bmm" in str(k)) / (2 * SEQ)
        assert lo * bmm <= scan_flops(model.blocks[0].mixer) <= hi * bmm, pattern


def test_a_frozen_matrix_pays_forward_and_activation_gradient_not_weight_gradient():
    model = LM(model_config(SHAPE, pattern="A"))
    everything = train_flops(model, SEQ)
    only_head = train_flops(model, SEQ, {"head.weight"})
    # with everything trained: backward = 2 x forward for weight matmuls (the 6N rule)
    assert everything.weight_grad == pytest.approx(
        everything.forward - by_formula(model, {"blocks.99.x"}, "A")
    )
    # the head alone: every block pays its forward only, the head its forward + weight gradient
    head = 2 * model.cfg.d_model * model.cfg.vocab_size
    assert only_head.act_grad == 0 and only_head.weight_grad == head
    assert only_head.forward == everything.forward


def test_moe_terms():
    cfg = model_config(SHAPE, pattern="A", mlp={"act": "swiglu", "ratio": 1.0})
    model = LM(cfg)
    d, mlp = cfg.d_model, model.blocks[0].mlp
    # one expert of the MLP's size, always chosen: the MLP plus its router
    assert moe_flops(d, mlp.hidden, 1, 1) == mlp_flops(mlp, d, mlp.hidden) + 2 * d
    dense = train_flops(model, SEQ)
    moe = train_flops(model, SEQ, moe=MoE(n_experts=8, top_k=2))
    per_layer = moe_flops(d, mlp.hidden, 2, 8) - mlp_flops(mlp, d, mlp.hidden)
    assert moe.total - dense.total == pytest.approx(3 * cfg.n_layer * per_layer)
    total, _, active = est.sizes(model, set(), MoE(n_experts=8, top_k=2))
    params = sum(p.numel() for p in model.parameters())
    expert = 3 * d * mlp.hidden
    assert total == params + cfg.n_layer * (7 * expert + 8 * d)  # 7 more experts + router per layer
    assert active > sum(p.numel() for p in model.blocks.parameters() if p.ndim >= 2)


def rows(names, **kw):
    cluster = est.Cluster(gpus=8, peak_tflops=est.GPUS["h200"], mfu=0.4, price=1.96)
    return cluster, est.estimate([(n, load_config(n)) for n in names], cluster, **kw)


def test_the_original_plan_prices_near_its_own_figures():
    """nanochat d32 (1.88B) + Mamba, widened 2048 -> 2560 -> 4096, 8 x H200 at $1.96: the plan
    says ~15/12/10/8/10/5 hours, ~60 h, ~$940 (the presets' lengths are what those hours buy at
    MFU 0.4, so this checks the FLOPs count the presets were sized with)."""
    cluster, out = rows(["plan-d32", "plan-d2560", "plan-d4096"])
    got = {r.phase.name: r for r in out if isinstance(r, est.Row)}
    surgery = [r.change for r in out if isinstance(r, est.Surgery)]
    assert [s.split(",")[0] for s in surgery] == ["d_model 2048 -> 2560", "d_model 2560 -> 4096"]
    plan_hours = {"mamba": 15, "matryoshka": 12, "train-2560": 10, "train-4096": 8, "sft": 10, "grpo": 5}
    for name, h in plan_hours.items():
        assert got[name].hours == pytest.approx(h, rel=0.05), name
        assert got[name].cost(cluster) == pytest.approx(h * 8 * 1.96, rel=0.05), name
    hours = sum(r.hours for r in got.values())
    assert 57 < hours < 63 and 890 < sum(r.cost(cluster) for r in got.values()) < 990
    # the base is nanochat d32 (1.88B) + 16 Mamba2 layers; phase 1 trains only those (@M)
    mamba = got["mamba"]
    assert 2.2e9 < mamba.params < 2.4e9 and mamba.trained < 0.2 * mamba.params
    assert mamba.flops.total < got["matryoshka"].flops.total / 2
    assert got["train-4096"].params > 8e9


def test_hours_in_tokens_out_and_back():
    cluster, out = rows(["plan-d32"], hours={"mamba": 15.0})
    r = next(r for r in out if isinstance(r, est.Row) and r.phase.name == "mamba")
    assert r.hours_given and r.hours == 15.0
    assert est.hours_for(r.tokens, r.flops.total, cluster) == pytest.approx(15.0)
    # 15 h at MFU 0.4 on 8 H200 buy the 16.7B tokens plan-d32 was sized with
    assert r.tokens == pytest.approx(r.phase.steps * r.phase.tokens_per_step, rel=0.05)
    with pytest.raises(AdambaError, match="no phase named 'mamb'"):
        rows(["plan-d32"], hours={"mamb": 1.0})
    with pytest.raises(AdambaError, match="say which"):
        rows(["plan-d32", "plan-gptoss"], hours={"mamba": 1.0})


def test_gptoss_claim_implies_an_mfu():
    """The GPT-OSS route's phase 1: 22.7B parameters, top-4 of 32 experts, ~2B Mamba trainable,
    attention + experts frozen, ~77k tokens/s on 8 x H200."""
    cluster, out = rows(["plan-gptoss"])  # real MoE layers: 32 experts, top-4
    (r,) = out
    assert 22.4e9 < r.params < 23.0e9 and 1.6e9 < r.trained < 2.2e9
    mfu = est.implied_mfu(77_000, r.flops.total, cluster)
    assert mfu == pytest.approx(77_000 * r.flops.total / (8 * 989e12))
    assert 0.15 < mfu < 0.4  # plausible: below the 0.4 the plan's other phases assume
    # without the Mamba layers the model is GPT-OSS-20B: 20.9B parameters, 3.6B active
    bare = load_config("plan-gptoss", ["model.pattern=A", "model.n_layer=24"])
    total, _, active = est.sizes(est.build(bare), set(), None)
    assert total == pytest.approx(20.9e9, rel=0.01) and active == pytest.approx(3.6e9, rel=0.01)
    # the same shape with dense MLPs priced by --moe 32:4 gives the same total
    dense = load_config(
        "plan-gptoss", ["model.pattern=A", "model.n_layer=24", "model.ffn=mlp", "model.mlp.act=swiglu"]
    )
    dense.model.mlp.ratio = 1.0
    total2, _, _ = est.sizes(est.build(dense), set(), MoE(n_experts=32, top_k=4))
    assert total2 == pytest.approx(total, rel=0.01)


def test_objectives_are_priced_by_what_they_run():
    cfg = load_config("plan-tiny")
    model = est.build(cfg)
    cost = {}
    for ph in plan(cfg):
        kind = OBJECTIVES[ph.objective]
        names = trainable(model, ph, kind.default_train, kind.never_train)
        cost[ph.name] = est.objective_flops(model, cfg, ph, names, None).total
    full = train_flops(model, cfg.data.seq_len).total
    # the sandwich runs full + smallest + middle widths: more than one pass, less than three
    assert full < cost["matryoshka"] < 3 * full
    assert cost["mamba"] < full  # attention/MLP frozen
    assert cost["gates"] < full / 2  # frozen forwards, reused batches, tiny gates


def test_estimate_cli(capsys):
    from adamba.cli import main

    main(
        ["estimate", "--config", "plan-gptoss", "--gpus", "8", "--gpu", "h200"]
        + ["--price", "1.96", "--tokens-per-s", "77000"]
    )
    out = capsys.readouterr().out
    assert "plan-gptoss:mamba" in out and "MFU@77k/s" in out and "$" in out
    line = next(ln for ln in out.splitlines() if "plan-gptoss:mamba" in ln)
    assert 0.15 < float(line.split()[-1]) < 0.4
    main(["estimate", "--config", "plan-d32", "--gpus", "8", "--gpu", "h200", "--tokens-per-s", "5e5"])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "plan-d32:matryoshka" in ln)
    assert line.endswith("!") and "cannot be reached" in out  # an MFU above 1 is flagged
    main(["estimate", "--config", "plan-tiny"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("base", "mamba", "matryoshka", "gates"))
    assert "cost" in out and "$" not in out  # no --price: no dollars


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--gpu", "tpu9"], "--gpu 'tpu9': unknown GPU"),
        (["--mfu", "1.5"], "--mfu 1.5: use a fraction in (0, 1]"),
        (["--hours", "mamba"], "expected PHASE=HOURS"),
        (["--hours", "mamba=-1"], "expected PHASE=HOURS"),
        (["--hours", "nope=3"], "no phase named 'nope'"),
        (["--gpus", "0"], "--gpus 0 must be >= 1"),
        (["--price", "nan"], "--price nan must be a finite number > 0"),
        (["--moe", "4:8"], "1 <= TOP_K <= EXPERTS"),
        (["--config", "no-such-preset"], "no-such-preset"),
    ],
)
def test_estimate_bad_flags_one_line(capsys, argv, needle):
    from tests.cli.test_bad_args import cli_error

    base = ["estimate", "--config", "plan-d32"] if "--config" not in argv else ["estimate"]
    assert needle in cli_error(capsys, *base, *argv)
