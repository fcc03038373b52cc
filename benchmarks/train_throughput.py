"""Training throughput and MFU of adamba's dense LM vs Hugging Face LlamaForCausalLM.

Same shape (d_model, layers, heads, kv heads, MLP width, vocab), batch and sequence length,
same AdamW step, measured in the same run with the timings interleaved (order rotated every
round) so machine noise hits both alike; the median step time counts. MFU is against this machine's measured fp32 matmul peak (printed).

    python benchmarks/train_throughput.py [--presets tiny-cpu,small-cpu] [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adamba.config import load_config
from adamba.model.lm import LM
from adamba.nn.hf_twins import hf_llama


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def flops_per_token(n_params_no_embed: int, n_layer: int, d_attn: int, seq: int) -> float:
    """6N for the matmuls (forward + backward) plus attention scores/values (PaLM appendix B)."""
    return 6 * n_params_no_embed + 6 * n_layer * d_attn * seq


def make_step(model, x, y, hf: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=True)

    def step():
        loss = model(input_ids=x, labels=x).loss if hf else model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_preset(name: str, steps: int, peak: float) -> list[dict]:
    # the same math as Llama (tests/test_model.py proves equality): SwiGLU, no QK-norm
    cfg = load_config(name, ["model.mlp_act=swiglu", "model.qk_norm=false"])
    m = cfg.model
    B, T = cfg.train.batch_size, cfg.data.seq_len
    torch.manual_seed(0)
    x = torch.randint(0, m.vocab_size, (B, T))
    y = torch.roll(x, -1, 1)
    ours = LM(m)
    models = {"adamba (= Llama math)": ours, "transformers Llama": hf_llama(ours)}  # same weights
    models["adamba preset (relu2+qknorm)"] = LM(load_config(name).model)
    fns = {k: make_step(v, x, y, k.startswith("transformers")) for k, v in models.items()}
    for f in fns.values():  # warm-up
        f()
        f()
    times = {k: [] for k in fns}
    names = list(fns)
    for i in range(steps):  # interleaved, the order rotated each round (no position bias)
        for k in names[i % len(names) :] + names[: i % len(names)]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    rows = []
    for k, mod in models.items():
        n_embed = mod.embed.weight.numel() if isinstance(mod, LM) else mod.model.embed_tokens.weight.numel()
        n = sum(p.numel() for p in mod.parameters())
        t = sorted(times[k])[len(times[k]) // 2]  # median
        tok_s = B * T / t
        fpt = flops_per_token(n - n_embed, m.n_layer, m.n_head * m.head_dim, T)
        rows.append(
            {
                "preset": name,
                "model": k,
                "params": n,
                "batch": B,
                "seq": T,
                "step_s": t,
                "tok_s": tok_s,
                "mfu": tok_s * fpt / peak,
            }
        )
    base = next(r["tok_s"] for r in rows if r["model"] == "transformers Llama")
    for r in rows:
        r["vs_transformers"] = r["tok_s"] / base
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny-cpu,small-cpu")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_throughput.json"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak()
    print(f"threads {torch.get_num_threads()}, measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for name in args.presets.split(","):
        rows += bench_preset(name, args.steps, peak)
    print(f"{'preset':10} {'model':28} {'params':>11} {'B x T':>9} {'tok/s':>9} {'MFU':>6} {'vs HF':>6}")
    for r in rows:
        print(
            f"{r['preset']:10} {r['model']:28} {r['params']:>11,} {r['batch']:>3} x {r['seq']:<4} "
            f"{r['tok_s']:>9,.0f} {r['mfu']:>6.1%} {r['vs_transformers']:>5.2f}x"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"peak_flops": peak, "threads": torch.get_num_threads(), "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
