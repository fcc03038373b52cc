"""`adamba serve`: an OpenAI-compatible HTTP API over a checkpoint, and a small chat page at `/`.

Plain requests decode together in the request batcher (adamba/serve/batcher.py), so concurrent
clients share decode steps; a request with a compute `mode` (an adamba extension field) decodes
through the elastic runner, one at a time. Generation never runs on the event loop: the batcher
has its own thread and mode requests run in a worker thread, so /health and other requests are
answered while a long generation runs.

Streamed text is held back while it may still be the start of a stop string or of a UTF-8
character split across tokens, so a client never receives text it has to take back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adamba.data.template import parse_reply, render, stop_ids
from adamba.data.tokenizer import Tokenizer
from adamba.model.elastic import MODES
from adamba.model.lm import LM
from adamba.serve.batcher import Batcher, Sampling
from adamba.serve.openai_api import APIError, Params, parse_chat, parse_completion, parse_json

STATIC = Path(__file__).parent / "static"


class _ModeStream:
    """A compute-mode generation in a worker thread, read like a batcher Stream."""

    lock = threading.Lock()  # one mode generation at a time (the elastic runner is per call)

    def __init__(self, model: LM, tok: Tokenizer, ids: list[int], s: Sampling, mode: str):
        self.out: queue.Queue = queue.Queue()
        self.cancelled = False
        threading.Thread(target=self._run, args=(model, tok, ids, s, mode), daemon=True).start()

    def _run(self, model, tok, ids, s, mode) -> None:
        from adamba.serve.generate import stream_text

        got: list[int] = []
        try:
            with self.lock:
                sent = 0
                for _ in stream_text(
                    model, tok, ids, s.max_new_tokens, s.temperature, s.top_k, s.seed, mode, s.stop, out=got
                ):
                    while sent < len(got):
                        self.out.put(got[sent])
                        sent += 1
                    if self.cancelled:
                        break
                for t in got[sent:]:
                    self.out.put(t)
            self.out.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the request
            self.out.put(e)

    def __iter__(self):
        while (item := self.out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Choice:
    """One choice's progress: token ids so far and the text already sent."""

    ids: list[int] = field(default_factory=list)
    sent: str = ""
    finish: str | None = None


class TextCutter:
    """Turns a growing list of token ids into text that is safe to send: no half UTF-8 character,
    nothing that could still grow into a stop string, and the stop string itself never sent."""

    def __init__(self, tok: Tokenizer, stop: list[str], skip: set[int]):
        self.tok, self.stop, self.skip = tok, stop, skip

    def text(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i not in self.skip])

    def safe(self, ids: list[int], final: bool) -> tuple[str, bool]:
        """(text that may be sent, whether a stop string was met)."""
        text = self.text(ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut], True
        if final:
            return text.rstrip("\ufffd"), False
        hold = 0
        for s in self.stop:  # the longest tail that is a prefix of a stop string
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        safe = text[: len(text) - hold]
        while safe.endswith("\ufffd"):
            safe = safe[:-1]
        return safe, False


