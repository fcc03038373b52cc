"""`adamba grow`: the original plan's route in miniature (dense -> inject Mamba -> phases -> widen)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> None:
    from adamba.grow import grow

    path = grow(
        out=args.out,
        config=args.config,
        overrides=args.set or [],
        widen_to=args.widen_to,
        data=args.data,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(f"results: {path}")


def register(sub) -> None:
    g = sub.add_parser(
        "grow",
        help="the plan's route in miniature: dense -> inject Mamba -> phase 1/2 -> widen -> phase 3",
        description="Train a small dense transformer, inject Mamba2 layers, train them alone (phase 1), "
        "train everything with Matryoshka widths and gates (phase 2), widen d_model, train the widened "
        "model (phase 3), measuring held-out bits per byte after every step and the compute modes at the "
        "end. ~15 minutes on 2 CPU cores with the default preset. Results go to OUT/grow.json as each "
        "stage finishes; running the command again resumes after the last finished stage.",
    )
    g.add_argument("--out", default="runs/grow", help="output directory (one run directory per stage)")
    g.add_argument(
        "--config",
        default="grow-tiny",
        help="preset with [[phase]] tables dense, mamba, matryoshka, gates, widened, regates",
    )
    g.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    g.add_argument("--widen-to", type=int, default=96, help="d_model after widening (default 96, from 64)")
    g.add_argument("--data", action="append", help="your own text files instead of the stdlib corpus")
    g.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=run)
