"""`adamba surgery ...`: grow a trained checkpoint without changing what it computes."""

from __future__ import annotations

import argparse
import json

from adamba.errors import AdambaError


def parse_at(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AdambaError(f"--at {text!r}: give block indices separated by commas, e.g. --at 1,3") from None


def inject(args: argparse.Namespace) -> None:
    from adamba.surgery.inject import inject_checkpoint

    kind = getattr(args, "kind", "M")
    path = inject_checkpoint(args.ckpt, args.out, parse_at(args.at), args.overwrite, kind)
    rec = json.loads((path.parent.parent / "surgery.json").read_text())
    print(
        f"{rec['surgery']}: {rec['params_before']:,} -> {rec['params_after']:,} params, pattern {rec['pattern']}, "
        f"new blocks {rec['new_blocks']}, max |logit change| {rec['max_abs_logit_diff']:.1e} -> {path}\n"
        f"train the new layers: adamba train --config ... --set train.init_from={args.out} "
        f'--set model.pattern={rec["pattern"]} --set model.n_layer={len(rec["pattern"])} (phase train = ["@{kind}"])'
    )


def widen(args: argparse.Namespace) -> None:
    from adamba.surgery.widen import widen_checkpoint

    path = widen_checkpoint(args.ckpt, args.out, args.d_model, args.mlp_hidden, args.noise, args.overwrite)
    rec = json.loads((path.parent.parent / "surgery.json").read_text())
    (d, D), (h, H) = rec["d_model"], rec["mlp_hidden"]
    heads = ""
    if "n_head" in rec:
        heads = f", heads {rec['n_head'][0]} -> {rec['n_head'][1]} (KV {rec['n_kv_head'][0]} -> {rec['n_kv_head'][1]})"
    sets = " ".join(f"--set {s}" for s in rec["set"])
    print(
        f"widen ({rec['method']}): d_model {d} -> {D}{heads}, MLP {h} -> {H} ({rec['mlp_method']}), "
        f"{rec['params_before']:,} -> {rec['params_after']:,} params, max |logit change| "
        f"{rec['max_abs_logit_diff']:.1e} -> {path}\n"
        f"train it: adamba train --config ... --set train.init_from={args.out} {sets}"
    )


def chat_tokens(args: argparse.Namespace) -> None:
    from adamba.surgery.chat_tokens import chat_tokens_checkpoint

    path = chat_tokens_checkpoint(args.ckpt, args.out, args.overwrite)
    rec = json.loads((path.parent.parent / "surgery.json").read_text())
    (v0, v1), ids = rec["vocab_size"], sorted(rec["added"].values())
    print(
        f"chat-tokens: added {len(ids)} special tokens (ids {ids[0]}..{ids[-1]}), vocabulary rows {v0} -> {v1} "
        f"({rec['rows']}); old tokens' logits identical, max |log-prob change| "
        f"{rec['max_abs_logprob_change']:.1e} -> {path}\n"
        f"chat data for it: adamba data chat FILE --tokenizer {path} --out DIR; then adamba train ... "
        f"--set train.init_from={args.out} --set data.tokenizer={path}/tokenizer.json"
    )


def register(sub) -> None:
    s = sub.add_parser(
        "surgery",
        help="grow a checkpoint without changing its function: inject Mamba2 layers, deepen, widen, add chat tokens",
    )
    sub = s.add_subparsers(dest="surgery_command", required=True, metavar="COMMAND")
    i = sub.add_parser(
        "inject-mamba",
        help="insert Mamba2 layers whose output starts at zero (the logits stay the same)",
        description="Insert a Mamba2 layer after each of the given blocks. The new layers' output "
        "projections start at zero, so the grown model computes exactly what the old one did (checked "
        'on a batch before anything is written); train them with a phase of train = ["@M"]. Writes '
        "OUT/checkpoints/step_000000 (with the tokenizer) and OUT/surgery.json.",
    )
    i.add_argument(
        "--ckpt", required=True, help="run directory or checkpoint folder (a model without elastic heads)"
    )
    i.add_argument("--out", required=True, help="run directory for the grown checkpoint")
    i.add_argument("--at", help="block indices to insert after, e.g. 1,3 (default: after every second block)")
    i.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    i.set_defaults(func=inject)
    d = sub.add_parser(
        "deepen",
        help="insert identity-initialised blocks (attention, Mamba2 or KDA): the logits stay the same",
        description="Insert a block of --kind after each of the given blocks, its output projections "
        "at zero so the deeper model computes what the old one did (checked before writing).",
    )
    d.add_argument("--ckpt", required=True, help="run directory or checkpoint folder")
    d.add_argument("--out", required=True, help="run directory for the deeper checkpoint")
    d.add_argument("--kind", choices=["A", "M", "K"], default="A", help="the new blocks' mixer (default A)")
    d.add_argument("--at", help="block indices to insert after (default: after every second block)")
    d.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    d.set_defaults(func=inject)
    w = sub.add_parser(
        "widen",
        help="grow d_model, heads, MLP/expert widths and Mamba2 heads (the logits stay the same)",
        description="Widen a model to --d-model (and the MLP to --mlp-hidden) without changing what it "
        "computes (checked on a batch before anything is written). A multiple of the current d_model "
        "copies the residual stream, heads, units and Mamba2 heads (HyperCloning; readers divided by the "
        "copies); any other width appends zero stream dims and new heads/units whose output starts at zero "
        "(norm gains x sqrt(old/new), model.norm_eps x old/new, so every norm keeps its values). Old heads "
        "and units stay the first slice. Writes OUT/checkpoints/step_000000 (with the tokenizer) and "
        "OUT/surgery.json, whose `set` list holds the --set overrides a run from it needs. Not for models "
        "with elastic heads or KDA layers.",
    )
    w.add_argument(
        "--ckpt", required=True, help="run directory or checkpoint folder (a model without elastic heads)"
    )
    w.add_argument("--out", required=True, help="run directory for the widened checkpoint")
    w.add_argument(
        "--d-model",
        type=int,
        required=True,
        metavar="N",
        help="new d_model, >= the current one (a multiple duplicates; e.g. 2048 -> 2560 zero-grows)",
    )
    w.add_argument(
        "--mlp-hidden",
        type=int,
        metavar="N",
        help="new MLP hidden width (default: grows with d_model; a multiple of the current one duplicates "
        "units, anything larger appends zero-output units)",
    )
    w.add_argument(
        "--noise",
        type=float,
        default=0.0,
        metavar="X",
        help="break the symmetry of copies: noise of X x std(weight) on the weights reading them, summing "
        "to zero over the copies (the function is unchanged; default 0)",
    )
    w.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    w.set_defaults(func=widen)
    c = sub.add_parser(
        "chat-tokens",
        help="give an imported checkpoint adamba's chat tokens (<|user|>, <|end|>, tool calls ...)",
        description="Append the chat tokens an imported (Hugging Face) tokenizer lacks as special tokens "
        "(old ids and encodings unchanged) and give the model rows for them: padding rows where the "
        "embedding has them, else new rows at the mean of the old ones. The old tokens' logits stay bit for "
        "bit (checked before writing); their probabilities shift by the new tokens' small share (measured, "
        "in surgery.json). Then chat, SFT data, GRPO and --tools work on the model. Writes "
        "OUT/checkpoints/step_000000 (with the extended tokenizer) and OUT/surgery.json.",
    )
    c.add_argument(
        "--ckpt", required=True, help="run directory or checkpoint folder with an imported tokenizer"
    )
    c.add_argument("--out", required=True, help="run directory for the checkpoint with chat tokens")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    c.set_defaults(func=chat_tokens)
