"""Elastic compute on real text: what Matryoshka widths and early exit buy, measured.

    python benchmarks/elastic.py prepare --text ../shared/data/tinyshakespeare/input.txt --out runs/el-ts
    python benchmarks/elastic.py prepare --quickstart runs/quickstart --out runs/el-qs   # stdlib corpus
    python benchmarks/elastic.py train --out runs/el-ts --steps 400 --set elastic.exit_loss_weight=0.1
    python benchmarks/elastic.py measure --out runs/el-ts          # table, JSON, PNG
    python benchmarks/elastic.py train --out runs/el-ts256 --d-model 256   # the same at d256
    python benchmarks/elastic.py lr-sweep --out runs/el-ts         # each shape at other learning rates
    python benchmarks/elastic.py speed                             # ghost vs think decode speed vs width
    python benchmarks/elastic.py seed --out runs/el-seed           # the seed's easy/hard toy task
    python benchmarks/elastic.py calm --out runs/el-ts             # softmax-response exit, offline
    python benchmarks/elastic.py probe --out runs/el-ts --hidden 64  # a gate fit after training
    python benchmarks/elastic.py calibrate --out runs/el-ts          # same, decoded for real
    python benchmarks/elastic.py compile-speed --out runs/el-ts      # fixed modes, eager vs compiled

`prepare` holds out the last 10% of a text (by characters, cut at a line) as validation, trains
a byte-level BPE tokenizer on the rest and writes shards, or links a quickstart run's corpus.
`train` trains three models on the same tokens and steps: an 8-layer model with Matryoshka
sandwich sampling (+ `--set` overrides), a dense model of the same shape (the dense baseline of
the same parameters and tokens) and a dense model shaped like the elastic model's half-width
sub-network (half the heads, half the MLP units), for MatFormer's "sub-model within 5% of a
separately trained one". `measure` scores every width and the dense peers on the whole
validation split (batched), decodes held-out sequences token by token under every compute mode
(KV cache, `--batch` sequences per step, auto included), sweeps the exit threshold at full width, and
writes benchmarks/results/elastic-<out>.json and .png. `speed` times ghost vs think decoding on
random-weight models of growing width. `seed` re-runs the seed repository's tiny experiment
(8 layers, widths 32..256, easy/hard mix). Timings on a shared CPU are noisy: compare the
ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamba.config import ElasticConfig, load_config  # noqa: E402
from adamba.errors import AdambaError  # noqa: E402
from adamba.eval.efficiency import batched_exits, teacher_forced  # noqa: E402
from adamba.model import elastic as el  # noqa: E402
from adamba.model.elastic_runner import ElasticRunner  # noqa: E402
from adamba.model.flops import token_flops  # noqa: E402
from adamba.train.elastic import calibrate_gate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SWEEP = (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.99)  # exit thresholds swept

BASE = [  # + model.d_model and train.lr from `train --d-model --lr` (128, 3e-3)
    "model.n_layer=8",
    "model.attn.n_head=8",
    "model.attn.n_kv_head=2",
    "model.mlp.ratio=4.0",
    "model.max_seq_len=128",
    "data.seq_len=128",
    "train.batch_size=16",
    "train.embed_lr_mult=1.0",  # as recorded in results/elastic.json (before tiny-cpu used 10)
    "train.eval_every=100",
    "train.eval_batches=8",
    "train.ckpt_every=100",
    "train.threads=1",
    "run.progress=false",
]
# the config defaults spelled out: early-exit loss 0.1, MLP-64 gates, gate calibration of 4000
# steps at 8 per forward pass, predictor tolerance 0.04 nats per token
ELASTIC = [
    "elastic.enabled=true",
    "elastic.widths=[0.125, 0.25, 0.5, 1.0]",
    "elastic.exit_loss_weight=0.1",
    "elastic.gate_hidden=64",
    "elastic.calibrate_steps=4000",
    "elastic.calibrate_reuse=8",
    "elastic.predictor_tol=0.04",
    "elastic.expand_train=0.25",
    "elastic.gate_per_width=true",
]


def half_shape(d_model: int) -> list[str]:
    """The dense peer shaped like the elastic model's half-width sub-network: half the query
    heads (4 of 8, one KV head), the same head size, half the MLP units."""
    return [
        "model.attn.n_head=4",
        "model.attn.n_kv_head=1",
        f"model.attn.head_dim={d_model // 8}",
        "model.mlp.ratio=2.0",
    ]


def link_quickstart(qs: Path, out: Path) -> None:
    """Reuse a quickstart run's tokenizer and shards (the quickstart corpus) under out/."""
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in (
        (qs / "tokenizer.json", "tokenizer.json"),
        (qs / "data" / "train", "train"),
        (qs / "data" / "val", "val"),
    ):
        if not src.exists():
            raise SystemExit(f"{src} not found: run `adamba quickstart --out {qs}` first")
        if not (out / dst).exists():
            (out / dst).symlink_to(src.resolve())
    print(f"quickstart corpus from {qs} -> {out}")


