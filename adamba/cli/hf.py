"""`adamba import hf` and `adamba export hf`: transformers checkpoints in and out."""

from __future__ import annotations

import argparse
import json


def do_import(args: argparse.Namespace) -> None:
    from adamba.hf.convert import import_hf

    path = import_hf(args.dir, args.out, args.overwrite, args.tokenizer)
    rec = json.loads((path.parent.parent / "import.json").read_text())
    print(
        f"imported {rec['import']} ({rec['params']:,} params, pattern {rec['pattern']}, tokenizer of "
        f"{rec['tokenizer_vocab']:,} tokens) -> {path}\n"
        f'try it: adamba sample --ckpt {args.out} --prompt "..."'
    )


def do_export(args: argparse.Namespace) -> None:
    from adamba.hf.convert import export_hf

    dst = export_hf(args.ckpt, args.out, args.overwrite, check=not args.no_check)
    rec = json.loads((dst / "adamba_export.json").read_text())
    checked = (
        f", logits equal to adamba's within {rec['max_abs_logit_diff']:.1e}"
        if "max_abs_logit_diff" in rec
        else ""
    )
    print(
        f"exported as {rec['export']} ({rec['params']:,} params{checked}) -> {dst}\n"
        f"load it: AutoModelForCausalLM.from_pretrained({str(dst)!r}), AutoTokenizer.from_pretrained(...)"
    )


def register(sub) -> None:
    i = sub.add_parser("import", help="import a Hugging Face transformers checkpoint as an adamba run")
    isub = i.add_subparsers(dest="import_command", required=True, metavar="FORMAT")
    h = isub.add_parser(
        "hf",
        help="a transformers model folder: Llama, Mistral, Qwen3, Mamba2, Bamba, GPT-OSS",
        description="Read a transformers model folder (config.json, model.safetensors or shards, "
        "tokenizer.json + tokenizer_config.json) and write an adamba run directory with checkpoint "
        "step 0, usable by sample, eval, chat, serve and train.init_from. Every source weight must be "
        "used, or nothing is written. GPT-2 is refused (learned positions, LayerNorm, GELU).",
    )
    h.add_argument("dir", help="the model folder (e.g. from huggingface-cli download or save_pretrained)")
    h.add_argument("--out", required=True, help="run directory to write")
    h.add_argument("--tokenizer", help="a tokenizer.json (with its tokenizer_config.json) if DIR has none")
    h.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    h.set_defaults(func=do_import)

    e = sub.add_parser("export", help="export an adamba checkpoint for Hugging Face transformers")
    esub = e.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    h = esub.add_parser(
        "hf",
        help="a folder AutoModelForCausalLM loads: Llama / Mistral / Qwen3, Mamba2, Bamba or GPT-OSS",
        description="Write the transformers architecture that computes the same function: dense models "
        "to Llama (Qwen3 with QK-norm, Mistral with a sliding window; a ReLU^2 MLP as a relu-gated one "
        "with gate = up), Mamba2-only models to Mamba2, attention + Mamba2 hybrids to Bamba where it "
        "fits (no QK-norm, SwiGLU), attention + MoE models to GPT-OSS; KDA and what does not fit are refused with the reason. The folder is "
        "loaded back with transformers and its logits compared with adamba's before it is kept "
        "(needs transformers: pip install 'adamba[hf]').",
    )
    h.add_argument("ckpt", help="run directory or checkpoint folder")
    h.add_argument("--out", required=True, help="folder to write")
    h.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    h.add_argument("--no-check", action="store_true", help="skip loading the export back (large models)")
    h.set_defaults(func=do_export)
