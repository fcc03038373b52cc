"""Elastic compute, decode speed: when does a narrower width decode faster?

    python benchmarks/elastic_speed.py scaling                       # random weights, d128..d1024, one sequence
    python benchmarks/elastic_speed.py scaling --batch 256 --tokens 112 --d-models 128,256 [--kv-heads 8]
    python benchmarks/elastic_speed.py scaling --device cuda --batch 256 --dtype bfloat16 \
        --head-dim 128 --vocab 32768 --d-models 1024,2048,4096 --tokens 128
    python benchmarks/elastic_speed.py batch --out runs/el-ts        # trained model, 1..128 sequences per step
    python benchmarks/elastic_speed.py compile --out runs/el-ts      # fixed modes, eager vs torch.compile

`scaling` times ghost / whisper / normal / think decoding on random-weight models of growing
width (speed does not depend on training; results/elastic-speed[-<device>-b<batch>...].json).
`batch` decodes the trained model's fixed modes and the dense peer of the same shape as the
number of sequences per step grows (results/elastic-batch-speed-<out>[-t<tokens>].json).
`compile` decodes the fixed modes with ElasticRunner (eager) and with `fixed_step`, the same
math as a pure function over preallocated caches, under torch.compile; before timing it checks
that `fixed_step` run eagerly gives the runner's logits at every mode's width and position
(results/elastic-compile-speed-<out>.json). All on 1 thread, modes interleaved within rounds,
best of 3. Timings on a shared CPU are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import run_name, val_tokens, write_result

from adamba.config import AttnConfig, ElasticConfig, ModelConfig
from adamba.eval.efficiency import teacher_forced
from adamba.model import elastic as el
from adamba.model.elastic_runner import ElasticRunner
from adamba.nn.attention import single_query_attention

FIXED = ("ghost", "whisper", "normal", "think")


def speed_scaling(
    d_models: list[int],
    n_layer: int,
    tokens: int,
    prompt: int,
    device: str = "cpu",
    batch: int = 1,
    dtype: str = "float32",
    head_dim: int = 0,
    vocab: int = 1024,
    kv_heads: int = 0,
) -> list[dict]:
    """Decode tokens/s of ghost vs think as the model widens (random weights: speed does not
    depend on training). Shows where width slicing starts to pay on a CPU, where a small
    model's per-token time is Python and dispatch overhead rather than matmul work, and on a
    GPU (`device="cuda"`, a batch, bf16), where eager decoding is bound by kernel launches.
    head_dim 0: 8 query heads at every width (2 KV heads); else d_model / head_dim heads, a
    quarter as many KV heads. kv_heads > 0 sets the KV heads instead: a narrow width reads the
    KV heads its query heads need, so with few KV heads ghost still reads a large part of the
    cache (what bounds batched decoding at long contexts)."""
    from adamba.model.lm import LM

    torch.set_num_threads(1)
    out = []
    for d in d_models:
        torch.manual_seed(0)
        n_head = d // head_dim if head_dim else 8
        mcfg = ModelConfig(
            vocab_size=vocab,
            d_model=d,
            n_layer=n_layer,
            attn=AttnConfig(n_head=n_head, n_kv_head=kv_heads or max(1, n_head // 4)),
            max_seq_len=512,
        ).validate()
        ecfg = ElasticConfig(enabled=True)
        ecfg.validate()
        model = el.attach_elastic(LM(mcfg), ecfg).eval().to(device, getattr(torch, dtype))
        seqs = list(torch.randint(0, vocab, (batch, prompt + tokens), device=device))
        row = {
            "d_model": d,
            "params": model.num_params(),
            "device": device,
            "batch": batch,
            "dtype": dtype,
            "n_kv_head": mcfg.attn.n_kv_head,
            "tokens": tokens,
        }
        for mode in FIXED:
            best = float("inf")
            for _ in range(3):
                _, _, _, _, secs = teacher_forced(
                    model, ecfg, el.mode_policy(mode, model, ecfg), seqs, prompt, batch
                )
                best = min(best, secs)
            row[mode] = batch * (tokens - 1) / best
        row["ghost_over_think"] = row["ghost"] / row["think"]
        print(
            f"d_model {d:5} ({row['params'] / 1e6:7.1f}M): "
            + "  ".join(f"{m} {row[m]:6.0f} tok/s" for m in FIXED)
            + f"  ghost/think {row['ghost_over_think']:.2f}x",
            flush=True,
        )
        out.append(row)
        del model
    name = "elastic-speed"  # one sequence on a CPU: the historical name
    if (device, batch) != ("cpu", 1):
        name += (
            f"-{device}-b{batch}"
            + (f"-t{tokens}" if tokens != 64 else "")
            + (f"-kv{kv_heads}" if kv_heads else "")
        )
    write_result(name, out)
    return out


def batch_speed(out: Path, batches: list[int], tokens: int, prompt: int, rounds: int = 3) -> list[dict]:
    """Decode tokens/s of the trained model's fixed modes (and the dense peer of the same shape)
    as the number of sequences decoded together grows. At batch 1 a 1.8M-parameter model's
    step is Python and dispatch overhead, the same for every width; a batch multiplies the
    matmul work per step and leaves the overhead alone, which is where narrow widths pay.
    Modes are interleaved within each round; the best of `rounds` is kept."""
    from adamba.checkpoint import load_model

    torch.set_num_threads(1)
    model, _, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    contenders = {m: (model, el.mode_policy(m, model, ecfg), ecfg) for m in FIXED}
    if (out / "dense").exists():
        dm = load_model(out / "dense")[0]
        contenders["dense"] = (dm, el.Policy([1.0] * len(dm.blocks)), ElasticConfig())
    toks = val_tokens(out)
    res = []
    for b in batches:
        n = prompt + tokens
        seqs = torch.stack([toks[i * n : (i + 1) * n] for i in range(b)])
        best = {k: float("inf") for k in contenders}
        for _ in range(rounds):
            for name, (m, pol, e) in contenders.items():
                r = ElasticRunner(m, e, pol, batch=b)
                with torch.no_grad():
                    r.prefill(seqs[:, :prompt])
                    t0 = time.perf_counter()
                    for t in range(prompt, n):
                        r.step(seqs[:, t : t + 1])
                    best[name] = min(best[name], time.perf_counter() - t0)
        row = {"batch": b, **{k: b * tokens / v for k, v in best.items()}}
        row["ghost_over_think"] = row["ghost"] / row["think"]
        res.append(row)
        print(
            f"batch {b:4}: "
            + "  ".join(f"{k} {row[k]:8.0f}" for k in contenders)
            + f"  tok/s   ghost/think {row['ghost_over_think']:.2f}x",
            flush=True,
        )
    suffix = "" if tokens == 32 else f"-t{tokens}"  # longer decodes: more KV read per step
    write_result(f"elastic-batch-speed-{run_name(out)}{suffix}", res)
    return res


def fixed_step(model, width: float):
    """One decode step of an attention-only model at one width, as a pure function over
    preallocated caches (ks/vs: per layer [B, KV heads stored, capacity, head_dim]) and the
    position `pos`, for torch.compile: ElasticRunner's caches grow and count in Python, which
    a compiled graph would guard on at every step. The runner's math: q/k/v from
    `Attention.project` (the one projection path), grouped single-query attention over the
    width's KV heads, the width's slice of o_proj and of the MLP. Whole GQA groups only (a
    partial last group needs the forward's repeat; `check_widths` refuses it)."""

    def step(tok: torch.Tensor, ks: list, vs: list, pos: int) -> torch.Tensor:
        x = model.embed(tok)
        B = tok.shape[0]
        for blk, kc, vc in zip(model.blocks, ks, vs):
            a = blk.mixer
            hq, hkv = a.heads_at(width)
            q, k, v = a.project(blk.norm1(x), hq, kc.shape[1], pos)
            kc[:, :, pos : pos + 1] = k
            vc[:, :, pos : pos + 1] = v
            y = single_query_attention(q, kc[:, :hkv, : pos + 1], vc[:, :hkv, : pos + 1])
            x = x + torch.nn.functional.linear(
                y.transpose(1, 2).reshape(B, 1, hq * a.head_dim), a.o_proj.weight[:, : hq * a.head_dim]
            )
            x = x + blk.mlp(blk.norm2(x), width)
        return model.head(model.norm(x[:, -1]))

    return step


def prompt_caches(r: ElasticRunner, capacity: int) -> tuple[list, list]:
    """`fixed_step`'s preallocated caches ([B, KV heads stored, capacity, head_dim] per layer),
    holding what runner r cached for the prompt it prefilled."""
    ks = [c.k.new_zeros(c.batch, c.heads, capacity, c.head_dim) for c in r.state]
    vs = [k.clone() for k in ks]
    for kc, vc, c in zip(ks, vs, r.state):
        kc[:, :, : r.pos], vc[:, :, : r.pos] = c.k[:, :, : r.pos], c.v[:, :, : r.pos]
    return ks, vs


def check_widths(model, pols: dict) -> None:
    """`fixed_step` decodes attention + MLP layers at widths made of whole GQA groups."""
    if any(b.kind != "A" or b.mlp is None for b in model.blocks):
        raise SystemExit("compile: attention + MLP layers only")
    a = model.blocks[0].mixer
    for m, pol in pols.items():  # fixed_step's grouped attention needs whole GQA groups
        hq, hkv = a.heads_at(pol.widths[0])
        if hkv > 1 and hq != hkv * (a.n_head // a.n_kv_head):
            raise SystemExit(f"compile: {m}'s width {pol.widths[0]:g} splits a GQA group")


def check_fixed_step(model, ecfg, pols: dict, seqs: torch.Tensor, prompt: int) -> float:
    """`fixed_step` run eagerly must give ElasticRunner's logits at every mode's width and at
    every position after the prompt, or the compiled speed-up would compare different work.
    Stops the benchmark with the first mismatch; returns the largest difference seen."""
    worst = 0.0
    with torch.no_grad():
        for mode, pol in pols.items():
            r = ElasticRunner(model, ecfg, pol, batch=len(seqs))
            r.prefill(seqs[:, :prompt])
            ks, vs = prompt_caches(r, seqs.shape[1])
            step = fixed_step(model, pol.widths[0])
            for t in range(prompt, seqs.shape[1]):
                got, want = step(seqs[:, t : t + 1], ks, vs, t), r.step(seqs[:, t : t + 1])
                try:
                    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
                except AssertionError as e:
                    raise SystemExit(
                        f"compile: fixed_step differs from ElasticRunner in {mode} at position {t}:\n{e}"
                    ) from None
                worst = max(worst, float((got - want).abs().max()))
    print(f"fixed_step (eager) = ElasticRunner at {', '.join(pols)}: max logit difference {worst:.1e}")
    return worst


def compile_speed(out: Path, batches: list[int], length: int, prompt: int, rounds: int = 3) -> list[dict]:
    """Does removing eager PyTorch's per-kernel overhead change ghost/think? Decodes the trained
    model's fixed modes with ElasticRunner (eager) and with `fixed_step` under torch.compile
    (inductor, one graph per mode, dynamic shapes), `batch` held-out sequences together for
    each batch size, 1 thread, modes and kinds interleaved, best of `rounds`. First checks
    `fixed_step` eagerly against the runner (check_fixed_step); the first compiled call per
    batch size (compile or recompile) is timed apart and its logits checked against the
    runner's."""
    from adamba.checkpoint import load_model

    torch.set_num_threads(1)
    model, _, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    toks = val_tokens(out)
    pols = {m: el.mode_policy(m, model, ecfg) for m in FIXED}
    check_widths(model, pols)
    check = torch.stack([toks[i * length : (i + 1) * length] for i in range(4)])
    eager_diff = check_fixed_step(model, ecfg, pols, check, prompt)
    # one code object, four modes' closures, a graph per batch-1 / batched shape: past dynamo's
    # default of 8 graphs per code object it would silently run the rest eagerly
    torch._dynamo.config.recompile_limit = 64
    steps = {m: torch.compile(fixed_step(model, pols[m].widths[0]), dynamic=True) for m in FIXED}
    rows = []
    for batch in batches:
        seqs = torch.stack([toks[i * length : (i + 1) * length] for i in range(batch)])
        row: dict = {
            "batch": batch,
            "length": length,
            "prompt": prompt,
            "compile_s": {},
            "max_logit_diff": {},
            "eager_check_max_logit_diff": eager_diff,
        }
        best: dict[str, float] = {}
        for rnd in range(rounds):
            for mode in FIXED:
                for kind in ("eager", "compiled"):
                    r = ElasticRunner(model, ecfg, pols[mode], batch=batch)
                    with torch.no_grad():
                        r.prefill(seqs[:, :prompt])
                        if kind == "eager":
                            t0 = time.perf_counter()
                            for t in range(prompt, length):
                                r.step(seqs[:, t : t + 1])
                            dt = time.perf_counter() - t0
                        else:
                            # a spare slot: a slice reaching the buffer's end specialises
                            # (a recompile at the last position)
                            ks, vs = prompt_caches(r, length + 1)
                            if rnd == 0:  # (re)compile for this batch size, two positions, and check
                                t0 = time.perf_counter()
                                for t in (prompt, prompt + 1):
                                    tk = seqs[:, t : t + 1]
                                    steps[mode](tk, [k.clone() for k in ks], [v.clone() for v in vs], t)
                                row["compile_s"][mode] = time.perf_counter() - t0
                                want = r.step(seqs[:, prompt : prompt + 1])
                                got = steps[mode](seqs[:, prompt : prompt + 1], ks, vs, prompt)
                                row["max_logit_diff"][mode] = float((got - want).abs().max())
                            t0 = time.perf_counter()
                            for t in range(prompt, length):
                                steps[mode](seqs[:, t : t + 1], ks, vs, t)
                            dt = time.perf_counter() - t0
                    key = f"{mode}-{kind}"
                    best[key] = max(best.get(key, 0.0), batch * (length - prompt) / dt)
                    print(
                        f"batch {batch} round {rnd}: {key:16s} {best[key]:8.0f} tok/s (best so far)",
                        flush=True,
                    )
        row["tok_s"] = best
        row["dynamo_recompile_limit"] = torch._dynamo.config.recompile_limit
        row["ghost_over_think"] = {k: best[f"ghost-{k}"] / best[f"think-{k}"] for k in ("eager", "compiled")}
        rows.append(row)
    print("| sequences | mode | eager tok/s | compiled tok/s | speed-up | compile s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        for mode in FIXED:
            e, c = row["tok_s"][f"{mode}-eager"], row["tok_s"][f"{mode}-compiled"]
            cs = row["compile_s"][mode]
            print(f"| {row['batch']} | {mode} | {e:,.0f} | {c:,.0f} | {c / e:.2f}x | {cs:.0f} |")
        g = row["ghost_over_think"]
        print(f"| {row['batch']} | ghost/think | {g['eager']:.2f}x | {g['compiled']:.2f}x | | |")
    write_result(f"elastic-compile-speed-{run_name(out)}", rows)
    return rows


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("scaling", help="random-weight models of growing width")
    sp.add_argument("--d-models", default="128,256,512,1024")
    sp.add_argument("--layers", type=int, default=8)
    sp.add_argument("--tokens", type=int, default=64)
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    sp.add_argument("--head-dim", type=int, default=0, help="0: 8 heads at every width")
    sp.add_argument("--vocab", type=int, default=1024)
    sp.add_argument("--kv-heads", type=int, default=0, help="0: a quarter of the query heads")
    bs = sub.add_parser("batch", help="the trained model by sequences per step")
    bs.add_argument("--out", required=True, type=Path)
    bs.add_argument("--batches", default="1,8,32,128")
    bs.add_argument("--tokens", type=int, default=32)
    cs = sub.add_parser("compile", help="fixed modes, eager vs a compiled decode step")
    cs.add_argument("--out", required=True, type=Path)
    cs.add_argument("--batches", default="1,32,256", help="sequences decoded together")
    cs.add_argument("--length", type=int, default=128)
    args = p.parse_args()
    if args.cmd == "scaling":
        speed_scaling(
            ints(args.d_models),
            args.layers,
            args.tokens,
            16,
            args.device,
            args.batch,
            args.dtype,
            args.head_dim,
            args.vocab,
            args.kv_heads,
        )
    elif args.cmd == "batch":
        batch_speed(args.out, ints(args.batches), args.tokens, 16)
    else:
        compile_speed(args.out, ints(args.batches), args.length, 16)


if __name__ == "__main__":
    main()
