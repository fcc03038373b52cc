"""Scores with their uncertainty and baseline, written as results.json and a markdown report card.

Every score is a mean of per-item 0/1 outcomes, so its standard error is binomial,
sqrt(p (1 - p) / n), and the 95% interval p +- 1.96 se (clipped to [0, 1]). Beside it: the score
a guess gets (1 / choices for multiple choice, 0 for exact match) and the CORE-style centred
score (acc - baseline) / (1 - baseline), 0 at chance and 1 at perfect, the number nanochat's
report card averages.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Score:
    task: str
    metric: str
    value: float
    n: int
    baseline: float = 0.0
    extra: dict = field(default_factory=dict)  # other metrics of the task (e.g. acc_norm)

    @property
    def stderr(self) -> float:
        return math.sqrt(max(self.value * (1 - self.value), 0.0) / self.n) if self.n else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        se = self.stderr
        return max(0.0, self.value - 1.96 * se), min(1.0, self.value + 1.96 * se)

    @property
    def centred(self) -> float:
        return (self.value - self.baseline) / (1 - self.baseline) if self.baseline < 1 else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "stderr": self.stderr, "ci95": list(self.ci95), "centred": self.centred}


def markdown(scores: list[Score], title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| task | metric | score | ± stderr | 95% CI | baseline | centred | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in scores:
        lo, hi = s.ci95
        lines.append(
            f"| {s.task} | {s.metric} | {s.value:.4f} | {s.stderr:.4f} | {lo:.3f}-{hi:.3f} | "
            f"{s.baseline:.4f} | {s.centred:+.4f} | {s.n} |"
        )
    core = [s.centred for s in scores if s.metric in ("acc_norm", "acc_letter", "exact_match", "pass@2")]
    if core:
        lines += ["", f"Mean centred score over {len(core)} task(s): {sum(core) / len(core):+.4f}"]
    return "\n".join(lines) + "\n"


def write(out: Path, scores: list[Score], title: str, meta: dict | None = None) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "results.json", out / "report.md"
    j.write_text(json.dumps({"meta": meta or {}, "scores": [s.to_dict() for s in scores]}, indent=2))
    m.write_text(markdown(scores, title))
    return j, m
