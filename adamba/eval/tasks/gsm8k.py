"""GSM8K: grade-school maths by generation. A few solved problems from the train split, then
the question; the model writes greedily until a blank line or the next "Question:", and its
final answer (after "####", else the last number it wrote) must equal the reference exactly.
"""

from __future__ import annotations

import re

import torch

from adamba.data.tokenizer import Tokenizer
from adamba.eval.report import Score
from adamba.model import decode
from adamba.model.lm import LM

NUMBER = re.compile(r"-?[\d,]*\.?\d+")
STOPS = ("\n\n", "Question:")


def normalise(s: str) -> str:
    """'1,234.00' -> '1234', '$5.' -> '5': how the reference answers are written."""
    s = s.replace(",", "").replace("$", "").strip().rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def extract(text: str) -> str | None:
    """The final answer of a solution: the number after '####', else the last number."""
    if "####" in text:
        m = NUMBER.search(text.split("####", 1)[1])
        if m:
            return normalise(m.group())
    nums = NUMBER.findall(text)
    return normalise(nums[-1]) if nums else None


def prompt(question: str, shots: list[dict]) -> str:
    ex = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    return f"{ex}Question: {question}\nAnswer:"


@torch.no_grad()
def answer(model: LM, tok: Tokenizer, text: str, max_new_tokens: int) -> str:
    """Greedy continuation of `text` until a stop string (left-truncating the prompt so the
    answer fits the model's context)."""
    ids = [tok.bos_id] + tok.encode(text)
    keep = max(1, model.cfg.max_seq_len - max_new_tokens)
    ids = ids[-keep:]
    budget = min(max_new_tokens, model.cfg.max_seq_len - len(ids))
    out: list[int] = []
    device = next(model.parameters()).device
    for t in decode.generate(model, torch.tensor([ids], device=device), budget, temperature=0.0):
        tok_id = int(t[0])
        if tok_id in (tok.eos_id, tok.bos_id):
            break
        out.append(tok_id)
        s = tok.decode(out)
        if any(stop in s for stop in STOPS):
            break
    s = tok.decode(out)
    for stop in STOPS:
        s = s.split(stop, 1)[0]
    return s


def score(
    model: LM, tok: Tokenizer, recs: list[dict], shots: list[dict], max_new_tokens: int = 256, progress=None
) -> tuple[Score, list[dict]]:
    """Exact match over the records (each {question, answer}); also the per-item outputs."""
    right, rows = 0, []
    for r in recs:
        out = answer(model, tok, prompt(r["question"], shots), max_new_tokens)
        got, want = extract(out), extract(r["answer"])
        right += got is not None and got == want
        rows.append({"question": r["question"], "output": out, "extracted": got, "reference": want})
        if progress is not None:
            progress(1)
    return Score("gsm8k", "exact_match", right / len(recs), len(recs), 0.0), rows