def prepare(text: str, out: Path, vocab: int) -> None:
    from adamba.data.shards import write_shards
    from adamba.data.tokenizer import Tokenizer

    raw = Path(text).read_text()
    cut = raw.rfind("\n", 0, int(len(raw) * 0.9)) + 1
    train, val = raw[:cut], raw[cut:]
    # documents of ~4 KB so BOS-aligned packing sees many documents
    docs = [train[i : i + 4000] for i in range(0, len(train), 4000)]
    vdocs = [val[i : i + 4000] for i in range(0, len(val), 4000)]
    tok = Tokenizer.train(docs, vocab)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    write_shards(docs, tok, out / "train", source="train")
    write_shards(vdocs, tok, out / "val", source="val")
    print(f"train {len(train):,} chars, val {len(val):,} chars -> {out}")


def data_overrides(out: Path) -> list[str]:
    return [
        f"data.train={out / 'train' / 'manifest.jsonl'}",
        f"data.val={out / 'val' / 'manifest.jsonl'}",
        f"data.tokenizer={out / 'tokenizer.json'}",
    ]


def train_one(
    out: Path,
    name: str,
    steps: int,
    extra: list[str],
    d_model: int = 128,
    lr: float = 3e-3,
    run_dir: Path | None = None,
    resume: bool = False,
) -> None:
    from adamba.train.trainer import run

    run_dir = run_dir or out / name
    peer = {"elastic": ELASTIC, "dense": [], "half": half_shape(d_model)}[name]
    over = BASE + [f"model.d_model={d_model}", f"train.lr={lr}"] + data_overrides(out) + peer
    over += (extra if name == "elastic" else []) + [f"train.max_steps={steps}", f"run.out_dir={run_dir}"]
    res = run(load_config("tiny-cpu", over), resume=resume)
    print(
        f"{run_dir.name}: {res.steps} steps, {res.tokens_seen:,} tokens, val {res.val}, {res.elapsed_s:.0f}s"
    )
    if run_dir != out / name:
        return
    log_path = out / "train_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    log[name] = {"steps": res.steps, "tokens": res.tokens_seen, "seconds": res.elapsed_s, "overrides": over}
    log_path.write_text(json.dumps(log, indent=2))


def lr_sweep(out: Path, names: list[str], lrs: list[str], d_model: int | None, steps: int) -> dict:
    """Is each shape trained at a fair learning rate? Trains `names` at every rate in `lrs` on
    out/'s data (same recipe, steps and seed as `train`; the elastic model without its gate
    calibration, which does not touch the LM) under out/lr-sweep/<name>-lr<rate>, and scores
    each on the whole validation split next to the models `train` left in out/ (at the rate in
    their config). Runs already trained are only scored, so an interrupted sweep resumes; rows
    merge into results/elastic-lr-<out>.json, so sweeps of other shapes or rates add up, also
    when run side by side (one process per shape on a 2-core machine). Returns this call's rows.
    d_model None: the width of the models `train` left in out/ (else 128)."""
    from adamba.checkpoint import load_model, read_checkpoint

    def latest(run_dir: Path):
        """The run's latest checkpoint, None if it has none."""
        try:
            return read_checkpoint(run_dir)
        except AdambaError:
            return None

    def done_steps(run_dir: Path) -> int | None:
        ckpt = latest(run_dir)
        return None if ckpt is None else int(ckpt.state.get("step", 0))

    if d_model is None:
        found = [c for n in ("elastic", "dense", "half") if (c := latest(out / n)) is not None]
        d_model = found[0].cfg.model.d_model if found else 128
    torch.set_num_threads(1)
    path = RESULTS / f"elastic-lr-{out.name.removeprefix('el-')}.json"
    res: dict[str, dict] = {}
    for name in names:
        runs = [(None, out / name)] + [(lr, out / "lr-sweep" / f"{name}-lr{lr}") for lr in lrs]
        for lr, run_dir in runs:
            done = done_steps(run_dir)
            if lr is not None and (done is None or done < steps):
                extra = ["elastic.calibrate_steps=0"] if name == "elastic" else []
                train_one(out, name, steps, extra, d_model, float(lr), run_dir, resume=done is not None)
            elif done is None:
                continue
            model, tok, ckpt = load_model(run_dir)
            tb = torch.as_tensor(tok.token_bytes(), dtype=torch.long)
            L = len(model.blocks)
            runs_at = (
                {f"width={w:g}": [w] * L for w in ckpt.cfg.elastic.widths}
                if name == "elastic"
                else {"width=1": None}
            )
            bpb = {k: val_bpb(model, out, tb, widths) for k, widths in runs_at.items()}
            row = {
                "lr": ckpt.cfg.train.lr,
                "d_model": model.cfg.d_model,
                "steps": ckpt.state.get("step"),
                "bpb": bpb,
            }
            res[f"{name}-lr{ckpt.cfg.train.lr:g}"] = row
            print(
                f"{name:8s} lr {ckpt.cfg.train.lr:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in bpb.items()),
                flush=True,
            )
            # merge into the file as it is now: earlier sweeps' rows, and a sweep of another
            # shape running beside this one (they write at different times)
            RESULTS.mkdir(parents=True, exist_ok=True)
            rows = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps(dict(sorted({**rows, **res}.items())), indent=2))
    return res


