"""GSM8K: grade-school maths by generation. A few solved problems from the train split, then
the question; the model writes greedily until a blank line or the next "Question:", and its
final answer (after "####", else the last number it wrote) must equal the reference exactly.
"""

from __future__ import annotations

import re

import torch

from adamba.data.chat import Message
from adamba.data.template import render, stop_ids
from adamba.data.tokenizer import Tokenizer
from adamba.eval.likelihood import fit_prompt
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


def chat_prompt(tok: Tokenizer, question: str, shots: list[dict]) -> list[int]:
    """Chat models: each solved example as a user turn and the assistant's reply, then the
    question; the reply is read up to <|end|>."""
    msgs = []
    for s in shots:
        msgs += [Message("user", s["question"]), Message("assistant", s["answer"])]
    return render(tok, msgs + [Message("user", question)]).ids


@torch.no_grad()
def complete(
    model: LM, tok: Tokenizer, ids: list[int], max_new_tokens: int, stops: tuple[str, ...] = STOPS
) -> str:
    """Greedy continuation of `ids` until a stop string or an end-of-reply token (left-truncating
    the prompt so the answer fits the model's context)."""
    ids, budget = fit_prompt(ids, max_new_tokens, model.cfg.max_seq_len)
    ends = stop_ids(tok) | {tok.bos_id}
    out: list[int] = []
    device = next(model.parameters()).device
    for t in decode.generate(model, torch.tensor([ids], device=device), budget, temperature=0.0):
        tok_id = int(t[0])
        if tok_id in ends:
            break
        out.append(tok_id)
        if stops and any(stop in tok.decode(out[-16:]) for stop in stops):
            break
    s = tok.decode(out)
    for stop in stops:
        s = s.split(stop, 1)[0]
    return s


def answer(model: LM, tok: Tokenizer, text: str, max_new_tokens: int) -> str:
    """The base-model form: `text` (a few-shot prompt) continued until a blank line or the next
    "Question:"."""
    return complete(model, tok, [tok.bos_id] + tok.encode(text), max_new_tokens)


def score(
    model: LM,
    tok: Tokenizer,
    recs: list[dict],
    shots: list[dict],
    max_new_tokens: int = 256,
    progress=None,
    chat: bool = False,
) -> tuple[Score, list[dict]]:
    """Exact match over the records (each {question, answer}); also the per-item outputs.
    `chat`: ask through the chat template (chat-tuned models)."""
    right, rows = 0, []
    for r in recs:
        if chat:
            out = complete(model, tok, chat_prompt(tok, r["question"], shots), max_new_tokens, ())
        else:
            out = answer(model, tok, prompt(r["question"], shots), max_new_tokens)
        got, want = extract(out), extract(r["answer"])
        right += got is not None and got == want
        rows.append({"question": r["question"], "output": out, "extracted": got, "reference": want})
        if progress is not None:
            progress(1)
    return Score("gsm8k", "exact_match", right / len(recs), len(recs), 0.0), rows
