"""`adamba serve` through the official `openai` client and raw HTTP: chat and text completions,
streamed and not, n, stop, seed, API key, compute modes, the errors OpenAI clients expect for
bad input (the server stays up), and a bounded load test. The server runs in a thread of this
process on a free 127.0.0.1 port."""

import asyncio
import copy
import dataclasses
import json
import socket
import statistics
import threading
import time

import httpx
import pytest
import uvicorn

from adamba.checkpoint import load_model
from adamba.serve.server import create_app

openai = pytest.importorskip("openai")
KEY = "sk-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            assert time.time() - t0 < 30, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def served(elastic_run):
    model, tok, _ = load_model(elastic_run / "el")
    srv = Server(create_app(model, tok, "el", api_key=KEY, timeout=30))
    yield srv, tok, model
    srv.stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key=KEY, max_retries=0)


MSGS = [{"role": "user", "content": "def add(a, b):"}]


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list().data] == ["el"]
    assert httpx.get(served[0].url + "/health").json()["status"] == "ok"


def test_chat_non_streaming(served, client):
    _, tok, _ = served
    r = client.chat.completions.create(model="el", messages=MSGS, max_tokens=12, temperature=0, seed=1)
    c = r.choices[0]
    assert r.object == "chat.completion" and c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length")
    from adamba.data.chat import Message
    from adamba.data.template import render

    assert r.usage.prompt_tokens == len(render(tok, [Message("user", MSGS[0]["content"])]).ids)
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_equals_non_streaming(client):
    kw = dict(model="el", messages=MSGS, max_tokens=16, temperature=0.8, seed=7)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_n_seed_and_stop(client):
    kw = dict(model="el", prompt="import os\n", max_tokens=20, temperature=1.0, seed=3, n=2)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # a seed reproduces
    assert len(a.choices) == 2 and a.choices[0].text != a.choices[1].text  # choices differ
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **{**kw, "n": 1}))
    assert streamed == a.choices[0].text
    full = a.choices[0].text
    stop = full[5:7]
    cut = client.completions.create(**{**kw, "n": 1, "stop": [stop]}).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    s_cut = "".join(
        c.choices[0].text for c in client.completions.create(stream=True, **{**kw, "n": 1, "stop": stop})
    )
    assert s_cut == cut.text  # streaming never sends text it has to take back


def test_mode_extension_and_unknown_model(client):
    r = client.chat.completions.create(model="el", messages=MSGS, max_tokens=6, extra_body={"mode": "ghost"})
    assert r.choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=MSGS)
    with pytest.raises(openai.BadRequestError, match="mode"):
        client.chat.completions.create(model="el", messages=MSGS, extra_body={"mode": "turbo"})


