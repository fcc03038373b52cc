"""`adamba train`: train a model from a TOML config or preset."""

from __future__ import annotations

import argparse

import adamba.post.objectives  # noqa: F401  (registers the post-training objectives: grpo)


def run(args: argparse.Namespace) -> None:
    from adamba.config import load_config
    from adamba.train import run as train_run

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    if args.no_progress:
        overrides.append("run.progress=false")
    cfg = load_config(args.config, overrides)
    res = train_run(cfg, resume=args.resume, overwrite=args.overwrite)
    if res.rank != 0:
        return
    val = f", val loss {res.val['loss']:.4f}, val bpb {res.val['bpb']:.4f}" if res.val else ""
    print(
        f"trained {res.steps} steps, {res.tokens_seen:,} tokens, {res.tokens_per_s:,.0f} tok/s{val} -> {res.run_dir}"
    )


def register(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a model from a TOML config",
        description="Train a model from a TOML config or preset: its [[phase]] tables in order "
        "(`adamba phases --config X` prints them), or one phase of train.max_steps.",
        epilog="Several processes: torchrun --standalone --nproc_per_node=N -m adamba train ... "
        "--set train.parallel=ddp (or fsdp); train.batch_size is per process.",
    )
    t.add_argument("--config", required=True, help="TOML file or preset name (e.g. tiny-cpu)")
    t.add_argument("--out", help="run directory (overrides run.out_dir)")
    t.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. train.lr=1e-3 or model.attn.n_head=8 (repeatable)",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue from the run directory's latest intact checkpoint"
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run directory that holds an earlier run (deletes its checkpoints and metrics)",
    )
    t.add_argument("--no-progress", action="store_true", help="no live progress bar")
    t.set_defaults(func=run)
