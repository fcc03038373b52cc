"""Generation that calls tools: decode an assistant turn; when it ends (<|end|>) after tool calls,
run them, feed their results back as forced tokens, and let the model continue.

The forced tokens are exactly what the chat template renders for the tool results and the next
assistant header (`<|tool_result|>...<|/tool_result|>` per call, then `<|assistant|>`), so a
rollout is the rendering of the conversation it produced, and its mask (1: the model wrote the
token, 0: forced) is the template's SFT mask: GRPO and distillation train on exactly the tokens
SFT would (tests/tools/test_loop.py checks both). One decoding state is kept throughout, so
forced tokens cost one prefill, not a re-encode of the conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from adamba.data.chat import Message, ToolCall
from adamba.data.template import parse_reply
from adamba.data.tokenizer import Tokenizer
from adamba.model.decode import sample_next
from adamba.tools.registry import ToolRegistry, ToolResult


@dataclass
class Rollout:
    ids: list[int] = field(default_factory=list)  # after the prompt: generated and forced tokens
    mask: list[int] = field(default_factory=list)  # 1: the model generated it; 0: forced
    calls: list[tuple[ToolCall, ToolResult]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # the turns it produced, as messages
    ended: bool = False  # a final <|end|> / <|eos|> (not cut by max_new_tokens)


@torch.no_grad()
def generate_with_tools(
    model,
    tok: Tokenizer,
    prompt_ids: list[int],
    tools: ToolRegistry,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    max_calls: int = 4,
    on_event: Callable[[str, object], None] | None = None,
) -> Rollout:
    """Continue `prompt_ids` (a rendered conversation ending in <|assistant|>) through tool calls:
    at most `max_calls` are run, `max_new_tokens` counts generated tokens only. `on_event(kind,
    value)` sees "token" (an id), "call" (ToolCall, ToolResult) as they happen."""
    sp = tok.special_id
    end, eos = sp("<|end|>"), tok.eos_id
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    state = model.init_state(1)
    logits = model(torch.tensor([prompt_ids], device=device), state=state)[0][:, -1]
    r, turn, made = Rollout(), 0, 0
    while made < max_new_tokens:
        nxt = sample_next(logits, temperature, top_k, gen)
        t = int(nxt)
        r.ids.append(t)
        r.mask.append(1)
        made += 1
        if on_event:
            on_event("token", t)
        if t in (end, eos):
            msg, _ = parse_reply(tok, r.ids[turn:])
            r.messages.append(msg)
            if t != end or not msg.tool_calls or len(r.calls) + len(msg.tool_calls) > max_calls:
                r.ended = True
                break
            forced = []
            for call in msg.tool_calls:
                res = tools.dispatch(call)
                r.calls.append((call, res))
                r.messages.append(Message("tool", res.text(), tool_call_id=call.id, name=call.name))
                if on_event:
                    on_event("call", (call, res))
                forced += [sp("<|tool_result|>")] + tok.encode(res.text()) + [sp("<|/tool_result|>")]
            forced.append(sp("<|assistant|>"))
            r.ids += forced
            r.mask += [0] * len(forced)
            turn = len(r.ids)
            logits = model(torch.tensor([forced], device=device), state=state)[0][:, -1]
            continue
        logits = model(nxt[:, None], state=state)[0][:, -1]
    if not r.ended and turn < len(r.ids):  # cut by the budget: keep what the last turn said
        r.messages.append(parse_reply(tok, r.ids[turn:])[0])
    return r