def val_tokens(out: Path) -> torch.Tensor:
    from adamba.data.shards import load_tokens, read_manifest

    shards = read_manifest(out / "val" / "manifest.jsonl")
    return torch.cat([torch.as_tensor(load_tokens(s).astype("int64")) for s in shards])


def val_rows(out: Path, seq: int, max_rows: int | None = None) -> torch.Tensor:
    """The validation tokens cut into [rows, seq + 1] windows (inputs and shifted targets)."""
    toks = val_tokens(out)
    return toks[: len(toks) // (seq + 1) * (seq + 1)].view(-1, seq + 1)[:max_rows]


def val_sequences(out: Path, n: int, length: int) -> list[torch.Tensor]:
    toks = val_tokens(out)
    step = max(length, (len(toks) - length) // n)
    return [toks[i * step : i * step + length] for i in range(n) if i * step + length <= len(toks)]


def val_bpb(model, out: Path, token_bytes: torch.Tensor, widths: list[float] | None, seq: int = 128) -> float:
    """Bits/byte over the whole validation split (batched teacher forcing, no exit): the
    quality number per width, on every held-out token rather than a decoded sample."""
    rows = val_rows(out, seq)
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            x, y = rows[i : i + 32, :-1], rows[i : i + 32, 1:]
            logits, _ = model(x, widths=widths)
            ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            b = token_bytes[y.flatten()]
            nats += float((ce * (b > 0)).sum())
            nbytes += int(b.sum())
    return nats / (math.log(2) * max(1, nbytes))


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


def exit_sweep(
    model, out: Path, thresholds, token_bytes: torch.Tensor, prompt: int = 16, seq: int = 128
) -> list[dict]:
    """The exit rule at full width over the whole validation split, in n_layer batched passes
    per batch of rows (batched_exits: the same decisions and logits as token-by-token
    decoding with copy-forward, checked by a test). Positions before `prompt` are context and
    never exit. Per threshold: share of next-token argmaxes changed vs the full model, layer
    FLOPs skipped (layers + gates + copy-forward K/V, the runner's accounting; LM head left
    out), exit rate, exit-layer histogram and bits/byte."""
    L = len(model.blocks)
    rows = val_rows(out, seq)
    acct = ElasticRunner(model, model.elastic.ecfg, el.Policy([1.0] * L))
    kv = [acct._copy_forward_flops(j) for j in range(L)]
    gate = model.elastic.gate_flops
    # per-position layer costs at full width: [T, L] (attention grows with the context)
    per = torch.tensor([[acct._layer_flops(j, 1.0, t + 1) for j in range(L)] for t in range(seq)])
    cum = per.cumsum(1)  # cost of layers 0..e
    tail_kv = torch.tensor([sum(kv[e + 1 :]) for e in range(L)])
    res = []
    with torch.no_grad():
        full_pred = []
        for i in range(0, len(rows), 32):
            h, _ = el.run_layers(model, rows[i : i + 32, :-1], [1.0] * L)
            full_pred.append(model.head(model.norm(h)).argmax(-1))
        full_pred = torch.cat(full_pred)
        for thr in thresholds:
            changed, changed_live, spent, full, n, ces, tgts = 0, 0, 0.0, 0.0, 0, [], []
            hist = torch.zeros(L, dtype=torch.long)
            for i in range(0, len(rows), 32):
                x, y = rows[i : i + 32, :-1], rows[i : i + 32, 1:]
                h, ex = batched_exits(model, x, [1.0] * L, thr, start=prompt)
                logits = model.head(model.norm(h))[:, prompt:]
                ex = ex[:, prompt:]
                diff = logits.argmax(-1) != full_pred[i : i + 32, prompt:]
                changed += int(diff.sum())
                changed_live += int((diff & (ex == L - 1)).sum())  # no exit: copy-forward K/V did it
                t = torch.arange(prompt, seq).expand_as(ex)
                cost = cum[t, ex] + torch.clamp(ex + 1, max=L - 1) * gate + tail_kv[ex]
                spent += float(cost.sum())
                full += float(cum[t, L - 1].sum())
                n += ex.numel()
                hist += torch.bincount(ex.flatten(), minlength=L)
                tgts.append(y[:, prompt:].flatten())
                ces.append(F.cross_entropy(logits.flatten(0, 1), tgts[-1], reduction="none"))
            r = {
                "threshold": thr,
                "argmax_changed": changed / n,
                # of which tokens that ran every layer, changed by earlier tokens' copy-forward K/V
                "argmax_changed_not_exited": changed_live / n,
                "layer_flops_skipped": 1 - spent / full,
                "exit_rate": 1 - float(hist[-1]) / n,
                "exit_hist": hist.tolist(),
                "tokens": n,
                "bpb": bpb_of(torch.cat(ces), torch.cat(tgts), token_bytes),
            }
            res.append(r)
            print(
                f"   exit > {thr}: argmax changed {r['argmax_changed']:.2%} "
                f"({r['argmax_changed_not_exited']:.2%} on tokens that did not exit), layer FLOPs skipped "
                f"{r['layer_flops_skipped']:.1%}, exit rate {r['exit_rate']:.1%} ({n:,} tokens)",
                flush=True,
            )
    return res


def bpb_of(ce: torch.Tensor, tgts: torch.Tensor, token_bytes: torch.Tensor) -> float:
    b = token_bytes[tgts]
    return float((ce * (b > 0)).sum()) / (math.log(2) * max(1, int(b.sum())))


def measure(
    out: Path, n_seq: int, length: int, prompt: int, batch: int, width_gate_steps: int = 1000, rounds: int = 3
) -> dict:
    from adamba.checkpoint import load_model

    torch.set_num_threads(1)
    model, tok, ckpt = load_model(out / "elastic")
    if not model.elastic.narrow and width_gate_steps:  # trained before per-width gates existed
        add_width_gates(model, out, width_gate_steps)
    ecfg = model.elastic.ecfg
    tb = torch.as_tensor(tok.token_bytes(), dtype=torch.long)
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
            summ.update(bpb=bpb_of(ce, tg, tb), tok_s=tok_s)
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
        "train": json.loads((out / "train_log.json").read_text())
        if (out / "train_log.json").exists()
        else {},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"elastic-{out.name.removeprefix('el-')}.json").write_text(json.dumps(res, indent=2))
    plot(res, RESULTS / f"elastic-{out.name.removeprefix('el-')}.png")
    return res


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
    from adamba.config import AttnConfig, ModelConfig
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
        for mode in ("ghost", "whisper", "normal", "think"):
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
            + "  ".join(f"{m} {row[m]:6.0f} tok/s" for m in ("ghost", "whisper", "normal", "think"))
            + f"  ghost/think {row['ghost_over_think']:.2f}x",
            flush=True,
        )
        out.append(row)
        del model
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "elastic-speed"  # one sequence on a CPU: the historical name
    if (device, batch) != ("cpu", 1):
        name += (
            f"-{device}-b{batch}"
            + (f"-t{tokens}" if tokens != 64 else "")
            + (f"-kv{kv_heads}" if kv_heads else "")
        )
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    return out


