"""`adamba chat`: a terminal conversation with a checkpoint, through the chat template.

The session keeps the messages and re-renders them for every reply (adamba/data/template.py),
so what the model reads is exactly what training renders. When the history no longer fits the
model's context with room for a reply, the oldest exchanges are dropped (the system message
stays), with a note. Tool calls the model writes are shown; running them waits for the tool
sandbox of post-training.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from adamba.data.chat import Message
from adamba.data.template import parse_reply, render, stop_ids
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model.lm import LM
from adamba.serve.generate import stream_text

HELP = "commands: /reset (forget the conversation), /mode NAME|off (compute mode), /help, /exit (or Ctrl-D)"


@dataclass
class ChatSession:
    model: LM
    tokenizer: Tokenizer
    system: str = ""
    mode: str | None = None
    temperature: float = 0.7
    top_k: int | None = 50
    max_new_tokens: int = 256
    seed: int | None = 0
    messages: list[Message] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the session did on its own (trimming)
    stats: dict = field(default_factory=dict)  # the last reply's compute-mode accounting

    def __post_init__(self) -> None:
        if not self.tokenizer.has_chat:
            raise AdambaError(
                "this checkpoint's tokenizer was imported and has no adamba chat tokens (<|user|>, <|end|> ...): "
                "add them with adamba surgery chat-tokens (then SFT it), or use adamba sample for plain completion"
            )

    def reset(self) -> None:
        self.messages = []

    def prompt_ids(self) -> list[int]:
        """The rendered conversation, oldest exchanges dropped until a reply of at least a
        quarter of max_new_tokens (and one token) fits the model's context."""
        ctx = self.model.cfg.max_seq_len
        room = max(1, self.max_new_tokens // 4)
        head = [Message("system", self.system)] if self.system else []
        msgs = self.messages
        while True:
            ids = render(self.tokenizer, head + msgs).ids
            if len(ids) + room <= ctx:
                break
            users = [i for i, m in enumerate(msgs) if m.role == "user"]
            if len(users) < 2:  # the last message alone does not fit: the history stays as it was
                raise AdambaError(
                    f"the message is too long: {len(ids)} tokens with the template, and the model reads "
                    f"{ctx} with {room} left for the reply; shorten it (or /reset)"
                )
            msgs = msgs[users[1] :]
        if msgs is not self.messages:
            self.notes.append(
                f"dropped the {len(self.messages) - len(msgs)} oldest messages to fit the {ctx}-token context"
            )
            self.messages = msgs
        return ids

    def reply(self, text: str) -> Iterator[str]:
        """Stream the assistant's answer to `text`, then keep both in the history. A message
        that cannot fit is not kept."""
        self.messages.append(Message("user", text))
        try:
            ids = self.prompt_ids()
        except AdambaError:
            self.messages.pop()
            raise
        budget = min(self.max_new_tokens, self.model.cfg.max_seq_len - len(ids))
        out: list[int] = []
        self.stats = {}
        seed = None if self.seed is None else self.seed + len(self.messages)
        yield from stream_text(
            self.model,
            self.tokenizer,
            ids,
            budget,
            self.temperature,
            self.top_k,
            seed,
            self.mode,
            stop_ids(self.tokenizer),
            self.stats,
            out,
        )
        msg, _ = parse_reply(self.tokenizer, out + [self.tokenizer.special_id("<|end|>")])
        if not msg.content and not msg.tool_calls:
            msg.content = " "  # an empty reply still closes the turn in the next rendering
        self.messages.append(msg)


def check_mode(model: LM, mode: str) -> None:
    """A compute mode this checkpoint can run (one line otherwise: a dense checkpoint has none)."""
    from adamba.model.elastic import mode_policy, model_ecfg

    mode_policy(mode, model, model_ecfg(model))


def repl(session: ChatSession, read: Callable[[str], str] = input, write=sys.stdout.write) -> None:
    """Read a line, answer it streamed, until /exit or end of input; Ctrl-C during a reply
    stops that reply (the user's message is forgotten)."""
    from adamba.model.elastic import MODES

    def show(text: str) -> None:
        write(text)
        if hasattr(sys.stdout, "flush") and write is sys.stdout.write:
            sys.stdout.flush()

    show(f"adamba chat ({HELP})\n")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            show("\n")
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/help":
            show(HELP + "\n")
            continue
        if line == "/reset":
            session.reset()
            show("(conversation forgotten)\n")
            continue
        if line.startswith("/mode"):
            name = line[len("/mode") :].strip()
            if name not in (*MODES, "off"):
                show(f"(unknown mode {name!r}; one of {', '.join(MODES)}, off)\n")
                continue
            if name != "off":
                try:
                    check_mode(session.model, name)
                except AdambaError as e:
                    show(f"({e})\n")
                    continue
            session.mode = None if name == "off" else name
            show(f"(mode {name})\n")
            continue
        show("adamba> ")
        try:
            for piece in session.reply(line):
                show(piece)
        except KeyboardInterrupt:
            if session.messages and session.messages[-1].role == "user":
                session.messages.pop()
            show("\n(reply stopped)\n")
            continue
        except AdambaError as e:
            show(f"({e})\n")
            continue
        show("\n")
        last = session.messages[-1]
        for c in last.tool_calls:
            show(
                f"(tool call {c.name}({json.dumps(c.arguments, ensure_ascii=False)}): not run; tools come with post-training)\n"
            )
        for note in session.notes:
            show(f"({note})\n")
        session.notes.clear()
        if session.stats:
            s = session.stats
            show(
                f"({session.mode}: FLOPs/token {s['flops_rel']:.2f} of full, early exit {s['exit_rate']:.0%})\n"
            )
