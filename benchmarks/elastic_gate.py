"""Elastic compute, the early-exit gate: how good a ConfidenceGate can be on a trained model, and
what other exit rules give.

    python benchmarks/elastic_gate.py calibrate --out runs/el-ts --hidden 64 --steps 4000 --reuse 8
    python benchmarks/elastic_gate.py probe --out runs/el-ts --hidden 64
    python benchmarks/elastic_gate.py calm --out runs/el-ts

`calibrate` refits the trained model's gates from scratch (linear, or an MLP of --hidden units)
with the trainer's calibration (LM frozen) and runs the exit sweep on the whole validation
split, decoding for real with copy-forward K/V (results/elastic-calibrated<hidden>-<steps>[x<reuse>]-<out>.json).
`probe` fits a fresh gate per layer offline on validation states and scores the exit rule
without copy-forward, an upper bound on the gate's precision (results/elastic-probe<hidden>-<out>.json).
`calm` simulates CALM's softmax-response exit (top-1 minus top-2 probability at checked layers;
results/elastic-calm-<out>.json). Each reads the elastic model that `elastic_train.py train`
left in --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from common import SWEEP, exit_sweep, run_name, token_bytes, val_bpb, val_rows, write_result
from torch import nn

from adamba.config import ElasticConfig
from adamba.model import elastic as el
from adamba.model import flops
from adamba.train.elastic import calibrate_gate


def calm_sweep(out: Path, rows_max: int = 128, seq: int = 128) -> list[dict]:
    """CALM's softmax-response exit, simulated offline on the trained elastic model: at the
    checked layers, exit when the intermediate prediction's top-1 minus top-2 probability is
    >= the threshold. Batched at full width without copy-forward (an approximation of decoding);
    FLOPs count each check's LM-head matmul, which the ConfidenceGate avoids."""
    from adamba.checkpoint import load_model

    model = load_model(out / "elastic")[0]
    L = len(model.blocks)
    rows = val_rows(out, seq, rows_max)
    margin, agree = [], []
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            h, hs = el.run_layers(model, rows[i : i + 32, :-1], [1.0] * L, keep=True)
            final = model.head(model.norm(h)).argmax(-1).flatten()
            for j, x in enumerate(hs[:-1]):
                p = model.head(model.norm(x)).float().softmax(-1).flatten(0, 1)
                top = p.topk(2, -1).values
                if i == 0:
                    margin.append([])
                    agree.append([])
                margin[j].append(top[:, 0] - top[:, 1])
                agree[j].append(p.argmax(-1) == final)
    M = torch.stack([torch.cat(m) for m in margin])
    A = torch.stack([torch.cat(a) for a in agree])
    layer = flops.layer_flops(model.blocks[0], model.cfg.d_model, 1.0, seq // 2)  # a mid-sequence token's
    head = flops.head_flops(model)
    full = L * layer + head
    out_rows = []
    for check in ([0], [1], [0, 2], [0, 1, 2, 3]):
        for thr in (0.3, 0.5, 0.7, 0.9):
            n = M.shape[1]
            done = torch.zeros(n, dtype=torch.bool)
            at = torch.full((n,), L - 1)
            changed = torch.zeros(n, dtype=torch.bool)
            cost = torch.zeros(n)
            for li in check:
                cost[~done] += head
                go = ~done & (M[li] >= thr)
                at[go], changed[go] = li, ~A[li][go]
                done |= go
            spent = (at + 1) * layer + cost + head * (~done)
            r = {
                "checked_layers": check,
                "threshold": thr,
                "exit_rate": float(done.float().mean()),
                "argmax_changed": float(changed.float().mean()),
                "flops_skipped": float(1 - spent.float().mean() / full),
            }
            out_rows.append(r)
            print(
                f"check layers {check} margin >= {thr}: exit {r['exit_rate']:.1%}, argmax changed "
                f"{r['argmax_changed']:.2%}, FLOPs skipped {r['flops_skipped']:.1%}"
            )
    write_result(f"elastic-calm-{run_name(out)}", out_rows)
    return out_rows


def gate_probe(out: Path, hidden: int, rows_max: int = 320, seq: int = 128, steps: int = 300) -> list[dict]:
    """How good could a ConfidenceGate be on this model? Fit a fresh gate per layer (the
    ConfidenceGate's form: rms-normed hidden state -> Linear, or an MLP with `hidden` units) to
    full-width agreement with the final argmax, after training, on the first 2/3 of the
    validation rows; score the exit rule on the last third (batched, no copy-forward, layers
    skipped as the cost). The gap to the trained gate says how much the gate's training costs."""
    from adamba.checkpoint import load_model

    torch.manual_seed(0)
    model = load_model(out / "elastic")[0]
    L = len(model.blocks)
    rows = val_rows(out, seq, rows_max)
    H, A = [], []
    for i in range(0, len(rows), 32):
        hs, agree = el.layer_agreement(model, rows[i : i + 32, :-1])
        H.append(torch.stack([F.rms_norm(x, (x.shape[-1],)) for x in hs]).flatten(1, 2))
        A.append(agree.flatten(1))
    H, A = torch.cat(H, 1), torch.cat(A, 1).float()
    n_fit = H.shape[1] * 2 // 3
    probs = []
    for li in range(L - 1):
        d = H.shape[-1]
        g = (
            nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            if hidden
            else nn.Linear(d, 1)
        )
        opt = torch.optim.Adam(g.parameters(), 3e-3)
        for _ in range(steps):
            idx = torch.randint(0, n_fit, (4096,))
            loss = F.binary_cross_entropy_with_logits(g(H[li, idx]).squeeze(-1), A[li, idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            probs.append(torch.sigmoid(g(H[li, n_fit:]).squeeze(-1)))
    P, agree = torch.stack(probs), A[:, n_fit:].bool()
    res = []
    for thr in (0.7, 0.8, 0.9, 0.95):
        n = P.shape[1]
        done, changed = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        at = torch.full((n,), L - 1)
        for li in range(L - 1):
            go = ~done & (P[li] > thr)
            at[go], changed[go] = li, ~agree[li][go]
            done |= go
        r = {
            "gate_hidden": hidden,
            "threshold": thr,
            "exit_rate": float(done.float().mean()),
            "argmax_changed": float(changed.float().mean()),
            "layers_skipped": float(((L - 1 - at).float() / L).mean()),
        }
        res.append(r)
        print(
            f"post-hoc gate (hidden {hidden}) > {thr}: exit {r['exit_rate']:.1%}, argmax changed "
            f"{r['argmax_changed']:.2%}, layers skipped {r['layers_skipped']:.1%}"
        )
    write_result(f"elastic-probe{hidden}-{run_name(out)}", res)
    return res


def calibrated_sweep(out: Path, hidden: int, steps: int, reuse: int = 1) -> dict:
    """A trained model's gate refitted from scratch (linear, or an MLP of `hidden` units) for
    `steps` calibration steps with the LM frozen (calibrate_gate on training batches), then
    the exit sweep on the whole validation split (exit_sweep: exact replay of decoding with
    copy-forward K/V), next to the model's full-width bits/byte. How the calibration length,
    gate size and training recipe (e.g. `elastic_train.py train --set
    elastic.exit_distill_weight=1.0`) move the curve of argmax changes against layer FLOPs
    skipped."""
    from adamba.checkpoint import load_model
    from adamba.data.loader import TokenLoader

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, tok, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    fresh = el.ElasticHeads(model.cfg, ElasticConfig(enabled=True, widths=ecfg.widths, gate_hidden=hidden))
    model.elastic.gates, model.elastic.gate_flops = fresh.gates, fresh.gate_flops
    loader = TokenLoader([str(out / "train" / "manifest.jsonl")], 16, 128, seed=1, prefetch=0)
    losses = calibrate_gate(model, iter(loader.__next__, None), steps, reuse=reuse)
    print(
        f"gate (hidden {hidden}) calibrated {steps} steps, {reuse} per batch: BCE {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    tb = token_bytes(tok)
    L = len(model.blocks)
    res = {
        "gate_hidden": hidden,
        "steps": steps,
        "reuse": reuse,
        "recipe": {k: getattr(ecfg, k) for k in ("exit_loss_weight", "exit_distill_weight")},
        "bpb": {f"width={w:g}": val_bpb(model, out, tb, [w] * L) for w in (0.5, 1.0)},
        "sweep": exit_sweep(model, out, SWEEP, tb),
    }
    write_result(f"elastic-calibrated{hidden}-{steps}{f'x{reuse}' if reuse > 1 else ''}-{run_name(out)}", res)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    cb = sub.add_parser(
        "calibrate", help="refit the gate with the trainer's calibration, then the exit sweep"
    )
    cb.add_argument("--out", required=True, type=Path)
    cb.add_argument("--hidden", type=int, default=64, help="gate MLP units (0: linear)")
    cb.add_argument("--steps", type=int, default=1000)
    cb.add_argument("--reuse", type=int, default=1, help="calibration steps per forward pass")
    pr = sub.add_parser("probe", help="a gate fit offline on validation states, no copy-forward")
    pr.add_argument("--out", required=True, type=Path)
    pr.add_argument("--hidden", type=int, default=0, help="gate MLP units (0: linear)")
    cm = sub.add_parser("calm", help="CALM's softmax-response exit, offline")
    cm.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    if args.cmd == "calibrate":
        calibrated_sweep(args.out, args.hidden, args.steps, args.reuse)
    elif args.cmd == "probe":
        gate_probe(args.out, args.hidden)
    else:
        calm_sweep(args.out)


if __name__ == "__main__":
    main()
