"""What the elastic benchmark scripts share: the corpora (prepare / link a quickstart corpus),
the training recipe (BASE and ELASTIC override lists, the dense peers, `train_one`), the held-out
text (`val_tokens`, `val_rows`, `val_sequences`), bits/byte per width (`val_bpb`), the exit sweep
and the results folder. Imported as `from common import ...` by scripts run as
`python benchmarks/<script>.py` (a script's own folder is on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from adamba.config import load_config
from adamba.eval.bpb import bits_per_byte
from adamba.eval.efficiency import batched_exits
from adamba.model import elastic as el
from adamba.model import flops

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP = (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.99)  # exit thresholds swept
MODELS = ("elastic", "dense", "half")  # what `elastic_train.py train` leaves in a run folder

BASE = [  # + model.d_model and train.lr from `train --d-model --lr` (128, 3e-3)
    "model.n_layer=8",
    "model.attn.n_head=8",
    "model.attn.n_kv_head=2",
    "model.mlp.ratio=4.0",
    "model.max_seq_len=128",
    "data.seq_len=128",
    "train.batch_size=16",
    "train.embed_lr_mult=1.0",  # what every elastic run used (the tiny-cpu preset now uses 10)
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


def run_name(out: Path) -> str:
    """A run folder's name in result files: runs/el-ts -> ts (results/elastic-ts.json)."""
    return out.name.removeprefix("el-")


def write_result(name: str, obj) -> Path:
    """Write benchmarks/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(obj, indent=2))
    return path


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
    """Hold out the last 10% of a text (by characters, cut at a line), train a byte-level BPE
    tokenizer on the rest, write train and val shards under out/."""
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
    """Train one of MODELS on out/'s data (`extra`: overrides for the elastic model) into
    out/<name> (or run_dir), recording steps, tokens, seconds and overrides in out/train_log.json."""
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


def train_log(out: Path) -> dict:
    path = out / "train_log.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_tokens(manifest: Path) -> torch.Tensor:
    """Every token of a shard manifest, concatenated (int64)."""
    from adamba.data.shards import load_tokens as shard_tokens
    from adamba.data.shards import read_manifest

    return torch.cat([torch.as_tensor(shard_tokens(s).astype("int64")) for s in read_manifest(manifest)])


def val_tokens(out: Path) -> torch.Tensor:
    return load_tokens(out / "val" / "manifest.jsonl")


def rows_of(toks: torch.Tensor, seq: int, max_rows: int | None = None) -> torch.Tensor:
    """Tokens cut into [rows, seq + 1] windows (inputs and shifted targets)."""
    return toks[: len(toks) // (seq + 1) * (seq + 1)].view(-1, seq + 1)[:max_rows]


def val_rows(out: Path, seq: int, max_rows: int | None = None) -> torch.Tensor:
    """The validation tokens cut into [rows, seq + 1] windows (inputs and shifted targets)."""
    return rows_of(val_tokens(out), seq, max_rows)


def val_sequences(out: Path, n: int, length: int) -> list[torch.Tensor]:
    """n held-out sequences of `length` tokens, spread evenly over the validation split."""
    toks = val_tokens(out)
    step = max(length, (len(toks) - length) // n)
    return [toks[i * step : i * step + length] for i in range(n) if i * step + length <= len(toks)]


def token_bytes(tok) -> torch.Tensor:
    return torch.as_tensor(tok.token_bytes(), dtype=torch.long)


def val_bpb(model, out: Path, tb: torch.Tensor, widths: list[float] | None, seq: int = 128) -> float:
    """Bits/byte over the whole validation split (batched teacher forcing, no exit): the
    quality number per width, on every held-out token rather than a decoded sample."""
    rows = val_rows(out, seq)
    ces, tgts = [], []
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            x, y = rows[i : i + 32, :-1], rows[i : i + 32, 1:]
            logits, _ = model(x, widths=widths)
            ces.append(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none"))
            tgts.append(y.flatten())
    return bits_per_byte(torch.cat(ces), torch.cat(tgts), tb)


def exit_sweep(
    model, out: Path, thresholds, tb: torch.Tensor, prompt: int = 16, seq: int = 128
) -> list[dict]:
    """The exit rule at full width over the whole validation split, in n_layer batched passes
    per batch of rows (batched_exits: the same decisions and logits as token-by-token
    decoding with copy-forward, checked by a test). Positions before `prompt` are context and
    never exit. Per threshold: share of next-token argmaxes changed vs the full model, layer
    FLOPs skipped (layers + gates + copy-forward K/V, adamba/model/flops.py as the runner counts
    them; LM head left out), exit rate, exit-layer histogram and bits/byte."""
    L, d = len(model.blocks), model.cfg.d_model
    rows = val_rows(out, seq)
    # a full-width runner stores every KV head: copy-forward computes K/V for all of them
    kv = [flops.copy_forward_flops(b, d, b.mixer.n_kv_head if b.kind == "A" else 0) for b in model.blocks]
    gate = model.elastic.gate_flops
    # per-position layer costs at full width: [T, L] (attention grows with the context)
    per = torch.tensor([[flops.layer_flops(b, d, 1.0, t + 1) for b in model.blocks] for t in range(seq)])
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
                "bpb": bits_per_byte(torch.cat(ces), torch.cat(tgts), tb),
            }
            res.append(r)
            print(
                f"   exit > {thr}: argmax changed {r['argmax_changed']:.2%} "
                f"({r['argmax_changed_not_exited']:.2%} on tokens that did not exit), layer FLOPs skipped "
                f"{r['layer_flops_skipped']:.1%}, exit rate {r['exit_rate']:.1%} ({n:,} tokens)",
                flush=True,
            )
    return res
