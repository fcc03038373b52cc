"""`adamba grow`: the original Adamba plan's route in miniature, one command on a CPU.

The plan grows a model instead of training it from scratch: a trained transformer gets new Mamba2
layers (inject-mamba), the new layers train alone (phase 1), then everything trains with
Matryoshka widths and early-exit gates (phase 2), the model is widened (phase 3 trains the
widened weights). Here each step is the same code the commands run (adamba train with
train.init_from, adamba surgery inject-mamba / widen) on the stdlib corpus quickstart uses:

  data -> dense -> inject -> mamba (@M) -> matryoshka + gates -> widen -> widened + gates

The phases come from a preset (grow-tiny: [[phase]] tables named dense, mamba, matryoshka,
gates, widened, regates). Held-out bits per byte is measured after every step on the same
batches, so the table shows what each surgery cost (nothing: the logits are unchanged) and what
each phase bought; the compute modes (ghost ... auto) are scored at the end. Every stage writes
its result into grow.json as it finishes; a rerun skips the stages already done.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from rich.console import Console

from adamba.checkpoint import load_model, read_checkpoint
from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.quickstart import held_out_bpb, prepare_data
from adamba.surgery.inject import inject_checkpoint
from adamba.surgery.widen import widen_checkpoint
from adamba.train import trainer

# training runs: (run name, the preset's phases it trains, elastic heads on)
RUNS = {"dense": (["dense"], False), "phase12": (["mamba", "matryoshka", "gates"], True)}
RUNS["widened"] = (["widened", "regates"], True)


def _log(out: Path) -> dict:
    f = out / "grow.json"
    return json.loads(f.read_text()) if f.is_file() else {"stages": {}}


def _save(out: Path, log: dict) -> None:
    tmp = out / "grow.json.tmp"
    tmp.write_text(json.dumps(log, indent=2))
    tmp.replace(out / "grow.json")


def _train(cfg, name: str, out: Path, init_from: Path | None, progress: bool):
    """One training run of the preset's phases RUNS[name], from `init_from`'s weights (and its
    model config: the surgery changed the shape)."""
    names, elastic = RUNS[name]
    c = copy.deepcopy(cfg)
    by_name = {p.name: p for p in c.phase}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise AdambaError(f"the grow preset needs [[phase]] tables named {', '.join(missing)}")
    c.phase = [by_name[n] for n in names]
    c.elastic.enabled = elastic
    if init_from is not None:
        c.model = copy.deepcopy(read_checkpoint(init_from).cfg.model)
        c.train.init_from = str(init_from)
    c.run.out_dir = str(out / name)
    c.run.progress = progress
    trainer.run(c, overwrite=True)
    return out / name


def grow(
    out: str | Path = "runs/grow",
    config: str = "grow-tiny",
    overrides: list[str] | None = None,
    widen_to: int = 96,
    data: list[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    max_corpus_mb: float = 8.0,
) -> Path:
    """Run the route into `out`; returns grow.json. Stages already in grow.json are skipped
    (a rerun resumes), unless `overwrite`."""
    out = Path(out)
    cfg = load_config(config, overrides)
    if widen_to <= cfg.model.d_model:
        raise AdambaError(f"--widen-to {widen_to} must exceed the preset's model.d_model={cfg.model.d_model}")
    console = Console(stderr=True, quiet=not progress)
    if overwrite and (out / "grow.json").exists():
        (out / "grow.json").unlink()
    out.mkdir(parents=True, exist_ok=True)
    log = _log(out)
    stages = log["stages"]
    t0 = time.time()

    def measure(name: str, run: Path, widths=(1.0,), **extra) -> None:
        model, tok, ck = load_model(run)
        row = {"run": str(run), "params": model.num_params(), "pattern": model.cfg.pattern}
        row["d_model"] = model.cfg.d_model
        b, s = cfg.train.batch_size, cfg.data.seq_len
        for w in widths:
            row[f"bpb@{w:g}"] = held_out_bpb(model, tok, Path(log["val"]), b, s, max_batches=20, width=w)[
                "bpb"
            ]
        row.update(extra, seconds=round(time.time() - t0, 1))
        stages[name] = row
        _save(out, log)
        console.print(
            f"[bold]{name}[/]: bpb {row['bpb@1']:.4f}, {row['params']:,} params, pattern {row['pattern']}"
        )

    if "val" not in log:
        console.print("[bold]data[/] (the quickstart corpus)")
        prep = prepare_data(out, data, cfg.model.vocab_size, max_corpus_mb, None, console, steps=3)
        log.update(tokenizer=str(prep.tokenizer), train=str(prep.train), val=str(prep.val))
        _save(out, log)
    cfg.data.train, cfg.data.val, cfg.data.tokenizer = [log["train"]], [log["val"]], log["tokenizer"]
    widths = tuple(cfg.elastic.widths)

    if "dense" not in stages:
        console.print("[bold]dense[/]: a small transformer (stands in for the pretrained one)")
        measure("dense", _train(cfg, "dense", out, None, progress))
    if "inject" not in stages:
        inject_checkpoint(stages["dense"]["run"], str(out / "inject"), overwrite=True)
        measure("inject", out / "inject", surgery="inject-mamba")
    if "phase12" not in stages:
        console.print("[bold]phase 1 + 2[/]: the Mamba2 layers alone, then everything with widths + gates")
        measure("phase12", _train(cfg, "phase12", out, out / "inject", progress), widths)
    if "widen" not in stages:
        widen_checkpoint(stages["phase12"]["run"], str(out / "widen"), widen_to, overwrite=True)
        measure("widen", out / "widen", widths, surgery="widen")
    if "widened" not in stages:
        console.print(f"[bold]phase 3[/]: the widened model (d_model {widen_to}) with widths + gates")
        measure("widened", _train(cfg, "widened", out, out / "widen", progress), widths)
    if "modes" not in log:
        from adamba.eval.efficiency import efficiency_lines

        model, tok, ck = load_model(stages["widened"]["run"])
        log["modes"] = efficiency_lines(model, tok, ck, [log["val"]], 8)  # hybrids decode one by one
        log["total_seconds"] = round(time.time() - t0, 1)
        _save(out, log)
    for line in log["modes"]:
        console.print(line)
    return out / "grow.json"
