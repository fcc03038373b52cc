"""`adamba eval`: named evaluation tasks on a checkpoint."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> None:
    from adamba.eval.run import run_eval

    for line in run_eval(args.ckpt, args.tasks.split(","), args.data, args.batches, args.decode_batch):
        print(line)


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--tasks", default="bpb", help="comma-separated: bpb, efficiency")
    e.add_argument("--data", action="append", help="validation manifest(s) (default: the run's data.val)")
    e.add_argument("--batches", type=int, default=50)
    e.add_argument(
        "--decode-batch",
        type=int,
        default=1,
        help="efficiency: decode this many sequences together (tokens/s at a batch; auto needs an attention-only model)",
    )
    e.set_defaults(func=run)
