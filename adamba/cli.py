"""The `adamba` command. Thin: parse arguments, call the package's functions, print results.

A user mistake (AdambaError) prints one line and exits 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import sys


def cmd_train(args: argparse.Namespace) -> None:
    from adamba.config import load_config
    from adamba.train.trainer import run

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    if args.no_progress:
        overrides.append("run.progress=false")
    cfg = load_config(args.config, overrides)
    res = run(cfg, resume=args.resume)
    val = f", val loss {res.val['loss']:.4f}, val bpb {res.val['bpb']:.4f}" if res.val else ""
    print(
        f"trained {res.steps} steps, {res.tokens_seen:,} tokens, {res.tokens_per_s:,.0f} tok/s{val} -> {res.run_dir}"
    )


def cmd_sample(args: argparse.Namespace) -> None:
    from adamba.checkpoint import load_model
    from adamba.serve.generate import generate_text

    if args.max_new_tokens < 1:
        from adamba.errors import AdambaError

        raise AdambaError("--max-new-tokens must be >= 1")
    model, tokenizer, _ = load_model(args.ckpt, args.tokenizer)
    if args.mode is not None:
        from adamba.model.elastic import mode_policy, model_ecfg

        mode_policy(args.mode, model, model_ecfg(model))  # bad mode / dense checkpoint: fail first
    for i in range(args.num_samples):
        sys.stdout.write(args.prompt)
        stats: dict = {}
        for piece in generate_text(
            model,
            tokenizer,
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k or None,
            args.seed + i,
            mode=args.mode,
            stats=stats,
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
        if stats:
            print(
                f"\n[{args.mode}: {stats['tokens']} steps, FLOPs/token {stats['flops_rel']:.2f} of full, "
                f"early exit {stats['exit_rate']:.0%}, expanded {stats['expand_rate']:.0%}, "
                f"KV {stats['kv_bytes']:,} B of {stats['kv_bytes_full']:,} B at full width]",
                file=sys.stderr,
            )
        sys.stdout.write("\n" + ("-" * 40 + "\n" if i + 1 < args.num_samples else ""))


def cmd_eval(args: argparse.Namespace) -> None:
    from adamba.eval.run import run_eval

    for line in run_eval(args.ckpt, args.tasks.split(","), args.data, args.batches, args.decode_batch):
        print(line)


def cmd_quickstart(args: argparse.Namespace) -> None:
    from adamba.quickstart import quickstart

    report = quickstart(
        out=args.out,
        minutes=args.minutes,
        data=args.data,
        config=args.config,
        overrides=args.set or [],
        progress=not args.no_progress,
        curate_preset=args.curate,
    )
    print(f"report: {report}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adamba", description="Train small, efficient, adaptive language models."
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a TOML config")
    t.add_argument("--config", required=True, help="TOML file or preset name (e.g. tiny-cpu)")
    t.add_argument("--out", help="run directory (overrides run.out_dir)")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument(
        "--resume", action="store_true", help="continue from the run directory's latest checkpoint"
    )
    t.add_argument("--no-progress", action="store_true", help="no live progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a checkpoint")
    s.add_argument("--ckpt", required=True, help="run directory or checkpoint folder")
    s.add_argument("--prompt", default="", help="text to continue")
    s.add_argument("--max-new-tokens", type=int, default=128)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=50, help="0 = no top-k filtering")
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tokenizer", help="tokenizer.json (default: the checkpoint's own)")
    s.add_argument(
        "--mode",
        choices=["ghost", "whisper", "normal", "think", "auto"],
        help="compute mode of a Matryoshka-trained checkpoint (default: plain full model)",
    )
    s.set_defaults(func=cmd_sample)

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
    e.set_defaults(func=cmd_eval)

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
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_quickstart)

    try:
        from adamba.data.commands import register
    except ImportError:
        pass
    else:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    from adamba.errors import AdambaError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AdambaError as e:
        print(f"adamba: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("adamba: interrupted", file=sys.stderr)
        sys.exit(130)
