"""Mamba2 SSD speed on CPU: adamba's chunked scan vs transformers' torch path vs the naive recurrence.

Forward + backward time of (1) the scan alone: `adamba.ops.ssd.ssd_chunked`, transformers'
`mamba2_chunk_scan` (the pure-torch fallback Mamba2Mixer uses without mamba-ssm) and the
step-by-step `ssd_recurrent`; (2) the whole layer: adamba `Mamba2` vs transformers `Mamba2Mixer`
with the same weights. Timings are interleaved so machine noise hits every contender alike;
the table shows the best of `--reps` runs and ratios against adamba.

    python benchmarks/ssd_quick.py [--seqs 512,2048] [--d-model 256] [--batch 1] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adamba.config import ModelConfig
from adamba.nn.mamba2 import Mamba2
from adamba.ops.ssd import ssd_chunked, ssd_recurrent


def fwd_bwd(fn, inputs):
    def run():
        for t in inputs:
            t.grad = None
        y, final = fn(*inputs)
        (y.float().square().sum() + final.float().sum()).backward()

    return run


def interleaved(fns: dict, reps: int, once: set[str] = frozenset()) -> dict[str, float]:
    """Best wall time per contender; contenders in `once` (slow references) run a single time."""
    for k, f in fns.items():
        if k not in once:
            f()  # warm-up
    best = {k: float("inf") for k in fns}
    for i in range(reps):
        for k, f in fns.items():
            if k in once and i > 0:
                continue
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def scan_rows(T: int, cfg: ModelConfig, batch: int, reps: int, naive: bool) -> list[dict]:
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    h, p, g, n = (
        cfg.mamba_expand * cfg.d_model // cfg.mamba_headdim,
        cfg.mamba_headdim,
        cfg.mamba_ngroups,
        cfg.mamba_d_state,
    )
    torch.manual_seed(0)
    x = torch.randn(batch, T, h, p, requires_grad=True)
    dt = F.softplus(torch.randn(batch, T, h) - 2).requires_grad_()
    A = (-torch.rand(h) * 3 - 0.1).requires_grad_()
    B = torch.randn(batch, T, g, n, requires_grad=True)
    C = torch.randn(batch, T, g, n, requires_grad=True)
    inputs, Q = (x, dt, A, B, C), cfg.mamba_chunk_size
    fns = {
        "adamba ssd_chunked": fwd_bwd(lambda *a: ssd_chunked(*a, chunk_size=Q), inputs),
        "transformers torch scan": fwd_bwd(
            lambda *a: mamba2_chunk_scan(*a, chunk_size=Q, return_final_states=True), inputs
        ),
    }
    if naive:
        fns["naive recurrence"] = fwd_bwd(ssd_recurrent, inputs)
    best = interleaved(fns, reps, once={"naive recurrence"})
    return [{"what": "scan", "seq": T, "impl": k, "fwd_bwd_s": v} for k, v in best.items()]


def layer_rows(T: int, cfg: ModelConfig, batch: int, reps: int) -> list[dict]:
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    ours = Mamba2(cfg)
    hc = Mamba2Config(
        hidden_size=cfg.d_model,
        num_heads=ours.n_heads,
        head_dim=cfg.mamba_headdim,
        state_size=cfg.mamba_d_state,
        expand=cfg.mamba_expand,
        n_groups=cfg.mamba_ngroups,
        conv_kernel=cfg.mamba_d_conv,
        chunk_size=cfg.mamba_chunk_size,
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=cfg.norm_eps,
        num_hidden_layers=1,
        vocab_size=16,
    )
    theirs = Mamba2Mixer(hc, layer_idx=0)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(batch, T, cfg.d_model, requires_grad=True)

    def run(mod):
        def f():
            mod(x).square().sum().backward()

        return f

    best = interleaved({"adamba Mamba2": run(ours), "transformers Mamba2Mixer": run(theirs)}, reps)
    return [{"what": "layer", "seq": T, "impl": k, "fwd_bwd_s": v} for k, v in best.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="512,2048")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    ap.add_argument("--naive-at", type=int, default=2048, help="run the slow recurrence at this length only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ssd_quick.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "falling back to torch" notice is the point here
    cfg = ModelConfig(d_model=args.d_model, pattern="M")
    rows = []
    for T in (int(s) for s in args.seqs.split(",")):
        rows += scan_rows(T, cfg, args.batch, args.reps, naive=T == args.naive_at)
        rows += layer_rows(T, cfg, args.batch, args.reps)
    for r in rows:
        base = next(
            b
            for b in rows
            if b["what"] == r["what"] and b["seq"] == r["seq"] and b["impl"].startswith("adamba")
        )
        r["adamba_speedup"] = r["fwd_bwd_s"] / base["fwd_bwd_s"]
    heads = cfg.mamba_expand * cfg.d_model // cfg.mamba_headdim
    print(
        f"threads {torch.get_num_threads()}, batch {args.batch}, d_model {cfg.d_model}, heads {heads} x "
        f"{cfg.mamba_headdim}, d_state {cfg.mamba_d_state}, chunk {cfg.mamba_chunk_size}; forward + backward"
    )
    print(f"{'what':6} {'T':>5} {'implementation':26} {'ms':>10} {'time / adamba':>13}")
    for r in rows:
        print(
            f"{r['what']:6} {r['seq']:>5} {r['impl']:26} {r['fwd_bwd_s'] * 1e3:>10.1f} "
            f"{r['adamba_speedup']:>12.2f}x"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": torch.get_num_threads(), "batch": args.batch, "d_model": cfg.d_model}
    Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
