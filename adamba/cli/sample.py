"""`adamba sample`: generate text from a checkpoint, plain or under a compute mode."""

from __future__ import annotations

import argparse
import sys

from adamba.errors import AdambaError
from adamba.model.elastic import MODES


def run(args: argparse.Namespace) -> None:
    from adamba.checkpoint import load_model
    from adamba.serve.generate import check_generate_args, generate_text

    if args.num_samples < 1:  # every flag is checked before the checkpoint is read
        raise AdambaError(f"--num-samples {args.num_samples} must be >= 1")
    check_generate_args(args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed)
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


def register(sub) -> None:
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
        choices=MODES,
        help="compute mode of a Matryoshka-trained checkpoint (default: plain full model)",
    )
    s.set_defaults(func=run)
