"""`adamba train`: train a model from a TOML config or preset."""

from __future__ import annotations

import argparse

import adamba.post.objectives  # noqa: F401  (registers the post-training objectives: grpo)


def run(args: argparse.Namespace) -> None:
    from adamba.config import load_config
    from adamba.errors import AdambaError
    from adamba.train import run as train_run
    from adamba.trm.config import is_trm_config

    if is_trm_config(args.config):
        raise AdambaError(
            f"{args.config} is a TRM config (route B): train it with `adamba trm train --config {args.config}`"
        )

    cfg = load_config(args.config, run_overrides(args))
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
    add_run_flags(t, "tiny-cpu", "train.lr=1e-3 or model.attn.n_head=8")
    t.set_defaults(func=run)


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The --set values, then what --out and --no-progress stand for."""
    out = list(args.set or [])
    if args.out:
        out.append(f"run.out_dir={args.out}")
    if args.no_progress:
        out.append("run.progress=false")
    return out


def add_run_flags(t, preset: str, example: str) -> None:
    """--config/--out/--set/--resume/--overwrite/--no-progress, shared by `adamba train` and
    `adamba trm train`."""
    t.add_argument("--config", required=True, help=f"TOML file or preset name (e.g. {preset})")
    t.add_argument("--out", help="run directory (overrides run.out_dir)")
    t.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help=f"override a config value, e.g. {example} (repeatable)",
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
