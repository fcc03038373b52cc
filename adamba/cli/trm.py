"""`adamba trm train|eval`: route B, the Tiny Recursive Model on Sudoku, mazes and ARC."""

from __future__ import annotations

import argparse

from adamba.cli.train import add_run_flags, run_overrides


def _print_eval(ev, n_sup: int) -> None:
    steps = " ".join(f"{i + 1}:{a:.3f}" for i, a in enumerate(ev.acc_by_step))
    print(f"exact accuracy {ev.exact:.4f} on {ev.n} puzzles after {n_sup} supervision steps")
    print(f"by supervision step: {steps}")
    print(
        f"halting head: stops at step {ev.halt_steps:.2f} on average (accuracy there {ev.halt_acc:.4f}, "
        f"{ev.compute_saved:.0%} of the steps saved; q agrees with correctness {ev.q_acc:.0%})"
    )


def train(args: argparse.Namespace) -> None:
    from adamba.trm.config import load_trm_config
    from adamba.trm.train import run

    cfg = load_trm_config(args.config, run_overrides(args))
    res = run(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"trained {res.steps} steps, {res.params:,} parameters, {res.seconds:.0f}s -> {res.run_dir}")
    if res.eval is not None:
        _print_eval(res.eval, cfg.model.n_sup)


def evaluate(args: argparse.Namespace) -> None:
    from adamba.trm.evaluate import run_eval

    ev, cfg, extra = run_eval(args.ckpt, args.task, list(args.set or []), args.device, args.limit)
    _print_eval(ev, cfg.model.n_sup)
    for line in extra:
        print(line)


def register(sub) -> None:
    p = sub.add_parser(
        "trm",
        help="route B: train or evaluate a Tiny Recursive Model (Sudoku, mazes, ARC)",
        description="The Tiny Recursive Model: one small network applied recursively with deep "
        "supervision and a halting head (adamba/trm).",
    )
    s = p.add_subparsers(dest="trm_command", required=True)
    t = s.add_parser("train", help="train a TRM from a TOML config (e.g. trm-sudoku-cpu)")
    add_run_flags(t, "trm-sudoku-cpu", "model.n=4 or task.options.n=2000")
    t.set_defaults(func=train)
    e = s.add_parser("eval", help="exact accuracy (pass@2 on ARC) of a trained TRM, per supervision step")
    e.add_argument("--ckpt", required=True, help="run directory or checkpoint folder of `adamba trm train`")
    e.add_argument("--task", choices=["sudoku", "maze", "arc"], help="the task (default: the one trained on)")
    e.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override the test split's options or the step count, e.g. task.test_options.n=200 or model.n_sup=8",
    )
    e.add_argument("--limit", type=int, default=0, help="evaluate only the first N puzzles (0 = all)")
    e.add_argument("--device", default="cpu", help="cpu or cuda")
    e.set_defaults(func=evaluate)
