"""Multiple choice, scored the way lm-evaluation-harness scores it, so numbers compare.

Each option is a continuation of the item's context; the model picks the option with the highest
log-likelihood (acc) or the highest log-likelihood per character of the option (acc_norm: longer
options are not punished for their length). Prompts, choice delimiters, HellaSwag's cleaning and
the tie rule are lm-eval's, so acc and acc_norm equal its numbers for the same model
(tests/eval/test_harness.py). For chat models the same items can be asked as a
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
from adamba.eval.likelihood import encode_pair, loglikelihoods
from adamba.eval.report import Score
from adamba.model.lm import LM

LETTERS = "ABCDEFGHIJ"


@dataclass
class MCItem:
    context: str
    choices: list[str]  # the options' own text (what acc_norm divides by)
    gold: int
    question: str = ""  # the bare question (letter-choice form)
    delimiter: str = " "  # put between the context and each choice (lm-eval's target_delimiter)


def clean(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: WikiHow's "[title]" markers become sentence ends, other
    bracketed markers go, double spaces collapse."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _arc(r: dict) -> MCItem:
    labels, texts = r["choices"]["label"], r["choices"]["text"]
    return MCItem(
        f"Question: {r['question']}\nAnswer:", list(texts), labels.index(r["answerKey"]), r["question"]
    )


def _hellaswag(r: dict) -> MCItem:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize() if "ctx_a" in r else r["ctx"]
    label = r.get("activity_label", "")
    query = clean(f"{label}: {ctx}" if label else ctx)
    return MCItem(query, [clean(e) for e in r["endings"]], int(r["label"]), clean(ctx).strip())


def _generic(r: dict) -> MCItem:
    """{"question", "choices": [...], "answer": index or letter} (asked as "Question: ...
    Answer:", each choice after a space), or {"context", "choices", "answer"} (a continuation:
    context and choices verbatim)."""
    q = r.get("context", r.get("question"))
    ans = r["answer"]
    gold = LETTERS.index(ans) if isinstance(ans, str) and ans in LETTERS else int(ans)
    if "context" in r:
        return MCItem(q, [str(c) for c in r["choices"]], gold, r.get("question", q), delimiter="")
    return MCItem(f"Question: {q}\nAnswer:", [str(c).lstrip(" ") for c in r["choices"]], gold, q)


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
    """acc (highest log-likelihood) and acc_norm (highest log-likelihood per character of the
    choice, as lm-eval divides; per UTF-8 byte in `extra["acc_bytes"]`); baseline: the mean
    chance 1 / choices."""
    reqs, spans = [], []
    for it in its:
        spans.append((len(reqs), len(it.choices)))
        reqs += [encode_pair(tok, it.context, it.delimiter + c) for c in it.choices]
    scored = loglikelihoods(model, reqs, batch_size, progress)
    acc = acc_norm = acc_bytes = 0
    for it, (start, n) in zip(its, spans):
        lps = [scored[start + j].logprob for j in range(n)]
        acc += _argmax(lps) == it.gold
        acc_norm += _argmax([lp / max(1, len(c)) for lp, c in zip(lps, it.choices)]) == it.gold
        acc_bytes += _argmax([lp / max(1, len(c.encode())) for lp, c in zip(lps, it.choices)]) == it.gold
    n = len(its)
    base = sum(1 / len(it.choices) for it in its) / n
    return [
        Score(task, "acc", acc / n, n, base),
        Score(task, "acc_norm", acc_norm / n, n, base, {"acc_bytes": acc_bytes / n}),
    ]


def _argmax(xs: list[float]) -> int:
    """The first index of the largest value (numpy's tie rule, which lm-eval uses)."""
    return max(range(len(xs)), key=xs.__getitem__)


def letter_prompt(it: MCItem) -> str:
    opts = "\n".join(f"{LETTERS[j]}. {c.strip()}" for j, c in enumerate(it.choices))
    return f"{it.question or it.context}\n{opts}\nAnswer with the letter."


def score_letters(
    task: str, model: LM, tok: Tokenizer, its: list[MCItem], batch_size: int = 16, progress=None
) -> Score:
    """Chat models: the question with lettered options as a user turn; the answer is the letter
    the assistant's reply most likely starts with."""
    reqs = []
    for it in its:
        if len(it.choices) > len(LETTERS):
            raise AdambaError(
                f"{task}: letter choice takes at most {len(LETTERS)} options, an item has {len(it.choices)}"
            )
        ctx = render(tok, [Message("user", letter_prompt(it))]).ids
        reqs += [(ctx, tok.encode(LETTERS[j])) for j in range(len(it.choices))]
    scored = loglikelihoods(model, reqs, batch_size, progress)
    right, k = 0, 0
    for it in its:
        right += _argmax([scored[k + j].logprob for j in range(len(it.choices))]) == it.gold
        k += len(it.choices)
    n = len(its)
    return Score(task, "acc_letter", right / n, n, sum(1 / len(it.choices) for it in its) / n)
