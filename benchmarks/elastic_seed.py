"""Elastic compute, the seed's tiny experiment: does auto exit the easy tokens and widen the hard ones?

    python benchmarks/elastic_seed.py --out runs/el-seed [--steps 300] [--set elastic.predictor_tol=0.01]

Re-runs the seed repository's toy task: 8 layers, d256, widths 32..256, trained with Matryoshka
sampling, the predictor and the early-exit loss on a 70/30 mix of easy documents (cycles of
colour words) and hard ones (two-digit sums), then the gate-calibration phase; auto mode then
decodes held-out easy and hard documents and counts early exits and expansions next to the
seed's claimed 71.5% / 3% (results/elastic-seed.json for --out runs/el-seed, else named after
the run folder).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from common import ELASTIC, data_overrides, run_name, write_result

from adamba.config import load_config
from adamba.eval.efficiency import teacher_forced
from adamba.model import elastic as el

SEED_WORDS = "red green blue cyan pink gold gray teal navy lime plum rose sand snow jade ruby".split()


def seed_docs(n: int, seed: int) -> list[tuple[str, str]]:
    """(kind, text) documents of an easy/hard mix, 70/30 as in the seed's toy task. Easy: a
    cycle of 3-5 colour words repeated (after the first cycle every word is predictable from
    shallow context). Hard: sums "a+b=c" of two 2-digit numbers, where the answer digits
    need the computation (the depth) the rest does not."""
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
    result["overrides"] = extra or []
    # elastic-seed.json for an out dir named el-seed (the default recipe), else named after it
    write_result(f"elastic-{run_name(out)}", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = p.parse_args()
    seed_experiment(args.out, args.steps, args.set)


if __name__ == "__main__":
    main()
