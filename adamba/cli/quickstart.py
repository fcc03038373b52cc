"""`adamba quickstart`: the whole pipeline on a built-in corpus, in minutes on a CPU."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> None:
    from adamba.quickstart import quickstart

    report = quickstart(
        out=args.out,
        minutes=args.minutes,
        data=args.data,
        config=args.config,
        overrides=args.set or [],
        progress=not args.no_progress,
        curate_preset=args.curate,
        overwrite=args.overwrite,
    )
    print(f"report: {report}")


def register(sub) -> None:
    q = sub.add_parser("quickstart", help="the whole pipeline on a built-in corpus, in minutes on a CPU")
    q.add_argument("--out", default="runs/quickstart", help="output directory")
    q.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    q.add_argument(
        "--data", action="append", help="your own text/JSONL files or folders instead of the stdlib corpus"
    )
    q.add_argument("--config", default="tiny-cpu", help="model/training preset")
    q.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    q.add_argument(
        "--curate",
        choices=["code", "web", "dedup"],
        help="curation preset (default: code for the stdlib corpus, dedup for --data)",
    )
    q.add_argument(
        "--overwrite", action="store_true", help="replace an earlier quickstart run in --out (deletes it)"
    )
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=run)
