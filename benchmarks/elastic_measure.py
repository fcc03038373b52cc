"""Elastic compute, the trained models measured: quality per width, compute modes, early exit,
and how much choosing the width per sequence could buy.

    python benchmarks/elastic_measure.py measure --out runs/el-ts     # table, JSON, PNG
    python benchmarks/elastic_measure.py headroom --out runs/el-ts    # per-sequence width choice

`measure` scores every width and the dense peers (when `elastic_train.py train` left them in
--out) on the whole validation split (batched), decodes held-out sequences token by token under
every compute mode (KV cache, `--batch` sequences per step, auto and its pieces included, best of
3 interleaved rounds), finds the ideal gate's headroom, sweeps the exit threshold at full width
on the whole validation split, and writes results/elastic-<out>.json and .png (run folder
runs/el-ts -> elastic-ts). `headroom` compares three per-sequence width choosers (the trained
predictor, a hindsight oracle, the predictor's recipe refitted from the prompt) with the line
between uniform widths, in FLOPs per token against bits/byte (results/elastic-headroom-<out>.json).
Timings on a shared CPU are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    RESULTS,
    SWEEP,
    exit_sweep,
    load_tokens,
    rows_of,
    run_name,
    token_bytes,
    train_log,
    val_bpb,
    val_rows,
    val_sequences,
    val_tokens,
    write_result,
)
from torch import nn

from adamba.config import ElasticConfig
from adamba.eval.bpb import bits_per_byte
from adamba.eval.efficiency import teacher_forced
from adamba.model import elastic as el
from adamba.model import flops
from adamba.train.elastic import calibrate_gate


def oracle_exit(model, out: Path, seq: int = 128, max_rows: int = 256) -> dict:
    """Headroom of early exit: the first layer whose hidden state, through the final norm + head,
    already gives the full model's argmax, per held-out token (batched, full width, states not
    copied forward). An ideal gate exiting there changes no prediction; the layer fraction it
    skips bounds what any gate can save at zero argmax change."""
    L = len(model.blocks)
    rows = val_rows(out, seq, max_rows)
    firsts = []
    for i in range(0, len(rows), 32):
        _, agree = el.layer_agreement(model, rows[i : i + 32, :-1])
        agree = torch.cat([agree, torch.ones_like(agree[:1])])  # the last layer agrees by definition
        layer = torch.arange(L)[:, None, None]
        firsts.append(torch.where(agree, layer, L).min(0).values.flatten())
    first = torch.cat(firsts)
    return {
        "layers_skipped": float(((L - 1 - first) / L).float().mean()),
        "first_agreeing_layer_hist": torch.bincount(first, minlength=L).tolist(),
        "tokens": len(first),
    }


def add_width_gates(model, out: Path, steps: int) -> None:
    """Give a model trained before elastic.gate_per_width its per-width gates: the same
    calibration the trainer's phase runs (calibrate_gate, LM frozen, training batches),
    fitting the narrow widths' gates only; the full-width gates stay as trained."""
    from adamba.data.loader import TokenLoader

    heads = model.elastic
    ecfg = dataclasses.replace(heads.ecfg, gate_per_width=True)
    fresh = el.ElasticHeads(model.cfg, ecfg)
    heads.narrow, heads.width_gates, heads.ecfg = fresh.narrow, fresh.width_gates, ecfg
    torch.manual_seed(0)
    loader = TokenLoader([str(out / "train" / "manifest.jsonl")], 16, 128, seed=1, prefetch=0)
    losses = calibrate_gate(model, iter(loader.__next__, None), steps, full=False)
    print(f"per-width gates calibrated {steps} steps: BCE {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)


def margin_over_line(rows: dict, name: str) -> float:
    """How far a contender lies above the straight lines between the fixed modes on the
    (tokens/s, bits/byte) plot: the line's bits/byte at the contender's speed minus its own
    (>= 0: on or above the line, i.e. better). The line is piecewise, through the fixed modes
    sorted by speed; outside their range the nearest segment is extended."""
    pts = sorted((rows[m]["tok_s"], rows[m]["bpb"]) for m in ("ghost", "whisper", "normal", "think"))
    x, y = rows[name]["tok_s"], rows[name]["bpb"]
    k = next((i for i in range(len(pts) - 1) if x <= pts[i + 1][0]), len(pts) - 2)
    (x0, y0), (x1, y1) = pts[k], pts[k + 1]
    line = y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 != x0 else min(y0, y1)
    return line - y


def measure(
    out: Path, n_seq: int, length: int, prompt: int, batch: int, width_gate_steps: int = 1000, rounds: int = 3
) -> dict:
    from adamba.checkpoint import load_model

    torch.set_num_threads(1)
    model, tok, ckpt = load_model(out / "elastic")
    if not model.elastic.narrow and width_gate_steps:  # trained before per-width gates existed
        add_width_gates(model, out, width_gate_steps)
    ecfg = model.elastic.ecfg
    tb = token_bytes(tok)
    seqs = val_sequences(out, n_seq, length)
    L = len(model.blocks)
    rows = {}

    # 1. quality: bits/byte on the whole validation split, per width and for the dense peers
    quality = {f"width={w:g}": val_bpb(model, out, tb, [w] * L) for w in ecfg.widths}
    peers = {}
    for peer in ("dense", "half"):
        if (out / peer).exists():
            peers[peer] = load_model(out / peer)[0]
            quality[f"dense-{peer}"] = val_bpb(peers[peer], out, tb, None)
    n_val = len(val_tokens(out))
    print(f"validation bits/byte over {n_val:,} held-out tokens:")
    for k, v in quality.items():
        print(f"  {k:>12}  {v:.4f}")
    ws = sorted(ecfg.widths)
    checks = {
        "monotone_in_width": all(
            quality[f"width={a:g}"] > quality[f"width={b:g}"] for a, b in zip(ws, ws[1:])
        ),
    }
    if "dense-half" in quality and 0.5 in ws:
        checks["half_vs_separate"] = quality["width=0.5"] / quality["dense-half"] - 1
    if "dense-dense" in quality:
        checks["full_vs_dense"] = quality["width=1"] / quality["dense-dense"] - 1

    # 2. compute modes, decoded token by token (KV cache, `batch` sequences per step) next to
    # the dense peers; at batch 1 every width of a d128 model runs at the same speed (dispatch).
    # Every contender is decoded `rounds` times, interleaved, keeping the fastest (the scores
    # are the same each time): one pass of a few seconds is at the mercy of a shared CPU.
    contenders = [
        (f"dense-{p}", dm, el.Policy([1.0] * len(dm.blocks)), ElasticConfig()) for p, dm in peers.items()
    ]
    contenders += [(mode, model, el.mode_policy(mode, model, ecfg), ecfg) for mode in el.MODES]
    # what each adaptive piece buys on its own: auto without exits / without expansion, and the
    # gate's exits on a fixed width
    thr_x, thr_e = ecfg.exit_threshold, ecfg.expand_threshold
    contenders += [
        ("auto-no-exit", model, el.Policy(None, None, thr_e), ecfg),
        ("auto-no-expand", model, el.Policy(None, thr_x, None), ecfg),
        ("normal+exit", model, el.Policy([el.mode_width("normal", ecfg)] * L, thr_x, None), ecfg),
        ("think+exit", model, el.Policy([1.0] * L, thr_x, None), ecfg),
    ]
    print(
        f"decoding {len(seqs)} sequences x {length} tokens (prompt {prompt}), batch {batch}, best of {rounds}:"
    )
    for rnd in range(rounds):
        for name, m, policy, e in contenders:
            ce, tg, pr, summ, secs = teacher_forced(m, e, policy, seqs, prompt, batch)
            tok_s = summ["tokens"] / max(1e-9, secs)
            if rnd:
                rows[name]["tok_s"] = max(rows[name]["tok_s"], tok_s)
                continue
            summ.update(bpb=bits_per_byte(ce, tg, tb), tok_s=tok_s)
            rows[name] = summ
    for name, *_ in contenders:
        summ = rows[name]
        print(
            f"{name:>12}  bpb {summ['bpb']:.4f}  flops {summ['flops_rel']:.3f}  exit {summ['exit_rate']:.3f}  "
            f"expand {summ['expand_rate']:.3f}  tok/s {summ['tok_s']:.0f}  hist {summ['exit_hist']}",
            flush=True,
        )
    oracle = oracle_exit(model, out)
    print(
        f"ideal gate (exit at the first layer that already agrees): {oracle['layers_skipped']:.1%} of layers "
        f"skipped over {oracle['tokens']:,} tokens; first-agreeing-layer histogram {oracle['first_agreeing_layer_hist']}"
    )
    # 3. threshold sweep: full width + early exit only, whole validation split (batched, exact)
    print("exit threshold sweep (full width, whole validation split):")
    sweep = exit_sweep(model, out, SWEEP, tb, prompt)
    d = (
        next(x for x in sweep if x["threshold"] == ecfg.exit_threshold)
        if ecfg.exit_threshold in SWEEP
        else None
    )
    if d:
        checks["exit_at_default"] = {k: d[k] for k in ("argmax_changed", "layer_flops_skipped")}
    checks["ghost_over_think_tok_s"] = rows["ghost"]["tok_s"] / rows["think"]["tok_s"]
    checks["auto_margin_over_line_bpb"] = margin_over_line(rows, "auto")
    checks["margins_over_line_bpb"] = {
        k: margin_over_line(rows, k) for k in rows if k not in ("ghost", "whisper", "normal", "think")
    }
    print("checks:", json.dumps(checks))
    res = {
        "quality": quality,
        "val_tokens": n_val,
        "rows": rows,
        "sweep": sweep,
        "oracle_exit": oracle,
        "checks": checks,
        "n_seq": len(seqs),
        "decode_batch": batch,
        "length": length,
        "prompt": prompt,
        "train": train_log(out),
    }
    write_result(f"elastic-{run_name(out)}", res)
    plot(res, RESULTS / f"elastic-{run_name(out)}.png")
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = res["rows"]
    for name, r in rows.items():
        mark = "s" if name.startswith("dense") else "o" if name in el.MODES else "^"
        a.scatter(r["tok_s"], r["bpb"], label=name, marker=mark)
        a.annotate(name, (r["tok_s"], r["bpb"]), fontsize=7)
    fixed = [rows[m] for m in ("ghost", "whisper", "normal", "think") if m in rows]
    a.plot([r["tok_s"] for r in fixed], [r["bpb"] for r in fixed], "k--", lw=0.8)
    a.set_xlabel(f"decode tokens/s (batch {res.get('decode_batch', 1)}, CPU, 1 thread)")
    a.set_ylabel("val bits/byte")
    a.set_title("compute modes")
    s = res["sweep"]
    b.plot([x["threshold"] for x in s], [x["argmax_changed"] for x in s], "o-", label="argmax changed")
    b.plot(
        [x["threshold"] for x in s], [x["layer_flops_skipped"] for x in s], "s-", label="layer FLOPs skipped"
    )
    b.set_xlabel("exit threshold (full width)")
    b.legend()
    b.set_title("early exit")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def width_headroom(out: Path, train_rows: int = 2000, prompt: int = 16, seq: int = 128) -> dict:
    """What choosing the width per sequence can buy over one width for all, in bits/byte vs
    FLOPs per token on the whole validation split, before any speed is timed. Per
    validation row (prompt + continuation) the continuation's nats at every width. Three
    choosers, each compared with the straight line between the uniform widths at the same
    mean FLOPs: the model's own LayerDimPredictor (as auto uses it), a hindsight oracle (per
    row, the width that minimises nats + lambda x FLOPs, knowing the continuation: an upper
    bound), and the predictor's recipe refitted on the frozen final model from the prompt
    only, at several tolerances (an MLP on the pooled prompt state, like the predictor,
    trained on `train_rows` training rows)."""
    from adamba.checkpoint import load_model

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, tok, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    ws, L, k = ecfg.widths, len(model.blocks), ecfg.predictor_layer
    d = model.cfg.d_model
    tb = token_bytes(tok)

    def layers_at(w: float, ctx: int) -> float:
        # K/V charged for every KV head, as a runner that stores them all (the numbers this
        # benchmark has always reported)
        return sum(
            flops.layer_flops(b, d, w, ctx, b.mixer.n_kv_head if b.kind == "A" else None)
            for b in model.blocks
        )

    cost = torch.tensor(  # mean FLOPs per decoded token relative to full, per width
        [
            sum(
                (layers_at(w, t) + flops.head_flops(model)) / flops.token_flops(model, t)
                for t in range(prompt + 1, seq + 1)
            )
            / (seq - prompt)
            for w in ws
        ]
    )

    def per_row(rows):
        """Pooled prompt states [N, d], per-token CE of the continuation at every width
        [N, W, T], its targets [N, T]."""
        feats, ces = [], []
        with torch.no_grad():
            for i in range(0, len(rows), 64):
                x, y = rows[i : i + 64, :-1], rows[i : i + 64, 1:]
                h = model.embed(x[:, :prompt])
                for li in range(k):
                    h = model.blocks[li](h, None, 1.0)
                feats.append(h.float().mean(1))
                per_w = []
                for w in ws:
                    lg, _ = model(x, widths=[w] * L)
                    ce = F.cross_entropy(lg.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
                    per_w.append(ce[:, prompt:])
                ces.append(torch.stack(per_w, 1))
        return torch.cat(feats), torch.cat(ces), rows[:, 1 + prompt :]

    def nats_per_row(ce: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """[N, W] summed nats of each row's continuation per width (0-byte tokens left out, as
        bits/byte does): what the choosers compare."""
        return (ce * (tb[tgt] > 0)[:, None]).sum(-1)

    va = val_rows(out, seq)
    Xva, Cva, Tva = per_row(va)
    Nva, Bva = nats_per_row(Cva, Tva), tb[Tva].sum(1).float()
    tot = float(Bva.sum())
    uniform = [bits_per_byte(Cva[:, j], Tva, tb) for j in range(len(ws))]

    def point(choice: torch.Tensor, name: str) -> dict:
        bpb = bits_per_byte(Cva[torch.arange(len(va)), choice], Tva, tb)
        c = float((cost[choice] * Bva).sum()) / tot
        j = min(max(int(torch.searchsorted(cost, torch.tensor(c))) - 1, 0), len(ws) - 2)
        line = uniform[j] + (uniform[j + 1] - uniform[j]) * (c - cost[j]) / (cost[j + 1] - cost[j])
        r = {
            "chooser": name,
            "width_hist": torch.bincount(choice, minlength=len(ws)).tolist(),
            "flops_rel": c,
            "bpb": bpb,
            "gain_over_line_bpb": float(line) - bpb,
        }
        print(
            f"  {name:>28}: widths {r['width_hist']}  FLOPs {c:.3f}  bpb {bpb:.4f}  vs line {r['gain_over_line_bpb']:+.4f}",
            flush=True,
        )
        return r

    def smallest_ok(p: torch.Tensor) -> torch.Tensor:  # first width with p > 1/2, else full
        ok = torch.cat([p[:, :-1] > 0.5, torch.ones(len(p), 1, dtype=torch.bool)], 1)
        return ok.float().argmax(1)

    print(f"per-sequence width choice, {len(va)} validation rows (FLOPs per token vs bits/byte):")
    res = {"widths": ws, "flops_rel": cost.tolist(), "uniform_bpb": uniform, "rows": len(va), "points": []}
    with torch.no_grad():
        probs = torch.sigmoid(model.elastic.predictor_logits(Xva))[:, k:].mean(1)
    res["points"].append(point(smallest_ok(probs), "trained predictor (auto)"))
    for lam in (0.01, 0.02, 0.03, 0.04, 0.06, 0.1):
        score = Nva + lam * cost[None] * Bva[:, None]
        res["points"].append(point(score.argmin(1), f"hindsight oracle lambda={lam}"))
    tr = rows_of(load_tokens(out / "train" / "manifest.jsonl"), seq)
    Xtr, Ctr, Ttr = per_row(tr[torch.randperm(len(tr))[:train_rows]])
    Ntr, Btr = nats_per_row(Ctr, Ttr), tb[Ttr].sum(1).float()
    loss_tr = Ntr / Btr[:, None].clamp(min=1)
    for tol in (0.005, 0.01, 0.02, 0.05):
        target = (loss_tr <= (1 + tol) * loss_tr[:, -1:]).float()
        net = nn.Sequential(nn.Linear(Xtr.shape[1], 64), nn.ReLU(), nn.Linear(64, len(ws)))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        xn = F.rms_norm(Xtr, (Xtr.shape[1],))
        for _ in range(600):
            loss = F.binary_cross_entropy_with_logits(net(xn), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            p = torch.sigmoid(net(F.rms_norm(Xva, (Xva.shape[1],))))
        res["points"].append(point(smallest_ok(p), f"refit from prompt, tol={tol}"))
    write_result(f"elastic-headroom-{run_name(out)}", res)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="widths, compute modes, exit sweep: JSON + PNG")
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--n-seq", type=int, default=256)
    m.add_argument("--batch", type=int, default=256, help="sequences decoded together")
    m.add_argument("--length", type=int, default=128)
    m.add_argument("--prompt", type=int, default=16)
    m.add_argument("--rounds", type=int, default=3, help="interleaved decode rounds, best kept")
    hr = sub.add_parser("headroom", help="per-sequence width choice vs one width for all")
    hr.add_argument("--out", required=True, type=Path)
    hr.add_argument("--train-rows", type=int, default=2000)
    args = p.parse_args()
    if args.cmd == "measure":
        measure(args.out, args.n_seq, args.length, args.prompt, args.batch, rounds=args.rounds)
    else:
        width_headroom(args.out, args.train_rows)


if __name__ == "__main__":
    main()
