"""Multiple choice, scored the way lm-evaluation-harness scores it, so numbers compare.

Each option is a continuation of the item's context; the model picks the option with the highest
log-likelihood (acc) or the highest log-likelihood per byte of the option (acc_norm: longer
options are not punished for their length). For chat models the same items can be asked as a
question with lettered options, scored by the likelihood of each letter as the assistant's
reply (`letters`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adamba.data.chat import Message
from adamba.data.template import render
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.eval.likelihood import loglikelihoods
from adamba.eval.report import Score
from adamba.model.lm import LM

LETTERS = "ABCDEFGHIJ"


@dataclass
class MCItem:
    context: str
    choices: list[str]  # each a continuation of the context (with its leading space)
    gold: int
    question: str = ""  # the bare question (letter-choice form)


def _arc(r: dict) -> MCItem:
    labels, texts = r["choices"]["label"], r["choices"]["text"]
    return MCItem(
        f"Question: {r['question']}\nAnswer:",
        [f" {t}" for t in texts],
        labels.index(r["answerKey"]),
        r["question"],
    )


def _hellaswag(r: dict) -> MCItem:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize() if "ctx_a" in r else r["ctx"]
    ctx = re.sub(r"\[.*?\]", "", ctx.replace(" [title]", ". ")).strip()  # lm-eval's cleaning
    label = r.get("activity_label", "")
    endings = [re.sub(r"\[.*?\]", "", e).strip() for e in r["endings"]]
    return MCItem(f"{label}: {ctx}" if label else ctx, [f" {e}" for e in endings], int(r["label"]), ctx)


def _generic(r: dict) -> MCItem:
    """{"question", "choices": [...], "answer": index or letter} (asked as "Question: ...
    Answer:", each choice after a space), or {"context", "choices", "answer"} (a continuation:
    context and choices verbatim)."""
    q = r.get("context", r.get("question"))
    ans = r["answer"]
    gold = LETTERS.index(ans) if isinstance(ans, str) and ans in LETTERS else int(ans)
    if "context" in r:
        return MCItem(q, list(r["choices"]), gold, r.get("question", q))
    choices = [c if c.startswith(" ") else f" {c}" for c in r["choices"]]
    return MCItem(f"Question: {q}\nAnswer:", choices, gold, q)


def items(task: str, recs: list[dict]) -> list[MCItem]:
    """Records in the ARC, HellaSwag or generic shape (whichever fits) as MCItems."""
    out = []
    for i, r in enumerate(recs):
        try:
            if "answerKey" in r:
                out.append(_arc(r))
            elif "endings" in r:
                out.append(_hellaswag(r))
            else:
                out.append(_generic(r))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise AdambaError(
                f"{task}: record {i} is not an ARC, HellaSwag or {{question, choices, answer}} item ({e!r})"
            ) from None
        if not 0 <= out[-1].gold < len(out[-1].choices):
            raise AdambaError(
                f"{task}: record {i} has answer {out[-1].gold} but {len(out[-1].choices)} choices"
            )
    return out


def score(
    task: str, model: LM, tok: Tokenizer, its: list[MCItem], batch_size: int = 16, progress=None
) -> list[Score]:
    """acc and acc_norm over the items; baseline: the mean chance 1 / choices."""
    reqs, spans = [], []
    for it in its:
        ctx = [tok.bos_id] + tok.encode(it.context)
        spans.append((len(reqs), len(it.choices)))
        reqs += [(ctx, tok.encode(c)) for c in it.choices]
    scored = loglikelihoods(model, reqs, batch_size, progress)
    acc = acc_norm = 0
    for it, (start, n) in zip(its, spans):
        lps = [scored[start + j].logprob for j in range(n)]
        norm = [lp / max(1, len(c.encode())) for lp, c in zip(lps, it.choices)]
        acc += max(range(n), key=lambda j: lps[j]) == it.gold
        acc_norm += max(range(n), key=lambda j: norm[j]) == it.gold
    n = len(its)
    base = sum(1 / len(it.choices) for it in its) / n
    return [Score(task, "acc", acc / n, n, base), Score(task, "acc_norm", acc_norm / n, n, base)]


def letter_prompt(it: MCItem) -> str:
    opts = "\n".join(f"{LETTERS[j]}. {c.strip()}" for j, c in enumerate(it.choices))
    return f"{it.question or it.context}\n{opts}\nAnswer with the letter."


def score_letters(task: str, model: LM, tok: Tokenizer, its: list[MCItem], batch_size: int = 16) -> Score:
    """Chat models: the question with lettered options as a user turn; the answer is the letter
    the assistant's reply most likely starts with."""
    reqs = []
    for it in its:
        ctx = render(tok, [Message("user", letter_prompt(it))]).ids
        reqs += [(ctx, tok.encode(LETTERS[j])) for j in range(len(it.choices))]
    scored = loglikelihoods(model, reqs, batch_size)
    right, k = 0, 0
    for it in its:
        lps = [scored[k + j].logprob for j in range(len(it.choices))]
        right += max(range(len(lps)), key=lambda j: lps[j]) == it.gold
        k += len(it.choices)
    n = len(its)
    return Score(task, "acc_letter", right / n, n, sum(1 / len(it.choices) for it in its) / n)