def test_api_key(served):
    bad = openai.OpenAI(base_url=served[0].url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(served[0].url + "/health").status_code == 200  # outside /v1: open


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        ({"messages": []}, 400, "messages"),
        ({"messages": "hi"}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        ({"messages": MSGS, "max_tokens": 10**9}, 400, "max_tokens"),
        ({"messages": MSGS, "max_tokens": "5"}, 400, "max_tokens"),
        ({"messages": MSGS, "temperature": 7}, 400, "temperature"),
        ({"messages": MSGS, "top_p": 0}, 400, "top_p"),
        ({"messages": MSGS, "n": 100}, 400, "n"),
        ({"messages": MSGS, "stream": "yes"}, 400, "stream"),
        ({"messages": [{"role": "user", "content": "x " * 5000}]}, 400, "messages"),
        ({"messages": MSGS, "model": "nope"}, 404, "model"),
    ],
)
def test_bad_input_is_a_4xx_error_object(served, body, status, param):
    url = served[0].url
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + "/v1/chat/completions", content=data, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["param"] == param
    assert httpx.get(url + "/health").status_code == 200
    r = httpx.get(url + "/v1/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "error" in r.json()


def test_health_answers_during_a_long_generation(served, monkeypatch):
    """Generation is off the event loop: with each decode step slowed to 50 ms, /health still
    answers at once while a 25-token request runs."""
    from adamba.model.batch_decode import BatchDecoder

    real = BatchDecoder.step
    monkeypatch.setattr(BatchDecoder, "step", lambda self, t: time.sleep(0.05) or real(self, t))
    url = served[0].url
    body = {"prompt": "x", "max_tokens": 25, "temperature": 1.0}
    done = []

    def long():
        done.append(
            httpx.post(
                url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
            )
        )

    t = threading.Thread(target=long)
    t.start()
    time.sleep(0.3)
    t0 = time.time()
    assert httpx.get(url + "/health").status_code == 200
    assert time.time() - t0 < 0.3 and t.is_alive()  # answered while the generation runs
    t.join()
    assert done[0].status_code == 200 and done[0].json()["usage"]["completion_tokens"] > 5


def test_streamed_text_never_splits_a_character(served):
    from adamba.serve.server import TextCutter

    _, tok, _ = served
    text = "naïve café 😀 ok"
    ids = tok.encode(text)
    cut = TextCutter(tok, ["ok"], set())
    sent = ""
    for n in range(1, len(ids) + 1):
        safe, hit = cut.safe(ids[:n], n == len(ids))
        assert "\ufffd" not in safe and safe.startswith(sent)
        sent = safe
    assert hit and sent == "naïve café 😀 "


def test_tool_calls(served, monkeypatch):
    """A reply holding a tool call (canned ids: the tiny model never writes one) comes back as
    OpenAI tool_calls with finish_reason tool_calls, streamed and not."""
    from adamba.serve.batcher import Batcher

    _, tok, _ = served
    sp = tok.special_id
    call = tok.encode(json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}}))
    canned = tok.encode("Sure.") + [sp("<|tool_call|>")] + call + [sp("<|/tool_call|>")]

    class Canned:
        def cancel(self):
            pass

    def submit(self, ids, s, sink=None):
        for t in canned + [None]:
            sink(t)
        return Canned()

    monkeypatch.setattr(Batcher, "submit", submit)
    model = copy.copy(served[2])  # the tool specs do not fit the tiny model's 32 tokens: a longer context
    model.cfg = dataclasses.replace(model.cfg, max_seq_len=1024)
    srv = Server(create_app(model, tok, "el"))
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    r = client.chat.completions.create(model="el", messages=MSGS, tools=tools, max_tokens=40)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content == "Sure."
    (tc,) = c.message.tool_calls
    assert (
        tc.type == "function"
        and tc.function.name == "add"
        and json.loads(tc.function.arguments) == {"a": 1, "b": 2}
    )
    chunks = list(
        client.chat.completions.create(model="el", messages=MSGS, tools=tools, max_tokens=40, stream=True)
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    calls = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert text == "Sure." and [t.function.name for t in calls] == ["add"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    srv.stop()


def test_load_concurrent_streaming_clients(served):
    """8 concurrent streaming clients, 24 requests: none lost, none failed; latency reported."""
    url = served[0].url

    async def one(client, i):
        t0 = time.perf_counter()
        body = {"messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 8, "stream": True}
        text, done = "", False
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    msg = json.loads(line[6:])
                    assert "error" not in msg
                    text += "".join(c["delta"].get("content") or "" for c in msg["choices"])
        assert done
        return time.perf_counter() - t0

    async def main():
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:

            async def limited(i):
                async with sem:
                    return await one(client, i)

            return await asyncio.gather(*(limited(i) for i in range(24)))

    lat = sorted(asyncio.run(main()))
    assert len(lat) == 24
    p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(f"load: 24 requests, 8 concurrent: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")


def test_serve_command_errors(tmp_path, capsys):
    from tests.cli.test_bad_args import cli_error

    assert "--port 70000 must lie in 1..65535" in cli_error(
        capsys, "serve", "--ckpt", str(tmp_path), "--port", "70000"
    )
    assert "--timeout" in cli_error(capsys, "serve", "--ckpt", str(tmp_path), "--timeout", "0")
    assert str(tmp_path / "none") in cli_error(capsys, "serve", "--ckpt", str(tmp_path / "none"))


def test_request_timeout(served, monkeypatch):
    """Past --timeout a request gets a 504 error object (streamed: an error event, then [DONE]),
    its generation is cancelled, and the server keeps serving."""
    from adamba.model.batch_decode import BatchDecoder

    real = BatchDecoder.step
    monkeypatch.setattr(BatchDecoder, "step", lambda self, t: time.sleep(0.05) or real(self, t))
    _, tok, model = served
    srv = Server(create_app(model, tok, "el", timeout=0.3))
    try:
        body = {"prompt": "x", "max_tokens": 25, "temperature": 1.0}
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        with httpx.stream(
            "POST", srv.url + "/v1/completions", json={**body, "stream": True}, timeout=30
        ) as r:
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert "timeout" in lines[-2] and lines[-1] == "data: [DONE]"
        monkeypatch.setattr(BatchDecoder, "step", real)
        ok = httpx.post(srv.url + "/v1/completions", json={**body, "max_tokens": 3}, timeout=30)
        assert ok.status_code == 200
    finally:
        srv.stop()