def batch_speed(out: Path, batches: list[int], tokens: int, prompt: int, rounds: int = 3) -> list[dict]:
    """Decode tokens/s of the trained model's fixed modes (and the dense peer of the same shape)
    as the number of sequences decoded together grows. At batch 1 a 1.8M-parameter model's
    step is Python and dispatch overhead, the same for every width; a batch multiplies the
    matmul work per step and leaves the overhead alone, which is where narrow widths pay.
    Modes are interleaved within each round; the best of `rounds` is kept."""
    import time

    from adamba.checkpoint import load_model

    torch.set_num_threads(1)
    model, _, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    contenders = {
        m: (model, el.mode_policy(m, model, ecfg), ecfg) for m in ("ghost", "whisper", "normal", "think")
    }
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if tokens == 32 else f"-t{tokens}"  # longer decodes: more KV read per step
    (RESULTS / f"elastic-batch-speed-{out.name.removeprefix('el-')}{suffix}.json").write_text(
        json.dumps(res, indent=2)
    )
    return res


def fixed_step(model, width: float):
    """One decode step of an attention-only model at one width, as a pure function over
    preallocated caches (ks/vs: per layer [B, KV heads stored, capacity, head_dim]) and the
    position `pos`, for torch.compile: ElasticRunner's caches grow and count in Python, which
    a compiled graph would guard on at every step. The same math as the runner's narrow path."""
    from adamba.nn.attention import single_query_attention

    def step(tok: torch.Tensor, ks: list, vs: list, pos: int) -> torch.Tensor:
        x = model.embed(tok)
        B = tok.shape[0]
        for blk, kc, vc in zip(model.blocks, ks, vs):
            a = blk.mixer
            hq, hkv = a.heads_at(width)
            hd, n, wt = a.head_dim, kc.shape[1], a.qkv_proj.weight
            kq, kv = a.q_dim, a.q_dim + a.kv_dim
            xn = blk.norm1(x)
            q = F.linear(xn, wt[: hq * hd]).view(B, 1, hq, hd).transpose(1, 2)
            k = F.linear(xn, wt[kq : kq + n * hd]).view(B, 1, n, hd).transpose(1, 2)
            v = F.linear(xn, wt[kv : kv + n * hd]).view(B, 1, n, hd).transpose(1, 2)
            if a.qk_norm:
                q = F.rms_norm(q, (hd,), a.q_norm_weight, a.eps)
                k = F.rms_norm(k, (hd,), a.k_norm_weight, a.eps)
            if a.rotary is not None:
                q, k = a.rotary(q, pos), a.rotary(k, pos)
            kc[:, :, pos : pos + 1] = k
            vc[:, :, pos : pos + 1] = v
            y = single_query_attention(q, kc[:, :hkv, : pos + 1], vc[:, :hkv, : pos + 1])
            x = x + F.linear(y.transpose(1, 2).reshape(B, 1, hq * hd), a.o_proj.weight[:, : hq * hd])
            x = x + blk.mlp(blk.norm2(x), width)
        return model.head(model.norm(x[:, -1]))

    return step


