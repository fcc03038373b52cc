"""`adamba eval`: run named evaluation tasks on a checkpoint (or on every checkpoint of a run)
and return printable lines; with an output folder, also results.json and a markdown report card
(and, for a whole run, a plot of each score against the training step)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from adamba.checkpoint import load_model
from adamba.data.loader import TokenLoader
from adamba.errors import AdambaError
from adamba.eval import report
from adamba.eval.bpb import evaluate_bpb
from adamba.eval.efficiency import efficiency_lines

MC_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "mc")
TASKS = ("bpb", "efficiency", *MC_TASKS, "gsm8k", "arc_agi")


def split_data(tasks: list[str], data: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """--data items: TASK=PATH names a task's file; a bare path is the bpb manifests, or the
    file of the one task that reads one."""
    plain, named = [], {}
    for d in data or []:
        name, sep, path = d.partition("=")
        if sep and (name in TASKS or name == "gsm8k_train"):
            named[name] = path
        else:
            plain.append(d)
    readers = [t for t in tasks if t in MC_TASKS or t == "gsm8k"]
    if plain and readers:
        if "bpb" in tasks or len(readers) > 1 or len(plain) > 1:
            raise AdambaError(
                f"--data {plain[0]} is ambiguous with tasks {', '.join(tasks)}: write --data TASK=PATH"
            )
        named[readers[0]] = plain.pop()
    if "mc" in tasks and "mc" not in named:
        raise AdambaError(
            "task mc reads a local file: --data mc=PATH.jsonl ({question, choices, answer} per line)"
        )
    for name, path in named.items():
        if not Path(path).is_file():
            raise AdambaError(f"--data {name}={path}: no such file")
    return plain, named


class Progress:
    """A rich progress bar on a terminal, nothing otherwise."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as P

            self.bar = P(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), transient=True
            )
            self.bar.start()

    def task(self, name: str, total: int):
        if self.bar is None:
            return None
        t = self.bar.add_task(name, total=total)
        return lambda n: self.bar.advance(t, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def score_tasks(
    model,
    tokenizer,
    tasks: list[str],
    named: dict[str, str],
    limit: int | None,
    fewshot: int,
    progress: bool,
    chat: bool = False,
) -> tuple[list[report.Score], dict]:
    """The report-card tasks (multiple choice, GSM8K, ARC-AGI) on a loaded model, with a progress
    bar on a terminal; `chat`: ask through the chat template (multiple choice as a question with
    lettered options; GSM8K as turns), for chat-tuned models."""
    bar = Progress(progress)
    try:
        return _score_tasks(model, tokenizer, tasks, named, limit, fewshot, bar, chat)
    finally:
        bar.close()


def _score_tasks(model, tokenizer, tasks, named, limit, fewshot, bar: Progress, chat: bool):
    from adamba.eval.tasks import mc, records

    scores, samples = [], {}
    for t in tasks:
        if t in MC_TASKS:
            its = mc.items(t, records(t, named.get(t)))[:limit]
            if not its:
                raise AdambaError(f"task {t}: no items")
            tick = bar.task(t, sum(len(i.choices) for i in its))
            if chat:
                scores.append(mc.score_letters(t, model, tokenizer, its, progress=tick))
            else:
                scores += mc.score(t, model, tokenizer, its, progress=tick)
        elif t == "gsm8k":
            from adamba.eval.tasks import gsm8k

            recs = records("gsm8k", named.get("gsm8k"))
            if "gsm8k_train" in named or "gsm8k" not in named:
                shots = records("gsm8k_train", named.get("gsm8k_train"))[:fewshot]
            else:  # one local file: its first items are the examples, the rest are scored
                shots, recs = recs[:fewshot], recs[fewshot:]
            recs = recs[:limit]
            if not recs:
                raise AdambaError("task gsm8k: no items left to score")
            s, rows = gsm8k.score(
                model, tokenizer, recs, shots, progress=bar.task("gsm8k", len(recs)), chat=chat
            )
            scores.append(s)
            samples["gsm8k"] = rows
        elif t == "arc_agi":
            from adamba.eval.tasks import arc_agi

            agi = arc_agi.load("eval")[:limit]
            s, rows = arc_agi.score(model, tokenizer, agi, progress=bar.task("arc_agi", len(agi)))
            scores.append(s)
            samples["arc_agi"] = rows
    return scores, samples


def run_eval(
    ckpt_path: str,
    tasks: list[str],
    data: list[str] | None = None,
    batches: int = 50,
    decode_batch: int = 1,
    limit: int | None = None,
    fewshot: int = 5,
    out: str | None = None,
    progress: bool = True,
    chat: bool = False,
) -> list[str]:
    """Every argument is checked before the checkpoint is read (named as `adamba eval`'s flags):
    0 batches would score nothing and print a bits/byte of 0."""
    tasks = check_args(tasks, batches, decode_batch, limit, fewshot)
    plain, named = split_data(tasks, data)
    model, tokenizer, ckpt = load_model(ckpt_path)
    lines = [f"checkpoint {ckpt.path} (step {ckpt.state.get('step', '?')}, {model.num_params():,} params)"]
    meta: dict = {"checkpoint": str(ckpt.path), "step": ckpt.state.get("step")}
    if "bpb" in tasks:
        res = bpb(model, tokenizer, ckpt, plain, batches)
        meta["bpb"] = res
        lines.append(
            f"bpb: val loss {res['loss']:.4f}  bits/byte {res['bpb']:.4f}  ({res['tokens']:,} tokens)"
        )
    if "efficiency" in tasks:
        lines += efficiency_lines(model, tokenizer, ckpt, plain or None, batches, decode_batch)
    scores, samples = score_tasks(model, tokenizer, tasks, named, limit, fewshot, progress, chat)
    if scores:
        lines += report.markdown(scores, f"adamba eval: {ckpt.path}").splitlines()[2:]
    if out is not None:
        j, m = report.write(Path(out), scores, f"adamba eval: {ckpt.path}", meta)
        if samples:
            (Path(out) / "samples.json").write_text(json.dumps(samples, indent=1))
        lines.append(f"-> {j}, {m}")
    return lines


def check_args(
    tasks: list[str], batches: int, decode_batch: int, limit: int | None, fewshot: int
) -> list[str]:
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise AdambaError(f"--tasks is empty; available: {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise AdambaError(f"unknown eval task(s) {', '.join(unknown)}; available: {', '.join(TASKS)}")
    if batches < 1:
        raise AdambaError(f"--batches {batches} must be >= 1")
    if decode_batch < 1:
        raise AdambaError(f"--decode-batch {decode_batch} must be >= 1")
    if limit is not None and limit < 1:
        raise AdambaError(f"--limit {limit} must be >= 1")
    if fewshot < 0:
        raise AdambaError(f"--fewshot {fewshot} must be >= 0")
    return tasks


def bpb(model, tokenizer, ckpt, data: list[str], batches: int) -> dict:
    val = data or ckpt.cfg.data.val
    if not val:
        raise AdambaError("no validation data: pass --data MANIFEST (the run has no data.val)")
    loader = TokenLoader(
        val,
        ckpt.cfg.train.batch_size,
        ckpt.cfg.data.seq_len,
        seed=0,
        tokenizer_fingerprint=tokenizer.fingerprint(),
    )
    tb = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.long)
    try:
        return evaluate_bpb(model, (next(loader) for _ in range(batches)), tb)
    finally:
        loader.close()  # stop its prefetch thread now, not at interpreter exit


def run_every(
    run_dir: str,
    tasks: list[str],
    data: list[str] | None = None,
    batches: int = 50,
    limit: int | None = None,
    fewshot: int = 5,
    out: str | None = None,
    progress: bool = True,
    chat: bool = False,
) -> list[str]:
    """Every checkpoint of a run directory (checkpoints/step_N), in step order: one report-card
    row per checkpoint and task, and a plot of each score (and bits/byte) against the step."""
    tasks = check_args(tasks, batches, 1, limit, fewshot)
    if "efficiency" in tasks:
        raise AdambaError("--every runs bpb and the report-card tasks; run efficiency on one checkpoint")
    plain, named = split_data(tasks, data)
    root = Path(run_dir) / "checkpoints"
    steps = (
        sorted((int(p.name.split("_")[1]), p) for p in root.glob("step_*") if p.name.split("_")[1].isdigit())
        if root.is_dir()
        else []
    )
    if not steps:
        raise AdambaError(f"--every: {run_dir} has no checkpoints/step_N folders")
    rows, lines = [], []
    for step, path in steps:
        model, tokenizer, ckpt = load_model(path)
        row: dict = {"step": step}
        if "bpb" in tasks:
            row["bpb"] = bpb(model, tokenizer, ckpt, plain, batches)["bpb"]
        scores, _ = score_tasks(model, tokenizer, tasks, named, limit, fewshot, progress, chat)
        row["scores"] = [s.to_dict() for s in scores]
        rows.append(row)
        parts = ([f"bpb {row['bpb']:.4f}"] if "bpb" in row else []) + [
            f"{s.task} {s.metric} {s.value:.4f} ±{s.stderr:.4f}" for s in scores
        ]
        lines.append(f"step {step}: " + ", ".join(parts))
    if out is not None:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "every.json").write_text(json.dumps({"run": str(run_dir), "checkpoints": rows}, indent=2))
        md = [
            "| step | task | metric | score | ± stderr | baseline | centred |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rows:
            if "bpb" in r:
                md.append(f"| {r['step']} | bpb | bits/byte | {r['bpb']:.4f} | | | |")
            for s in r["scores"]:
                md.append(
                    f"| {r['step']} | {s['task']} | {s['metric']} | {s['value']:.4f} | {s['stderr']:.4f} | "
                    f"{s['baseline']:.4f} | {s['centred']:+.4f} |"
                )
        (o / "every.md").write_text(f"# adamba eval --every {run_dir}\n\n" + "\n".join(md) + "\n")
        plot_every(rows, o / "every.png")
        lines.append(f"-> {o / 'every.json'}, {o / 'every.md'}, {o / 'every.png'}")
    return lines


def plot_every(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if "bpb" in r:
            series.setdefault("bpb (bits/byte)", []).append((r["step"], r["bpb"]))
        for s in r["scores"]:
            series.setdefault(f"{s['task']} {s['metric']}", []).append((r["step"], s["value"]))
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for ax, (name, pts) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