def create_app(
    model: LM,
    tok: Tokenizer,
    name: str,
    api_key: str | None = None,
    timeout: float = 120.0,
    max_batch: int = 16,
) -> FastAPI:
    """The server as an ASGI app (run it with uvicorn; tests start it in a thread)."""
    batcher = Batcher(model, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="adamba", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher
    ctx = model.cfg.max_seq_len
    elastic = hasattr(model, "elastic")
    created = int(time.time())

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError):
        return error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException):
        return error(
            APIError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
        )

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception):
        return error(APIError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"))

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                return error(
                    APIError(
                        401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key"
                    )
                )
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "adamba"}],
        }

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    def check(p: Params, prompt_len: int) -> int:
        """The request's token budget; 4xx for what cannot be served."""
        if p.model and p.model != name:
            raise APIError(
                404,
                f"the model '{p.model}' does not exist; this server has '{name}'",
                param="model",
                code="model_not_found",
            )
        if p.mode is not None and not elastic:
            raise APIError(
                400,
                "this checkpoint was not trained with elastic widths: no compute modes",
                param="mode",
                code="invalid_value",
            )
        room = ctx - prompt_len
        if room < 1:
            raise APIError(
                400,
                f"the prompt is {prompt_len} tokens; the model reads {ctx}",
                param="messages",
                code="context_length_exceeded",
            )
        if p.max_tokens is not None and p.max_tokens > room:
            raise APIError(
                400,
                f"max_tokens {p.max_tokens} + the prompt's {prompt_len} tokens exceed the model's {ctx}-token context",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return p.max_tokens or min(room, 256)

    def start(ids: list[int], p: Params, budget: int, i: int):
        s = Sampling(
            budget,
            p.temperature,
            p.top_k or None,
            p.top_p,
            None if p.seed is None else p.seed + i,
            stop_ids(tok),
        )
        if p.mode is not None:
            return _ModeStream(model, tok, ids, s, p.mode)
        return batcher.submit(ids, s)

    async def pump(streams: list, choices: list[Choice], deadline: float) -> AsyncIterator[int]:
        """Move tokens from the worker threads into `choices`; yields the index of the choice that
        grew (None when it finished). Blocking reads run off the event loop."""
        loop = asyncio.get_running_loop()
        merged: asyncio.Queue = asyncio.Queue()

        def reader(i: int, stream) -> None:
            try:
                for t in stream:
                    loop.call_soon_threadsafe(merged.put_nowait, (i, t))
                loop.call_soon_threadsafe(merged.put_nowait, (i, None))
            except BaseException as e:  # noqa: BLE001
                loop.call_soon_threadsafe(merged.put_nowait, (i, e))

        for i, st in enumerate(streams):
            threading.Thread(target=reader, args=(i, st), daemon=True).start()
        open_ = len(streams)
        while open_:
            left = deadline - time.monotonic()
            try:
                i, t = await asyncio.wait_for(merged.get(), timeout=max(left, 0.001))
            except TimeoutError:
                for st in streams:
                    st.cancel()
                raise APIError(
                    504,
                    f"the request took longer than the server's {timeout:g} s timeout",
                    code="timeout",
                    kind="timeout",
                ) from None
            if isinstance(t, BaseException):
                raise t
            if t is None:
                open_ -= 1
            else:
                choices[i].ids.append(t)
            yield i, t

    async def generate(request: Request, chat: bool):
        body = parse_json(await request.body())
        req = parse_chat(body, MODES) if chat else parse_completion(body, MODES)
        if chat:
            ids = render(tok, req.messages, req.tools).ids
        else:
            ids = [tok.bos_id] + tok.encode(req.prompt)
        budget = check(req, len(ids))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        streams = [start(ids, req, budget, i) for i in range(req.n)]
        choices = [Choice() for _ in streams]
        skip = {tok.special_id("<|tool_call|>"), tok.special_id("<|/tool_call|>")} if chat else set()
        cutter = TextCutter(tok, req.stop, skip)
        deadline = time.monotonic() + timeout
        tools = bool(chat and getattr(req, "tools", None))
        args = (req, rid, streams, choices, cutter, deadline, len(ids), budget, chat, tools)
        if req.stream:
            return StreamingResponse(sse(*args), media_type="text/event-stream")
        return JSONResponse(await whole(*args))

    def finish_of(c: Choice, budget: int, stopped: bool) -> str:
        return "stop" if stopped or len(c.ids) < budget else "length"

    def tool_calls(c: Choice) -> tuple[str, list]:
        msg, _ = parse_reply(tok, c.ids)
        calls = [
            {
                "id": f"call_{uuid.uuid4().hex[:16]}",
                "type": "function",
                "function": {"name": t.name, "arguments": json.dumps(t.arguments)},
            }
            for t in msg.tool_calls
        ]
        return msg.content, calls

    async def whole(req, rid, streams, choices, cutter, deadline, n_prompt, budget, chat, tools):
        stopped = [False] * len(choices)
        async for i, t in pump(streams, choices, deadline):
            if t is not None and not stopped[i] and cutter.stop:
                if cutter.safe(choices[i].ids, False)[1]:
                    stopped[i] = True
                    streams[i].cancel()
        out = []
        for i, c in enumerate(choices):
            text, hit = cutter.safe(c.ids, True)
            reason = finish_of(c, budget, hit or stopped[i])
            if chat:
                msg: dict = {"role": "assistant", "content": text}
                if tools:
                    content, calls = tool_calls(c)
                    if calls:
                        msg, reason = (
                            {"role": "assistant", "content": content or None, "tool_calls": calls},
                            "tool_calls",
                        )
                out.append({"index": i, "message": msg, "finish_reason": reason, "logprobs": None})
            else:
                out.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
        n_out = sum(len(c.ids) for c in choices)
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": name,
            "choices": out,
            "usage": {
                "prompt_tokens": n_prompt * len(choices),
                "completion_tokens": n_out,
                "total_tokens": n_prompt * len(choices) + n_out,
            },
        }

    async def sse(req, rid, streams, choices, cutter, deadline, n_prompt, budget, chat, tools):
        obj = "chat.completion.chunk" if chat else "text_completion"
        created_at = int(time.time())

        def chunk(
            i: int, delta: str | None = None, finish: str | None = None, extra: dict | None = None
        ) -> str:
            if chat:
                d: dict = {} if delta is None else {"content": delta}
                d.update(extra or {})
                choice = {"index": i, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": i, "text": delta or "", "finish_reason": finish, "logprobs": None}
            body = {"id": rid, "object": obj, "created": created_at, "model": name, "choices": [choice]}
            if req.include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        if chat:
            for i in range(len(choices)):
                yield chunk(i, "", extra={"role": "assistant"})
        stopped = [False] * len(choices)
        calling: set[int] = set()  # choices writing a tool call: sent whole at the end
        try:
            async for i, t in pump(streams, choices, deadline):
                c = choices[i]
                if stopped[i] or i in calling:
                    continue
                if tools and t == tok.special_id("<|tool_call|>"):
                    calling.add(i)
                    continue
                if t is None:
                    text, hit = cutter.safe(c.ids, True)
                else:
                    text, hit = cutter.safe(c.ids, False)
                if len(text) > len(c.sent):
                    yield chunk(i, text[len(c.sent) :])
                    c.sent = text
                if hit:
                    stopped[i] = True
                    streams[i].cancel()
        except APIError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        for i, c in enumerate(choices):
            reason = finish_of(c, budget, bool(stopped[i]))
            extra = None
            if tools:
                _, calls = tool_calls(c)
                if calls:
                    reason = "tool_calls"
                    extra = {"tool_calls": [{"index": j, **call} for j, call in enumerate(calls)]}
            yield chunk(i, None, reason, extra)
        if req.include_usage:
            n_out = sum(len(c.ids) for c in choices)
            usage = {
                "prompt_tokens": n_prompt * len(choices),
                "completion_tokens": n_out,
                "total_tokens": n_prompt * len(choices) + n_out,
            }
            yield f"data: {json.dumps({'id': rid, 'object': obj, 'created': created_at, 'model': name, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    return app
