"""Rewards for RL on tasks with a verifiable answer (GRPO's reward functions).

A reward is a function (completion text, reference) -> float. `exact_answer` scores the final
number (after "####", else the last number, normalised as GSM8K writes answers: the same
extraction the GSM8K eval uses, adamba/eval/tasks/gsm8k.py); `answer_format` rewards stating the
answer in the "#### N" form at all, a small shaping term that helps a tiny model find the format
before it finds the answer; `combined` weighs several. `tool_success` scores a rollout's tool
calls rather than its text (post.reward's "tool" term, allowed when post.tools is set).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from adamba.eval.tasks.gsm8k import NUMBER, extract, normalise
from adamba.tools.registry import ToolResult

Reward = Callable[[str, str], float]
FORMAT = re.compile(r"####\s*" + NUMBER.pattern)


def exact_answer(completion: str, reference: str) -> float:
    """1.0 when the completion's final answer equals the reference's (itself a solution ending in
    "#### N", or just the number), else 0.0."""
    got = extract(completion)
    want = extract(reference) if "####" in reference else normalise(reference)
    return float(got is not None and got == want)


def answer_format(completion: str, reference: str = "") -> float:
    """1.0 when the completion states a final answer as '#### N'."""
    return float(FORMAT.search(completion) is not None)


def combined(weights: dict[Reward, float]) -> Reward:
    """The weighted sum of several rewards, e.g. {exact_answer: 1.0, answer_format: 0.1}."""

    def reward(completion: str, reference: str) -> float:
        return sum(w * f(completion, reference) for f, w in weights.items())

    return reward


def tool_success(calls: Sequence[tuple[object, ToolResult]]) -> float:
    """The fraction of a rollout's (call, result) pairs whose result has no error; 0.0 when it made
    no call, so that skipping the tools earns nothing (a correct answer without them still earns
    its exact term: weigh "tool" small, e.g. "exact+0.1*tool")."""
    return sum(res.error is None for _, res in calls) / len(calls) if calls else 0.0


REWARDS: dict[str, Reward] = {"exact": exact_answer, "format": answer_format}
TOOL = "tool"  # post.reward's name for tool_success (GRPO with post.tools)
