"""Training throughput and MFU: adamba's dense LM vs Hugging Face LlamaForCausalLM, and on a
GPU, adamba's hybrid models with the kernel packages vs the same model on our pure-PyTorch ops.

Same shape (d_model, layers, heads, kv heads, MLP width, vocab), batch and sequence length,
same AdamW step, measured in the same run with the timings interleaved (order rotated every
round) so machine noise hits both alike; the median step time counts. MFU is against this
machine's measured matmul peak (fp32 on a CPU, bf16 on a GPU; printed).

A preset whose layers are all attention is timed three ways: adamba with Llama's math (SwiGLU,
no QK-norm; tests/model/test_lm.py proves the equality), transformers' Llama with the same weights,
and the preset as configured. A preset with Mamba2 (M) or KDA (K) layers is timed twice, same
weights: the kernels (mamba-ssm / fla, picked by adamba.ops.dispatch on CUDA) and the reference
ops forced; on a CPU, where only the reference ops exist, once. `--compile` adds each adamba
model again with its forward under torch.compile (what `train.compile=true` does; the first two
steps, which compile, are not timed). A preset name may carry overrides after '+', e.g.
`kda-100m+model.pattern=MMMA`.

    python benchmarks/train_throughput.py [--presets tiny-cpu,small-cpu] [--steps 12] [--threads 2] [--compile]
    python benchmarks/train_throughput.py --device cuda --dtype bfloat16 --batch 8 \\
        --presets 'kda-100m+model.pattern=A+model.attn.use_rope=true,kda-100m,kda-100m+model.pattern=MMMA'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.model import flops
from adamba.model.lm import LM
from adamba.nn.hf_twins import hf_llama
from adamba.ops import dispatch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def make_step(model, x, y, hf: bool, amp, reference: bool = False, compiled: bool = False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=True)
    fwd = torch.compile(model) if compiled else model  # what train.compile=true does

    def step():
        with dispatch.force_reference(reference), amp():
            loss = fwd(input_ids=x, labels=x).loss if hf else fwd(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_preset(
    spec: str, steps: int, peak: float, device: torch.device, dtype: str, batch: int, seq: int, compile_: bool
) -> list[dict]:
    name, *overrides = spec.split("+")
    base = load_config(name, overrides)
    hybrid = set(base.model.pattern) != {"A"}
    # the same math as Llama (tests/model/test_lm.py proves equality): SwiGLU, no QK-norm
    cfg = (
        base
        if hybrid
        else load_config(name, [*overrides, "model.mlp.act=swiglu", "model.attn.qk_norm=false"])
    )
    m = cfg.model
    B, T = batch or cfg.train.batch_size, seq or cfg.data.seq_len
    torch.manual_seed(0)
    x = torch.randint(0, m.vocab_size, (B, T), device=device)
    y = torch.roll(x, -1, 1)
    amp = (lambda: torch.autocast("cuda", torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
    ours = LM(m).to(device)
    if hybrid and device.type == "cpu":  # no kernels on a CPU: one path to time
        models, peer = {"adamba": ours}, "adamba"
        fns = {"adamba": make_step(ours, x, y, False, amp)}
    elif hybrid:
        print(f"kernel packages here: {dispatch.kernels_available()}")
        models, peer = {"adamba kernels": ours, "adamba reference ops": ours}, "adamba reference ops"
        fns = {k: make_step(ours, x, y, False, amp, reference=k.endswith("ops")) for k in models}
    else:
        models = {"adamba (= Llama math)": ours, "transformers Llama": hf_llama(ours).to(device)}
        peer = "transformers Llama"
        models["adamba preset (relu2+qknorm)"] = LM(base.model).to(device)  # its own weights
        fns = {k: make_step(v, x, y, k.startswith("transformers"), amp) for k, v in models.items()}
    if compile_:  # each adamba model once more, its forward under torch.compile
        for k in [k for k in models if k.startswith("adamba") and not k.endswith("ops")]:
            models[f"{k}, compiled"] = models[k]
            fns[f"{k}, compiled"] = make_step(models[k], x, y, False, amp, compiled=True)
    for k, f in fns.items():  # warm-up (and the kernels' autotuning, the compile)
        t = time.perf_counter()
        f()
        f()
        if k.endswith("compiled"):
            print(f"{spec}: {k}: first two steps (compile) {time.perf_counter() - t:.1f} s")
    times = {k: [] for k in fns}
    names = list(fns)
    for i in range(steps):  # interleaved, the order rotated each round (no position bias)
        for k in names[i % len(names) :] + names[: i % len(names)]:
            sync(device)
            t = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - t)
    rows = []
    n_attn = m.layer_types().count("A")
    for k, mod in models.items():
        n_embed = mod.embed.weight.numel() if isinstance(mod, LM) else mod.model.embed_tokens.weight.numel()
        n = sum(p.numel() for p in mod.parameters())
        t = sorted(times[k])[len(times[k]) // 2]  # median
        tok_s = B * T / t
        fpt = flops.train_flops_per_token(n - n_embed, n_attn, m.attn.n_head * m.attn.head_dim, T)
        row = {"preset": spec, "pattern": m.pattern, "model": k, "params": n, "batch": B, "seq": T}
        rows.append(row | {"step_s": t, "tok_s": tok_s, "mfu": tok_s * fpt / peak})
    base_tok = next(r["tok_s"] for r in rows if r["model"] == peer)
    for r in rows:
        r["peer"], r["vs_peer"] = peer, r["tok_s"] / base_tok
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny-cpu,small-cpu")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16: autocast, CUDA only"
    )
    ap.add_argument("--compile", action="store_true", help="also time adamba's models under torch.compile")
    ap.add_argument("--batch", type=int, default=0, help="sequences per step (0 = the preset's)")
    ap.add_argument("--seq", type=int, default=0, help="tokens per sequence (0 = the preset's)")
    ap.add_argument("--out", default="", help="JSON path (default results/train_throughput[-DEVICE].json)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to this PyTorch")
    if args.dtype == "bfloat16" and device.type != "cuda":
        ap.error("--dtype bfloat16 autocasts on CUDA only")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    peak = matmul_peak(device, peak_dtype, n=8192 if device.type == "cuda" else 2048)
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    )
    print(f"{where}, measured {peak_dtype} matmul peak {peak / 1e12:.2f} TFLOP/s")
    rows = []
    for spec in args.presets.split(","):
        try:
            rows += bench_preset(
                spec, args.steps, peak, device, args.dtype, args.batch, args.seq, args.compile
            )
        except AdambaError as e:  # unknown preset, bad override: a message, not a traceback
            ap.error(f"{spec}: {e}")
    print(f"{'preset':44} {'model':38} {'params':>11} {'B x T':>10} {'tok/s':>10} {'MFU':>6} {'vs peer':>7}")
    for r in rows:
        print(
            f"{r['preset']:44} {r['model']:38} {r['params']:>11,} {r['batch']:>4} x {r['seq']:<4} "
            f"{r['tok_s']:>10,.0f} {r['mfu']:>6.1%} {r['vs_peer']:>6.2f}x"
        )
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    out = Path(args.out or Path(__file__).parent / "results" / f"train_throughput{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": where, "dtype": args.dtype, "peak_flops": peak, "threads": torch.get_num_threads()}
    out.write_text(json.dumps(meta | {"torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
