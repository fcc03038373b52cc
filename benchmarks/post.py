"""Post-training, measured (issue 27, "the proof it works"): on a verifiable task, what do SFT with
chain of thought, SFT with the calculator tool, GRPO, DPO and distillation each do to held-out
exact match?

Task: three-digit addition word problems ("What is 147 plus 935?"), generated locally: random
pairs (a, b) in 100..999 (seed 0), `--test` held-out questions and `--train-questions` disjoint
train questions. Every answer ends in "#### N" (GSM8K's form, scored by
adamba.post.rewards.exact_answer). The data (tokenizer, shards, prompts, pairs) is the same for
every seed; the seed changes initialisation, data order and sampling.

1. **Base**: a tiny dense model (d_model `--d`, `--layers` layers) pretrained for `--base-steps`
   language-model steps on plain-text worked solutions of train questions (no chat template).
2. **SFT, chain of thought** (from the base): `sft` phase on chat shards written by
   `adamba.data.sft.write_chat_shards` from `parse_qa` records whose answer is the worked steps
   ("ones: 7+5+0=12, carry 1. tens: 4+3+1=8, carry 0. hundreds: 1+9+0=10. #### 1082"); loss on the assistant's tokens only.
3. **SFT, calculator tool** (from the base, the same steps): conversations where the assistant
   calls `calculator` ({"expression": "147+935"}), reads the result and answers "#### 1082";
   evaluated with `adamba.tools.loop.generate_with_tools` and the real calculator.
4. **GRPO** (from the CoT-SFT model): `grpo` phase, `--grpo-steps` steps of `--grpo-prompts`
   train prompts x `post.group_size` samples, reward "exact+0.1*format", no KL term, at
   `--grpo-lr`; `grpo-2` is the second attempt at `--grpo2-lr`.
5. **DPO** (from the CoT-SFT model): `dpo` phase on pairs built from train questions: chosen = the
   correct worked solution, rejected = the same solution with every carry dropped (a wrong sum),
   `--dpo-steps` at `--dpo-lr`; `dpo-2` is the second, gentler attempt (`--dpo2-steps` at
   `--dpo2-lr`).
   Reported: held-out preference accuracy (policy log-probability of the chosen reply above the
   rejected one's, on test-question pairs) and held-out exact match, before and after.
6. **Distillation**: a teacher of width `--d-teacher` (same layers, base + CoT SFT with the same
   recipe) distils into the d`--d` base model for `--distill-steps` equal student steps,
   on-policy (student samples, per-token reverse KL) vs off-policy (teacher samples, forward
   KL). Reported: held-out exact match and the reverse KL(student || teacher) per token on
   student samples of the test prompts (4 samples each, temperature 1).

Exact match: greedy decoding (temperature 0), up to `--max-new` tokens, on the `--test` held-out
questions; "reward" is the mean of exact + 0.1 * format on the same greedy replies. Every stage
is `adamba.train.trainer.run` (AdamW, constant learning rate after a 5% warm-up where the
objective allows) on a byte-level BPE of `--vocab` tokens trained by adamba on the task's text.

Caveats: one task family (addition), tiny models (156k parameters at d64, 492k at d128; 2 layers,
vocabulary 512) trained for a minute or less each on a shared 2-core CPU; `--seeds` seeds (default 3)
and a held-out set of a few hundred questions, so differences of a few points are within noise (the
binomial standard error of an exact match p on n questions is sqrt(p(1-p)/n), printed). The
thread count changes the floating-point sums and with them every trajectory: results/post.json
is `--threads 1`. Learning rates and step counts are guesses from one pilot run (seed 1337), not
tuned per stage; the issue's GSM8K bullet is benchmarks/gsm8k.py. GRPO and DPO start from the
CoT-SFT model, so they are read against that model's exact match.

    python benchmarks/post.py --threads 1  # results/post.json (~25 min alone on 2 cores; 53 shared)
    python benchmarks/post.py --quick    # a tiny smoke version (~45 s), JSON in the temp folder (kept)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP stalls on shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import adamba.post.objectives as po  # noqa: E402  (registers grpo, dpo, distill)
from adamba.checkpoint import load_model  # noqa: E402
from adamba.config import PhaseConfig, load_config  # noqa: E402
from adamba.data.chat import Conversation, Message, ToolCall  # noqa: E402
from adamba.data.sft import parse_qa, write_chat_shards  # noqa: E402
from adamba.data.template import render, stop_ids  # noqa: E402
from adamba.post.rewards import answer_format, exact_answer  # noqa: E402
from adamba.tools import calculator_tool  # noqa: E402
from adamba.tools.loop import generate_with_tools  # noqa: E402
from adamba.tools.registry import ToolRegistry  # noqa: E402
from adamba.train.monitor import read_metrics  # noqa: E402
from adamba.train.trainer import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOOLS = [{"name": "calculator"}]  # the tool turn's spec as the system prompt states it (short)


# ---- the task ------------------------------------------------------------------------------------
def question(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"


COLUMNS = ("ones", "tens", "hundreds")


def worked(a: int, b: int, drop_carry: bool = False) -> str:
    """The chain of thought, a column at a time with its carry, then "#### N"; drop_carry: every
    carry forgotten (the usual mistake, a wrong sum whenever a column overflows)."""
    steps, carry, digits = [], 0, []
    for i, name in enumerate(COLUMNS):
        x, y, cin = a // 10**i % 10, b // 10**i % 10, carry
        s = x + y + cin
        last = i == len(COLUMNS) - 1
        carry = 0 if drop_carry else s // 10
        steps.append(f"{name}: {x}+{y}+{cin}={s}" + ("" if last else f", carry {carry}"))
        digits.append(str(s) if last else str(s % 10))
    total = int("".join(reversed(digits)))
    return ". ".join(steps) + f". #### {total}"


def tool_conv(a: int, b: int) -> Conversation:
    call = ToolCall("calculator", {"expression": f"{a}+{b}"}, id="c0")
    msgs = [
        Message("user", question(a, b)),
        Message("assistant", "", tool_calls=[call]),
        Message("tool", str(a + b), tool_call_id="c0", name="calculator"),
        Message("assistant", f"#### {a + b}"),
    ]
    return Conversation(msgs, tools=TOOLS).validate()


def split(n_test: int, n_train: int) -> tuple[list, list]:
    """Disjoint random (a, b) in 100..999 (seed 0): train and test questions."""
    rng = random.Random(0)
    pairs = list(
        dict.fromkeys(
            (rng.randrange(100, 1000), rng.randrange(100, 1000)) for _ in range(2 * (n_test + n_train))
        )
    )
    return pairs[n_test : n_test + n_train], pairs[:n_test]


def prepare(out: Path, vocab: int, train_pairs: list, n_conv: int, seed: int) -> dict:
    """Tokenizer, base-pretraining shards (plain text), CoT and tool chat shards, GRPO prompts,
    DPO pairs."""
    from adamba.data.shards import write_shards
    from adamba.data.tokenizer import Tokenizer

    rng = random.Random(seed)
    plain = [f"Question: {question(a, b)}\nAnswer: {worked(a, b)}\n" for a, b in train_pairs]
    docs = ["".join(plain[i : i + 20]) for i in range(0, len(plain), 20)]
    calls = [
        json.dumps({"name": "calculator", "arguments": {"expression": f"{a}+{b}"}})
        for a, b in train_pairs[:500]
    ]
    tok = Tokenizer.train(docs + ["\n".join(calls)], vocab)  # the tool call's JSON gets merges too
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    base_m = write_shards(docs, tok, out / "base", source="base")
    chosen = rng.sample(train_pairs, n_conv)
    cot_m = write_chat_shards(
        [parse_qa({"question": question(a, b), "answer": worked(a, b)}) for a, b in chosen], tok, out / "cot"
    )
    tool_m = write_chat_shards([tool_conv(a, b) for a, b in chosen], tok, out / "tool")
    prompts = out / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"question": question(a, b), "answer": str(a + b)}) + "\n" for a, b in chosen)
    )
    carry = [(a, b) for a, b in chosen if worked(a, b, True) != worked(a, b)]  # a carry to drop
    pairs = out / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(dpo_pair(a, b)) + "\n" for a, b in carry))
    return {
        "tok": tok,
        "vocab": tok.vocab_size,
        "base": base_m,
        "cot": cot_m,
        "tool": tool_m,
        "prompts": prompts,
        "pairs": pairs,
        "n_train_questions": len(train_pairs),
        "n_sft_conversations": len(chosen),
        "n_dpo_pairs": len(carry),
    }


def dpo_pair(a: int, b: int) -> dict:
    return {"prompt": question(a, b), "chosen": worked(a, b), "rejected": worked(a, b, drop_carry=True)}


# ---- one training run ----------------------------------------------------------------------------
def train(a, data: dict, out: Path, d: int, phase: PhaseConfig, seed: int, extra=(), init_from=None) -> dict:
    heads = max(2, d // 32)
    over = [
        f"model.d_model={d}",
        f"model.n_layer={a.layers}",
        f"model.attn.n_head={heads}",
        f"model.attn.n_kv_head={max(1, heads // 2)}",
        "model.max_seq_len=128",
        "data.seq_len=128",
        f"data.train={data['base']}",
        f"data.val={data['base']}",
        f"data.tokenizer={data['tok_path']}",
        f"train.batch_size={a.batch}",
        f"train.max_steps={phase.steps}",
        f"train.seed={seed}",
        "train.eval_every=0",
        "train.ckpt_every=0",
        "train.schedule=constant",
        "train.warmup_frac=0.05",
        "run.progress=false",
        "run.tensorboard=false",
        f"run.out_dir={out}",
        *extra,
    ]
    if init_from is not None:
        over.append(f"train.init_from={init_from}")
    cfg = load_config("tiny-cpu", over)
    cfg.phase = [phase]
    cfg.validate()
    t = time.perf_counter()
    run(cfg, overwrite=True)
    wall = time.perf_counter() - t
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    last = rows[-max(1, len(rows) // 10) :]
    keys = {k for r in last for k in r if isinstance(r[k], (int, float)) and k not in ("step", "phase")}
    tail = {k: sum(r[k] for r in last if k in r) / len(last) for k in sorted(keys)}
    return {"dir": out, "steps": phase.steps, "wall_s": round(wall, 1), "last10pct": tail, "overrides": over}


# ---- evaluation ----------------------------------------------------------------------------------
def evaluate(run_dir: Path, test_pairs: list, max_new: int, tools: bool) -> dict:
    """Greedy replies to the held-out questions: exact match, format, reward; tool calls made."""
    model, tok, _ = load_model(run_dir)
    reg = ToolRegistry([calculator_tool()]) if tools else ToolRegistry()
    exact = fmt = calls = 0
    sample = ""
    for i, (a, b) in enumerate(test_pairs):
        ids = render(tok, [Message("user", question(a, b))], tools=TOOLS if tools else None).ids
        r = generate_with_tools(model, tok, ids, reg, max_new_tokens=max_new, temperature=0.0, max_calls=1)
        text = r.messages[-1].content if r.messages else ""
        exact += exact_answer(text, str(a + b))
        fmt += answer_format(text)
        calls += len(r.calls)
        if i == 0:
            sample = " | ".join(
                (m.content or json.dumps([c.arguments for c in m.tool_calls])) for m in r.messages
            )
    n = len(test_pairs)
    p = exact / n
    return {
        "exact": p,
        "stderr": math.sqrt(p * (1 - p) / n),
        "format": fmt / n,
        "reward": (exact + 0.1 * fmt) / n,
        "tool_calls_per_question": calls / n,
        "n": n,
        "sample": f"{question(*test_pairs[0])} -> {sample}",
    }


@torch.no_grad()
def preference_accuracy(run_dir: Path, pairs: list) -> float:
    model, tok, _ = load_model(run_dir)
    path = run_dir.parent / f"heldout-pairs-{run_dir.name}.jsonl"
    path.write_text("".join(json.dumps(dpo_pair(a, b)) + "\n" for a, b in pairs))
    batch = po.load_pairs(str(path), tok)
    obj = po.DPOObjective.__new__(po.DPOObjective)
    obj.tok = tok
    lp = obj.logps(model, batch)
    n = len(batch)
    return (lp[:n] > lp[n:]).float().mean().item()


@torch.no_grad()
def held_out_kl(student_dir: Path, teacher_dir: Path, test_pairs: list, max_new: int) -> float:
    """Mean per-token reverse KL(student || teacher) on 4 student samples of each test prompt."""
    student, tok, _ = load_model(student_dir)
    teacher = po.load_teacher(str(teacher_dir), tok, tok.vocab_size, "cpu")
    seqs, starts = [], []
    for i, (a, b) in enumerate(test_pairs):
        ids = render(tok, [Message("user", question(a, b))], prompt=True).ids
        for c in po.sample_group(
            student, ids, 4, max_new, 1.0, None, stop_ids(tok), torch.Generator().manual_seed(i)
        ):
            seqs.append(ids + c)
            starts.append(len(ids))
    vals = []
    for k in range(0, len(seqs), 64):
        s = po.completion_logits(student, seqs[k : k + 64], starts[k : k + 64], tok.pad_id)
        t = po.completion_logits(teacher, seqs[k : k + 64], starts[k : k + 64], tok.pad_id)
        vals.append(po.kl(s, t, direction="reverse").item())
    return sum(vals) / len(vals)


# ---- one seed ------------------------------------------------------------------------------------
def one_seed(a, data: dict, test_pairs: list, seed: int, tmp: Path) -> dict:
    R: dict = {"seed": seed, "runs": {}, "eval": {}}
    sft_lr = [f"train.lr={a.sft_lr}"]

    def go(name, d, phase, extra=(), init=None):
        print(f"  [{seed}] {name} ...", flush=True)
        r = train(a, data, tmp / f"s{seed}-{name}", d, phase, seed, extra, init)
        R["runs"][name] = r
        print(f"  [{seed}] {name}: {r['wall_s']} s, {r['last10pct']}", flush=True)
        return r["dir"]

    def ev(name, run_dir, tools=False):
        R["eval"][name] = evaluate(run_dir, test_pairs, a.max_new, tools)
        e = R["eval"][name]
        print(
            f"  [{seed}] eval {name}: exact {e['exact']:.3f} format {e['format']:.2f}  {e['sample']!r}",
            flush=True,
        )

    base = go("base", a.d, PhaseConfig(name="base", steps=a.base_steps), [f"train.lr={a.lr}"])
    ev("base", base)
    cot = go(
        "sft-cot",
        a.d,
        PhaseConfig(name="sft", objective="sft", steps=a.sft_steps, data=[str(data["cot"])]),
        sft_lr,
        base,
    )
    ev("sft-cot", cot)
    tool = go(
        "sft-tool",
        a.d,
        PhaseConfig(name="sft", objective="sft", steps=a.sft_steps, data=[str(data["tool"])]),
        sft_lr,
        base,
    )
    ev("sft-tool", tool, tools=True)
    post = [f"post.max_new_tokens={a.max_new}", f"post.group_size={a.group}", "post.temperature=1.0"]
    grpo = go(
        "grpo",
        a.d,
        PhaseConfig(name="grpo", objective="grpo", steps=a.grpo_steps, batch_size=a.grpo_prompts),
        [f"train.lr={a.grpo_lr}", f"post.prompts={data['prompts']}", "post.reward=exact+0.1*format", *post],
        cot,
    )
    ev("grpo", grpo)
    grpo2 = go(  # the second attempt: a higher learning rate
        "grpo-2",
        a.d,
        PhaseConfig(name="grpo", objective="grpo", steps=a.grpo_steps, batch_size=a.grpo_prompts),
        [f"train.lr={a.grpo2_lr}", f"post.prompts={data['prompts']}", "post.reward=exact+0.1*format", *post],
        cot,
    )
    ev("grpo-2", grpo2)
    R["preference"] = {"sft-cot": preference_accuracy(cot, data["test_carry"])}
    for name, lr, steps in (("dpo", a.dpo_lr, a.dpo_steps), ("dpo-2", a.dpo2_lr, a.dpo2_steps)):
        dpo = go(  # dpo-2: the second attempt, gentler (lower learning rate, fewer steps)
            name,
            a.d,
            PhaseConfig(name="dpo", objective="dpo", steps=steps, batch_size=8),
            [f"train.lr={lr}", f"post.pairs={data['pairs']}", f"post.dpo_beta={a.dpo_beta}"],
            cot,
        )
        ev(name, dpo)
        R["preference"][name] = preference_accuracy(dpo, data["test_carry"])
    print(f"  [{seed}] held-out preference accuracy: {R['preference']}", flush=True)
    if a.distill_steps:
        tbase = go(
            "teacher-base", a.d_teacher, PhaseConfig(name="base", steps=a.base_steps), [f"train.lr={a.lr}"]
        )
        teacher = go(
            "teacher",
            a.d_teacher,
            PhaseConfig(name="sft", objective="sft", steps=a.sft_steps, data=[str(data["cot"])]),
            sft_lr,
            tbase,
        )
        ev("teacher", teacher)
        kl_pairs = test_pairs[: a.kl_questions]
        R["kl"] = {
            "base": held_out_kl(base, teacher, kl_pairs, a.max_new),
            "sft-cot": held_out_kl(cot, teacher, kl_pairs, a.max_new),
        }
        for mode in ("on-policy", "off-policy"):
            name = f"distill-{mode}"
            student = go(
                name,
                a.d,
                PhaseConfig(
                    name="distill", objective="distill", steps=a.distill_steps, batch_size=a.grpo_prompts
                ),
                [
                    f"train.lr={a.sft_lr}",
                    f"post.prompts={data['prompts']}",
                    f"post.teacher={teacher}",
                    f"post.distill_mode={mode}",
                    *post,
                ],
                base,
            )
            ev(name, student)
            R["kl"][name] = held_out_kl(student, teacher, kl_pairs, a.max_new)
        print(f"  [{seed}] held-out KL to the teacher: {R['kl']}", flush=True)
    return R


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in ("tok",)}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    if isinstance(obj, Path):
        return obj.name
    return obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke version; JSON in the temp folder")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--d-teacher", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--test", type=int, default=300, help="held-out questions")
    ap.add_argument("--train-questions", type=int, default=20000, help="base pretraining questions")
    ap.add_argument("--conversations", type=int, default=3000, help="SFT conversations (and GRPO prompts)")
    ap.add_argument("--base-steps", type=int, default=800)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--grpo-steps", type=int, default=80)
    ap.add_argument("--grpo-prompts", type=int, default=4, help="prompts per GRPO / distill step")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--dpo-steps", type=int, default=60)
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--kl-questions", type=int, default=100)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--grpo-lr", type=float, default=3e-4)
    ap.add_argument("--dpo-lr", type=float, default=3e-4)
    ap.add_argument("--grpo2-lr", type=float, default=1e-3, help="GRPO's second attempt")
    ap.add_argument("--dpo2-lr", type=float, default=1e-4, help="DPO's second attempt")
    ap.add_argument("--dpo2-steps", type=int, default=15)
    ap.add_argument("--dpo-beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", help="keep the runs in this folder (default: a temp folder, deleted)")
    ap.add_argument("--json", help="result file (default results/post.json; --quick: in the temp folder)")
    a = ap.parse_args()
    if a.quick:
        a.test, a.conversations, a.base_steps, a.sft_steps = 30, 300, 20, 20
        a.grpo_steps, a.dpo_steps, a.dpo2_steps, a.distill_steps, a.kl_questions = 3, 3, 3, 3, 10
    torch.set_num_threads(a.threads)
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="adamba-post-"))
    t0 = time.perf_counter()
    try:
        train_pairs, test_pairs = split(a.test, a.train_questions)
        data = prepare(tmp / "data", a.vocab, train_pairs, a.conversations, 0)
        data["tok_path"] = tmp / "data" / "tokenizer.json"
        data["test_carry"] = [(x, y) for x, y in test_pairs if worked(x, y, True) != worked(x, y)]
        print(
            f"task: {len(train_pairs)} train / {len(test_pairs)} test questions, vocab {data['vocab']}, "
            f"{data['n_sft_conversations']} SFT conversations, {data['n_dpo_pairs']} DPO pairs",
            flush=True,
        )
        seeds = [1337 + i for i in range(a.seeds)]
        per_seed = [one_seed(a, data, test_pairs, s, tmp) for s in seeds]
        stages = list(per_seed[0]["eval"])
        table = []
        print(
            "\n| stage | start | held-out exact (mean) | per seed | +-se | format | reward | tool calls/q | pref. acc. | KL to teacher |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        start = {
            "sft-cot": "base",
            "sft-tool": "base",
            "grpo": "sft-cot",
            "grpo-2": "sft-cot",
            "dpo-2": "sft-cot",
            "dpo": "sft-cot",
            "teacher": "teacher-base",
        }
        start.update({"distill-on-policy": "base", "distill-off-policy": "base"})
        for st in stages:
            es = [r["eval"][st] for r in per_seed]
            row = {k: sum(e[k] for e in es) / len(es) for k in ("exact", "stderr", "format", "reward")}
            row["tool_calls"] = sum(e["tool_calls_per_question"] for e in es) / len(es)
            row["stage"], row["start"] = st, start.get(st, "-")
            row["exact_per_seed"] = [e["exact"] for e in es]
            prefs = [r["preference"][st] for r in per_seed if st in r["preference"]]
            row["preference_accuracy"] = sum(prefs) / len(prefs) if prefs else None
            kls = [r["kl"][st] for r in per_seed if st in r.get("kl", {})]
            row["kl_to_teacher"] = sum(kls) / len(kls) if kls else None
            table.append(row)
            kl = f"{row['kl_to_teacher']:.3f}" if kls else "-"
            pref = f"{row['preference_accuracy']:.3f}" if prefs else "-"
            print(
                f"| {st} | {row['start']} | {row['exact']:.3f} | {', '.join(f'{x:.3f}' for x in row['exact_per_seed'])} "
                f"| {row['stderr']:.3f} | {row['format']:.2f} | {row['reward']:.3f} | {row['tool_calls']:.2f} | {pref} | {kl} |"
            )
        for r in per_seed:
            print(f"seed {r['seed']}: held-out preference accuracy {r['preference']}; KL {r.get('kl')}")
        result = {
            "question": "held-out exact match after base, CoT SFT, tool SFT, GRPO, DPO, distillation",
            "argv": sys.argv[1:],
            "config": {k: v for k, v in vars(a).items() if k not in ("keep", "json")},
            "seeds": seeds,
            "task": {k: data[k] for k in ("vocab", "n_train_questions", "n_sft_conversations", "n_dpo_pairs")}
            | {"n_test": len(test_pairs), "n_test_carry_pairs": len(data["test_carry"])},
            "table": table,
            "per_seed": strip(per_seed),
            "torch": torch.__version__,
            "threads": a.threads,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        path = Path(a.json) if a.json else (tmp / "post.json" if a.quick else RESULTS / "post.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"\nwall {result['wall_s']} s; wrote {path}")
    finally:
        if not a.keep and not a.quick:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
