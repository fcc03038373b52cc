"""`adamba chat`: talk to a checkpoint in the terminal (the chat template, streamed replies)."""

from __future__ import annotations

import argparse

from adamba.errors import AdambaError
from adamba.model.elastic import MODES


def run(args: argparse.Namespace) -> None:
    from adamba.checkpoint import load_model
    from adamba.serve.chat import ChatSession, check_mode, repl
    from adamba.serve.generate import check_generate_args

    check_generate_args(args.system, args.max_new_tokens, args.temperature, args.top_k, args.seed)
    model, tokenizer, _ = load_model(args.ckpt, args.tokenizer)
    if args.mode is not None:
        check_mode(model, args.mode)  # a dense checkpoint: one line, before the first prompt
    if args.max_new_tokens >= model.cfg.max_seq_len:
        raise AdambaError(
            f"--max-new-tokens {args.max_new_tokens} leaves no room for the conversation: the model reads "
            f"{model.cfg.max_seq_len} tokens"
        )
    session = ChatSession(
        model,
        tokenizer,
        system=args.system,
        mode=args.mode,
        temperature=args.temperature,
        top_k=args.top_k or None,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    repl(session)


def register(sub) -> None:
    c = sub.add_parser(
        "chat",
        help="talk to a checkpoint in the terminal (streamed replies, history, /reset, --mode)",
        description="A terminal chat through the chat template the model is trained with "
        "(adamba/data/template.py). The conversation is kept and re-rendered for every reply; the "
        "oldest exchanges are dropped when it outgrows the model's context. Type /reset to forget "
        "it, /mode NAME to switch compute mode, /exit or Ctrl-D to leave; Ctrl-C stops a reply.",
    )
    c.add_argument("--ckpt", required=True, help="run directory or checkpoint folder")
    c.add_argument("--system", default="", help="a system message that opens the conversation")
    c.add_argument("--mode", choices=MODES, help="compute mode of a Matryoshka-trained checkpoint")
    c.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens")
    c.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    c.add_argument("--top-k", type=int, default=50, help="0 = no top-k filtering")
    c.add_argument("--seed", type=int, default=0, help="replies are reproducible for a seed")
    c.add_argument("--tokenizer", help="tokenizer.json (default: the checkpoint's own)")
    c.set_defaults(func=run)
