"""`adamba phases`: print a run's phase plan (what each phase trains, for how long, on what) before
spending any compute on it."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> None:
    from adamba.config import load_config
    from adamba.train.phases import describe

    cfg = load_config(args.config, list(args.set or []))
    tok = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    if tok is not None and tok.exists():  # the vocabulary adamba train will build, not the default
        from adamba.data.tokenizer import Tokenizer

        rows = cfg.model.vocab_size if cfg.train.init_from else 0  # as Trainer.build sizes it
        cfg.model.vocab_size = Tokenizer.load(tok).model_rows(rows)
    print("\n".join(describe(cfg)))


def register(sub) -> None:
    p = sub.add_parser(
        "phases",
        help="print a config's phase plan: per phase its objective, steps, tokens, trainable/frozen counts, data",
        description="Print the phases a config trains in order ([[phase]] tables, or the implicit "
        "single `lm` phase; `elastic` + `gate-calibration` with elastic.enabled), with the parameter "
        "counts each one trains and freezes (at the vocabulary size of data.tokenizer when it exists). Nothing "
        "is trained and no data is read.",
    )
    p.add_argument("--config", required=True, help="TOML file or preset name (e.g. plan-tiny)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)"
    )
    p.set_defaults(func=run)
