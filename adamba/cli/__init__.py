"""The `adamba` command: one module per command group, each with `register(subparsers)` that adds
its parser and a handler. Handlers are thin: parse, call the package's function, print.

A user mistake (AdambaError) prints one line and exits 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from adamba.cli import (
    chat,
    data,
    estimate,
    evaluate,
    grow,
    hf,
    notebook,
    phases,
    quickstart,
    sample,
    serve,
    surgery,
    tool,
    train,
    trm,
)
from adamba.errors import AdambaError

GROUPS = (
    train,
    trm,
    phases,
    estimate,
    sample,
    chat,
    serve,
    evaluate,
    surgery,
    tool,
    hf,
    quickstart,
    grow,
    notebook,
    data,
)  # the order `adamba --help` lists them in


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adamba", description="Train small, efficient, adaptive language models."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AdambaError as e:
        print(f"adamba: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("adamba: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `adamba data inspect ... | head`: the reader left; so do we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(141)
