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
import collections
import contextlib
import functools
import json
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
from adamba.data.tokenizer import N_SPECIAL, Tokenizer
from adamba.model.elastic import MODES
from adamba.model.lm import LM
from adamba.serve.batcher import Batcher, Sampling
from adamba.serve.openai_api import APIError, Params, parse_chat, parse_completion, parse_json

STATIC = Path(__file__).parent / "static"


class _ModeStream:
    """A compute-mode generation in a worker thread, handing its tokens to `sink` like the
    batcher does (token ids, then None or an exception)."""

    lock = threading.Lock()  # one mode generation at a time (the elastic runner is per call)

    def __init__(self, model: LM, tok: Tokenizer, ids: list[int], s: Sampling, mode: str, sink):
        self.cancelled = False
        threading.Thread(target=self._run, args=(model, tok, ids, s, mode, sink), daemon=True).start()

    def _run(self, model, tok, ids, s, mode, sink) -> None:
        from adamba.serve.generate import stream_text

        got: list[int] = []
        try:
            with self.lock:
                sent = 0
                pieces = stream_text(
                    model, tok, ids, s.max_new_tokens, s.temperature, s.top_k, s.seed, mode, s.stop, out=got
                )
                for _ in pieces:
                    for t in got[sent:]:
                        sink(t)
                    sent = len(got)
                    if self.cancelled:
                        break
                for t in got[sent:]:
                    sink(t)
            sink(None)
        except BaseException as e:  # noqa: BLE001 - handed to the request
            sink(e)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Choice:
    """One choice's progress: token ids so far, the text already sent, and a decoded prefix
    (`k` ids, ending on a whole character) so each new token decodes only the tail."""

    ids: list[int] = field(default_factory=list)
    sent: str = ""
    k: int = 0
    prefix: str = ""


class TextCutter:
    """Turns a growing list of token ids into text that is safe to send: no half UTF-8 character,
    nothing that could still grow into a stop string, and the stop string itself never sent."""

    def __init__(self, tok: Tokenizer, stop: list[str], skip: set[int]):
        self.tok, self.stop, self.skip = tok, stop, skip

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i not in self.skip])

    def text(self, ids: list[int], memo: Choice | None = None) -> str:
        if memo is None:
            return self._decode(ids)
        tail = self._decode(ids[memo.k :])
        if not tail.endswith("\ufffd"):  # a whole character: later tokens cannot change it
            memo.prefix, memo.k, tail = memo.prefix + tail, len(ids), ""
        return memo.prefix + tail

    def safe(self, ids: list[int], final: bool, memo: Choice | None = None) -> tuple[str, bool]:
        """(text that may be sent, whether a stop string was met)."""
        text = self.text(ids, memo)
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
    threads: int = 1,
    stream_interval: float = 0.02,
) -> FastAPI:
    """The server as an ASGI app (run it with uvicorn; tests start it in a thread). `threads`:
    CPU threads of the decoding worker (see Batcher); `stream_interval`: the shortest time
    between two streamed chunks of a request (tokens arriving meanwhile share a chunk)."""
    batcher = Batcher(model, max_batch, threads)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="adamba", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher
    app.state.stream_interval = stream_interval
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

    def start(ids: list[int], p: Params, budget: int, i: int, sink):
        s = Sampling(
            budget,
            p.temperature,
            p.top_k or None,
            p.top_p,
            None if p.seed is None else p.seed + i,
            stop_ids(tok),
        )
        if p.mode is not None:
            return _ModeStream(model, tok, ids, s, p.mode, sink)
        return batcher.submit(ids, s, sink)

    async def pump(
        starts: list, streams: list, choices: list[Choice], deadline: float
    ) -> AsyncIterator[tuple]:
        """Start each choice's generation (`starts`: functions of a sink) and move its tokens
        into `choices`; yields (choice index, token or None when it finished, whether nothing
        else is waiting now). The worker threads hand tokens to the event loop directly."""
        loop = asyncio.get_running_loop()
        pending: collections.deque = collections.deque()  # (choice, token) from the worker threads
        ready = asyncio.Event()
        woken = [False]  # a wake-up is on its way: the workers need not send another

        def sink(i: int, x) -> None:  # runs in a worker thread
            pending.append((i, x))
            if not woken[0]:
                woken[0] = True
                loop.call_soon_threadsafe(ready.set)

        for i, begin in enumerate(starts):
            streams.append(begin(functools.partial(sink, i)))
        open_ = len(streams)
        last_flush = 0.0
        while open_:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(ready.wait(), timeout=max(left, 0.001))
            except TimeoutError:
                for st in streams:
                    st.cancel()
                raise APIError(
                    504,
                    f"the request took longer than the server's {timeout:g} s timeout",
                    code="timeout",
                    kind="timeout",
                ) from None
            # at most one flush per stream_interval: tokens arriving meanwhile join the next one
            wait = stream_interval - (time.monotonic() - last_flush)
            if wait > 0:
                await asyncio.sleep(wait)
            ready.clear()
            woken[0] = False
            batch = []
            while pending:
                batch.append(pending.popleft())
            last_flush = time.monotonic()
            for j, (i, t) in enumerate(batch):
                if isinstance(t, BaseException):
                    raise t
                if t is None:
                    open_ -= 1
                else:
                    choices[i].ids.append(t)
                yield i, t, j == len(batch) - 1

    async def generate(request: Request, chat: bool):
        body = parse_json(await request.body())
        req = parse_chat(body, MODES) if chat else parse_completion(body, MODES)
        if chat:
            ids = render(tok, req.messages, req.tools).ids
        else:
            ids = [tok.bos_id] + tok.encode(req.prompt)
        budget = check(req, len(ids))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        streams: list = []  # filled by pump as it starts them
        starts = [functools.partial(start, ids, req, budget, i) for i in range(req.n)]
        choices = [Choice() for _ in starts]
        cutter = TextCutter(tok, req.stop, set(range(N_SPECIAL)))  # control tokens are not text
        deadline = time.monotonic() + timeout
        tools = bool(chat and getattr(req, "tools", None))
        args = (req, rid, starts, streams, choices, cutter, deadline, len(ids), budget, chat, tools)
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

    async def whole(req, rid, starts, streams, choices, cutter, deadline, n_prompt, budget, chat, tools):
        stopped = [False] * len(choices)
        async for i, t, _ in pump(starts, streams, choices, deadline):
            if t is not None and not stopped[i] and cutter.stop:
                if cutter.safe(choices[i].ids, False, choices[i])[1]:
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

    async def sse(req, rid, starts, streams, choices, cutter, deadline, n_prompt, budget, chat, tools):
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
        calling: dict[int, int] = {}  # choices writing a tool call -> where their text ends
        try:
            dirty: dict[int, bool] = {}  # choices with new tokens -> finished
            async for i, t, last in pump(starts, streams, choices, deadline):
                if not stopped[i] and i not in calling:
                    if tools and t == tok.special_id("<|tool_call|>"):
                        calling[i] = len(choices[i].ids) - 1  # the text ends before the call
                        dirty[i] = True
                    else:
                        dirty[i] = dirty.get(i, False) or t is None
                if not last:  # more is already waiting: send it all in one chunk
                    continue
                for j, final in dirty.items():
                    c = choices[j]
                    ids = c.ids[: calling[j]] if j in calling else c.ids
                    text, hit = cutter.safe(ids, final, c)
                    if len(text) > len(c.sent):
                        yield chunk(j, text[len(c.sent) :])
                        c.sent = text
                    if hit:
                        stopped[j] = True
                        streams[j].cancel()
                dirty = {}
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
