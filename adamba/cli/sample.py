"""`adamba sample`: generate text from a checkpoint, plain or under a compute mode."""

from __future__ import annotations

import argparse
import json
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
    if args.tools:
        return _with_tools(args, model, tokenizer)
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


def _with_tools(args: argparse.Namespace, model, tokenizer) -> None:
    """The prompt as a user turn offered the tools; the model's turns, its tool calls and their
    results (run in the sandbox) printed as they happen."""
    from adamba.data.chat import Message
    from adamba.data.template import render
    from adamba.tools import default_registry
    from adamba.tools.loop import generate_with_tools

    if args.mode is not None:
        raise AdambaError("--tools decodes at full width: drop --mode")
    if not tokenizer.has_chat:
        raise AdambaError(
            "--tools needs adamba's chat tokens, which this imported tokenizer lacks (adamba surgery chat-tokens)"
        )
    tools = default_registry()
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    unknown = [n for n in names if n not in tools]
    if unknown or not names:
        raise AdambaError(f"--tools {args.tools!r}: choose from {', '.join(tools.names())}")
    prompt = render(tokenizer, [Message("user", args.prompt)], tools.specs(names)).ids
    for i in range(args.num_samples):
        r = generate_with_tools(
            model,
            tokenizer,
            prompt,
            tools,
            args.max_new_tokens,
            args.temperature,
            args.top_k or None,
            args.seed + i,
        )
        lines = [f"user: {args.prompt}"]
        for m in r.messages:
            if m.role == "tool":
                lines.append(f"[tool result] {m.content}")
                continue
            if m.content:
                lines.append(f"assistant: {m.content}")
            lines += [f"[tool call] {c.name}({json.dumps(c.arguments)})" for c in m.tool_calls]
        if not r.ended:
            lines.append(f"[stopped at --max-new-tokens {args.max_new_tokens}]")
        sys.stdout.write("\n".join(lines) + "\n" + ("-" * 40 + "\n" if i + 1 < args.num_samples else ""))


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
    s.add_argument(
        "--tools",
        metavar="NAMES",
        help="e.g. calculator,python: the prompt becomes a user turn offered these tools; the model's tool "
        "calls are run (python in the sandbox) and their results fed back until it answers",
    )
    s.set_defaults(func=run)