def prompt_caches(r, capacity: int) -> tuple[list, list]:
    """`fixed_step`'s preallocated caches ([B, KV heads stored, capacity, head_dim] per layer),
    holding what runner r cached for the prompt it prefilled."""
    ks = [c.k.new_zeros(c.batch, c.heads, capacity, c.head_dim) for c in r.state]
    vs = [k.clone() for k in ks]
    for kc, vc, c in zip(ks, vs, r.state):
        kc[:, :, : r.pos], vc[:, :, : r.pos] = c.k[:, :, : r.pos], c.v[:, :, : r.pos]
    return ks, vs


def compile_speed(out: Path, batches: list[int], length: int, prompt: int, rounds: int = 3) -> list[dict]:
    """Does removing eager PyTorch's per-kernel overhead change ghost/think? Decodes the trained
    model's fixed modes with ElasticRunner (eager) and with `fixed_step` under torch.compile
    (inductor, one graph per mode, dynamic shapes), `batch` held-out sequences together for
    each batch size, 1 thread, modes and kinds interleaved, best of `rounds`. The first compiled
    call per batch size (compile or recompile) is timed apart and its logits checked against
    the runner's."""
    import time

    from adamba.checkpoint import load_model

    torch.set_num_threads(1)
    model, _, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    if any(b.kind != "A" or b.mlp is None for b in model.blocks):
        raise SystemExit("compile-speed: attention + MLP layers only")
    toks = val_tokens(out)
    modes = ("ghost", "whisper", "normal", "think")
    pols = {m: el.mode_policy(m, model, ecfg) for m in modes}
    a = model.blocks[0].mixer
    for m, pol in pols.items():  # fixed_step's grouped attention needs whole GQA groups
        hq, hkv = a.heads_at(pol.widths[0])
        if hkv > 1 and hq != hkv * (a.n_head // a.n_kv_head):
            raise SystemExit(f"compile-speed: {m}'s width {pol.widths[0]:g} splits a GQA group")
    # one code object, four modes' closures, a graph per batch-1 / batched shape: past dynamo's
    # default of 8 graphs per code object it would silently run the rest eagerly
    torch._dynamo.config.recompile_limit = 64
    steps = {m: torch.compile(fixed_step(model, pols[m].widths[0]), dynamic=True) for m in modes}
    rows = []
    for batch in batches:
        seqs = torch.stack([toks[i * length : (i + 1) * length] for i in range(batch)])
        row: dict = {
            "batch": batch,
            "length": length,
            "prompt": prompt,
            "compile_s": {},
            "max_logit_diff": {},
        }
        best: dict[str, float] = {}
        for rnd in range(rounds):
            for mode in modes:
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
        for mode in modes:
            e, c = row["tok_s"][f"{mode}-eager"], row["tok_s"][f"{mode}-compiled"]
            cs = row["compile_s"][mode]
            print(f"| {row['batch']} | {mode} | {e:,.0f} | {c:,.0f} | {c / e:.2f}x | {cs:.0f} |")
        g = row["ghost_over_think"]
        print(f"| {row['batch']} | ghost/think | {g['eager']:.2f}x | {g['compiled']:.2f}x | | |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"elastic-compile-speed-{out.name.removeprefix('el-')}.json"
    path.write_text(json.dumps(rows, indent=2))
    return rows


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


def calm_sweep(out: Path, rows_max: int = 128, seq: int = 128) -> list[dict]:
    """CALM's softmax-response exit, simulated offline on the trained elastic model: at the
    checked layers, exit when the intermediate prediction's top-1 minus top-2 probability is
    >= the threshold. Batched at full width without copy-forward (an approximation of decoding);
    FLOPs count each check's LM-head matmul, which the ConfidenceGate avoids."""
    from adamba.checkpoint import load_model

    model = load_model(out / "elastic")[0]
    L, D, V = len(model.blocks), model.cfg.d_model, model.cfg.vocab_size
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
    runner = ElasticRunner(model, ElasticConfig(enabled=True), el.Policy([1.0] * L))
    layer = runner._layer_flops(0, 1.0, seq // 2)  # a mid-sequence token's layer cost
    head = 2 * D * V
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
            flops = (at + 1) * layer + cost + head * (~done)
            r = {
                "checked_layers": check,
                "threshold": thr,
                "exit_rate": float(done.float().mean()),
                "argmax_changed": float(changed.float().mean()),
                "flops_skipped": float(1 - flops.float().mean() / full),
            }
            out_rows.append(r)
            print(
                f"check layers {check} margin >= {thr}: exit {r['exit_rate']:.1%}, argmax changed "
                f"{r['argmax_changed']:.2%}, FLOPs skipped {r['flops_skipped']:.1%}"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"elastic-calm-{out.name.removeprefix('el-')}.json").write_text(json.dumps(out_rows, indent=2))
    return out_rows


def gate_probe(out: Path, hidden: int, rows_max: int = 320, seq: int = 128, steps: int = 300) -> list[dict]:
    """How good could a ConfidenceGate be on this model? Fit a fresh gate per layer (the
    ConfidenceGate's form: rms-normed hidden state -> Linear, or an MLP with `hidden` units) to
    full-width agreement with the final argmax, after training, on the first 2/3 of the
    validation rows; score the exit rule on the last third (batched, no copy-forward, layers
    skipped as the cost). The gap to the in-training gate says how much the gate's training
    (sandwich-mixed widths, a moving LM) costs."""
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"elastic-probe{hidden}-{out.name.removeprefix('el-')}.json"
    (RESULTS / name).write_text(json.dumps(res, indent=2))
    return res


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


def calibrated_sweep(out: Path, hidden: int, steps: int, reuse: int = 1) -> dict:
    """A trained model's gate refitted from scratch (linear, or an MLP of `hidden` units) for
    `steps` calibration steps with the LM frozen (calibrate_gate on training batches), then
    the exit sweep on the whole validation split (exit_sweep: exact replay of decoding with
    copy-forward K/V), next to the model's full-width bits/byte. How the calibration length,
    gate size and training recipe (e.g. --set elastic.exit_distill_weight=1.0 at `train`) move
    the curve of argmax changes against layer FLOPs skipped."""
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
    tb = torch.as_tensor(tok.token_bytes(), dtype=torch.long)
    L = len(model.blocks)
    res = {
        "gate_hidden": hidden,
        "steps": steps,
        "reuse": reuse,
        "recipe": {k: getattr(ecfg, k) for k in ("exit_loss_weight", "exit_distill_weight")},
        "bpb": {f"width={w:g}": val_bpb(model, out, tb, [w] * L) for w in (0.5, 1.0)},
        "sweep": exit_sweep(model, out, SWEEP, tb),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"elastic-calibrated{hidden}-{steps}{f'x{reuse}' if reuse > 1 else ''}-{out.name.removeprefix('el-')}.json"
    (RESULTS / name).write_text(json.dumps(res, indent=2))
    return res


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
    from adamba.data.shards import load_tokens, read_manifest

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, tok, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    ws, L, k = ecfg.widths, len(model.blocks), ecfg.predictor_layer
    tb = torch.as_tensor(tok.token_bytes(), dtype=torch.long)
    acct = ElasticRunner(model, ecfg, el.Policy([1.0] * L))
    cost = torch.tensor(  # mean FLOPs per decoded token relative to full, per width (runner's model)
        [
            sum(
                (
                    sum(acct._layer_flops(i, w, t) for i in range(L))
                    + 2 * model.cfg.d_model * model.cfg.vocab_size
                )
                / token_flops(acct.model, t)
                for t in range(prompt + 1, seq + 1)
            )
            / (seq - prompt)
            for w in ws
        ]
    )

    def per_row(rows):
        feats, nats, nbytes = [], [], []
        with torch.no_grad():
            for i in range(0, len(rows), 64):
                x, y = rows[i : i + 64, :-1], rows[i : i + 64, 1:]
                h = model.embed(x[:, :prompt])
                for li in range(k):
                    h = model.blocks[li](h, None, 1.0)
                feats.append(h.float().mean(1))
                b = tb[y][:, prompt:]
                nbytes.append(b.sum(1).float())
                per_w = []
                for w in ws:
                    lg, _ = model(x, widths=[w] * L)
                    ce = F.cross_entropy(lg.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
                    per_w.append((ce[:, prompt:] * (b > 0)).sum(1))
                nats.append(torch.stack(per_w, 1))
        return torch.cat(feats), torch.cat(nats), torch.cat(nbytes)

    va = val_rows(out, seq)
    Xva, Nva, Bva = per_row(va)
    tot = float(Bva.sum())
    uniform = (Nva.sum(0) / (math.log(2) * tot)).tolist()

    def point(choice: torch.Tensor, name: str) -> dict:
        bpb = float(Nva[torch.arange(len(va)), choice].sum()) / (math.log(2) * tot)
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
    toks = torch.cat(
        [
            torch.as_tensor(load_tokens(s).astype("int64"))
            for s in read_manifest(out / "train" / "manifest.jsonl")
        ]
    )
    tr = toks[: len(toks) // (seq + 1) * (seq + 1)].view(-1, seq + 1)
    Xtr, Ntr, Btr = per_row(tr[torch.randperm(len(tr))[:train_rows]])
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"elastic-headroom-{out.name.removeprefix('el-')}.json").write_text(json.dumps(res, indent=2))
    return res


# ---------------------------------------------------------------- the seed's tiny experiment

SEED_WORDS = "red green blue cyan pink gold gray teal navy lime plum rose sand snow jade ruby".split()


def seed_docs(n: int, seed: int) -> list[tuple[str, str]]:
    """(kind, text) documents of an easy/hard mix, 70/30 as in the seed's toy task. Easy: a
    cycle of 3-5 colour words repeated (after the first cycle every word is predictable from
    shallow context). Hard: sums "a+b=c" of two 2-digit numbers, where the answer digits
    need the computation (the depth) the rest does not."""
    import random

    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        if rng.random() < 0.7:
            cyc = rng.sample(SEED_WORDS, rng.randint(3, 5))
            docs.append(("easy", " ".join(cyc[i % len(cyc)] for i in range(40))))
        else:
            sums = []
            for _ in range(8):
                a, b = rng.randint(10, 99), rng.randint(10, 99)
                sums.append(f"{a}+{b}={a + b}")
            docs.append(("hard", " ".join(sums)))
    return docs


def seed_experiment(out: Path, steps: int, extra: list[str] | None = None) -> dict:
    """8 layers, widths 32..256 (d_model 256, 8 heads of 32: widths 1/8..1 keep 1..8 heads and
    the matching MLP units), trained with Matryoshka sampling + gate + predictor on the
    easy/hard mix; then auto mode decodes held-out easy and hard documents and counts early
    exits and expansions, next to the seed's claimed 71.5% / 3%."""
    from adamba.checkpoint import load_model
    from adamba.data.shards import write_shards
    from adamba.data.tokenizer import Tokenizer
    from adamba.train.trainer import run

    out.mkdir(parents=True, exist_ok=True)
    train_docs, val_docs = seed_docs(6000, 0), seed_docs(200, 1)
    tok = Tokenizer.train((t for _, t in train_docs), 512)
    tok.save(out / "tokenizer.json")
    write_shards([t for _, t in train_docs], tok, out / "train", source="seed-train")
    write_shards([t for _, t in val_docs], tok, out / "val", source="seed-val")
    over = (
        data_overrides(out)
        + ELASTIC
        + [
            "model.d_model=256",
            "model.n_layer=8",
            "model.attn.n_head=8",
            "model.attn.n_kv_head=8",
            "model.max_seq_len=64",
            "data.seq_len=64",
            "train.batch_size=16",
            "train.lr=3e-3",
            "train.eval_every=0",
            "train.ckpt_every=100",
            "train.threads=1",
            "run.progress=false",
            "elastic.exit_loss_weight=0.1",
            "elastic.calibrate_steps=2400",
            "elastic.calibrate_reuse=8",
            f"train.max_steps={steps}",
            f"run.out_dir={out / 'elastic'}",
        ]
        + (extra or [])
    )
    res = run(load_config("tiny-cpu", over))
    model, tok, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    result = {
        "steps": res.steps,
        "tokens": res.tokens_seen,
        "train_s": res.elapsed_s,
        "seed_claim": {"exit": 0.715, "expand": 0.03},
    }
    for kind in ("easy", "hard"):
        take = 28 if kind == "easy" else 12  # the 70/30 mix, so pooled rates weight it right
        seqs = [torch.tensor([tok.bos_id] + tok.encode(t)) for k, t in val_docs if k == kind][:take]
        ce, tg, pr, summ, secs = teacher_forced(model, ecfg, el.mode_policy("auto", model, ecfg), seqs, 4)
        _, _, full_pr, _, _ = teacher_forced(model, ecfg, el.Policy([1.0] * len(model.blocks)), seqs, 4)
        summ["argmax_changed_vs_full"] = float((pr != full_pr).float().mean())
        summ["accuracy"] = float((pr == tg).float().mean())
        result[kind] = summ
        print(
            f"{kind}: exit {summ['exit_rate']:.1%}  expand {summ['expand_rate']:.1%}  FLOPs {summ['flops_rel']:.2f}  "
            f"next-token accuracy {summ['accuracy']:.1%}  argmax changed vs full {summ['argmax_changed_vs_full']:.1%}  "
            f"exit layers {summ['exit_hist']}",
            flush=True,
        )
    n = {k: result[k]["tokens"] for k in ("easy", "hard")}
    for key in ("exit_rate", "expand_rate"):
        result[f"mix_{key}"] = sum(result[k][key] * n[k] for k in n) / sum(n.values())
    print(
        f"mix: exit {result['mix_exit_rate']:.1%}, expand {result['mix_expand_rate']:.1%} "
        f"(seed claimed 71.5% / 3%)"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    result["overrides"] = extra or []
    # elastic-seed.json for an out dir named el-seed (the default recipe), else named after it
    (RESULTS / f"elastic-{out.name.removeprefix('el-')}.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a text file: last 10%% held out, tokenizer trained on the rest")
    src.add_argument("--quickstart", type=Path, help="reuse an `adamba quickstart --out DIR` corpus")
    a.add_argument("--out", required=True, type=Path)
    a.add_argument("--vocab", type=int, default=1024)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--only", choices=["elastic", "dense", "half"], action="append")
    t.add_argument("--set", action="append", default=[], help="extra overrides for the elastic model")
    t.add_argument("--d-model", type=int, default=128, help="width of all three models (8 heads)")
    t.add_argument("--lr", type=float, default=3e-3, help="learning rate of all three models")
    ls = sub.add_parser("lr-sweep")
    ls.add_argument("--out", required=True, type=Path)
    ls.add_argument("--only", choices=["elastic", "dense", "half"], action="append")
    ls.add_argument("--lrs", default="1e-3,2e-3,6e-3", help="rates besides the one `train` used")
    ls.add_argument("--d-model", type=int, default=None, help="default: the width `train` used in --out")
    ls.add_argument("--steps", type=int, default=400)
    m = sub.add_parser("measure")
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--n-seq", type=int, default=256)
    m.add_argument("--batch", type=int, default=256, help="sequences decoded together")
    m.add_argument("--length", type=int, default=128)
    m.add_argument("--prompt", type=int, default=16)
    sp = sub.add_parser("speed")
    sp.add_argument("--d-models", default="128,256,512,1024")
    sp.add_argument("--layers", type=int, default=8)
    sp.add_argument("--tokens", type=int, default=64)
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    sp.add_argument("--head-dim", type=int, default=0, help="0: 8 heads at every width")
    sp.add_argument("--vocab", type=int, default=1024)
    sp.add_argument("--kv-heads", type=int, default=0, help="0: a quarter of the query heads")
    bs = sub.add_parser("batch-speed")
    bs.add_argument("--out", required=True, type=Path)
    bs.add_argument("--batches", default="1,8,32,128")
    bs.add_argument("--tokens", type=int, default=32)
    pr = sub.add_parser("probe")
    pr.add_argument("--out", required=True, type=Path)
    pr.add_argument("--hidden", type=int, default=0)
    cb = sub.add_parser("calibrate")
    cb.add_argument("--out", required=True, type=Path)
    cb.add_argument("--hidden", type=int, default=64)
    cb.add_argument("--steps", type=int, default=1000)
    cb.add_argument("--reuse", type=int, default=1, help="calibration steps per forward pass")
    cm = sub.add_parser("calm")
    cm.add_argument("--out", required=True, type=Path)
    cs = sub.add_parser("compile-speed")
    cs.add_argument("--out", required=True, type=Path)
    cs.add_argument("--batches", default="1,32,256", help="sequences decoded together")
    cs.add_argument("--length", type=int, default=128)
    hr = sub.add_parser("headroom")
    hr.add_argument("--out", required=True, type=Path)
    hr.add_argument("--train-rows", type=int, default=2000)
    sd = sub.add_parser("seed")
    sd.add_argument("--out", required=True, type=Path)
    sd.add_argument("--steps", type=int, default=300)
    sd.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = p.parse_args()
    if args.cmd == "seed":
        seed_experiment(args.out, args.steps, args.set)
    elif args.cmd == "probe":
        gate_probe(args.out, args.hidden)
    elif args.cmd == "calibrate":
        calibrated_sweep(args.out, args.hidden, args.steps, args.reuse)
    elif args.cmd == "calm":
        calm_sweep(args.out)
    elif args.cmd == "prepare":
        if args.quickstart:
            link_quickstart(args.quickstart, args.out)
        else:
            prepare(args.text, args.out, args.vocab)
    elif args.cmd == "train":
        for name in args.only or ["elastic", "dense", "half"]:
            train_one(args.out, name, args.steps, args.set, args.d_model, args.lr)
    elif args.cmd == "lr-sweep":
        lrs = [x for x in args.lrs.split(",") if x]
        for x in lrs:
            try:
                ok = float(x) > 0
            except ValueError:
                ok = False
            if not ok:
                raise SystemExit(f"--lrs: {x!r} is not a positive learning rate (e.g. --lrs 1e-3,2e-3)")
        lr_sweep(
            args.out,
            args.only or ["elastic", "dense", "half"],
            lrs,
            args.d_model,
            args.steps,
        )
    elif args.cmd == "batch-speed":
        batch_speed(args.out, [int(x) for x in args.batches.split(",")], args.tokens, 16)
    elif args.cmd == "speed":
        speed_scaling(
            [int(x) for x in args.d_models.split(",")],
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
    elif args.cmd == "compile-speed":
        compile_speed(args.out, [int(x) for x in args.batches.split(",")], args.length, 16)
    elif args.cmd == "headroom":
        width_headroom(args.out, args.train_rows)
    else:
        measure(args.out, args.n_seq, args.length, args.prompt, args.batch)


if __name__ == "__main__":
    main()
