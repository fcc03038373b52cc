"""Serving speed, each figure beside its peer in one run (tiny-cpu's shape, random weights):

1. single-stream decode tokens/s: adamba's decoder vs transformers' `generate` on the same
   weights (adamba with Llama's math: SwiGLU, no QK-norm; hf_twins.hf_llama), greedy, the same
   prompt and length, interleaved repeats;
2. the HTTP server's overhead: one streaming client of `adamba serve` vs the same request
   decoded in-process by the batcher (the same tokens: same seed);
3. aggregate tokens/s at 1, 4 and 16 concurrent streaming clients through the server
   (continuous batching), and the mean batch the decode steps ran at.

    python benchmarks/serve.py [--new 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn
from common import write_result

from adamba.config import load_config
from adamba.data.tokenizer import Tokenizer
from adamba.model import decode
from adamba.model.lm import LM
from adamba.nn.hf_twins import hf_llama
from adamba.serve.batcher import Batcher, Sampling
from adamba.serve.server import create_app

ROOT = Path(__file__).resolve().parents[1]


def tokenizer() -> Tokenizer:
    text = ROOT.parent / "shared/data/tinyshakespeare/input.txt"
    if text.is_file():
        texts = [text.read_text()[:300_000]]
    else:  # no shared data: the stdlib stands in
        import sysconfig

        lib = Path(sysconfig.get_paths()["stdlib"])
        texts = [(lib / m).read_text() for m in ("textwrap.py", "string.py", "shlex.py")]
    return Tokenizer.train(texts, 2048)


def single_stream(model: LM, prompt: list[int], new: int, reps: int) -> dict:
    hf = hf_llama(model).eval()
    idx = torch.tensor([prompt])
    times: dict[str, list[float]] = {"adamba": [], "transformers": []}
    for _ in range(reps):  # interleaved: noise hits both alike
        t = time.perf_counter()
        ours = [int(x[0]) for x in decode.generate(model, idx, new, temperature=0.0)]
        times["adamba"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            theirs = hf.generate(
                idx,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        times["transformers"].append(time.perf_counter() - t)
    # random weights give near-flat logits, so greedy paths part at the first near-tie; the same
    # math is shown by the first step's logits instead
    with torch.no_grad():
        diff = float((model(idx)[0][0, -1] - hf(idx).logits[0, -1]).abs().max())
    agree = next((i for i, (a, b) in enumerate(zip(ours, theirs[0, len(prompt) :].tolist())) if a != b), new)
    tok_s = {k: new / statistics.median(v) for k, v in times.items()}
    return {
        "tok_s": tok_s,
        "ratio": tok_s["adamba"] / tok_s["transformers"],
        "first_step_max_logit_diff": diff,
        "tokens_before_paths_part": agree,
        "new": new,
    }


class Server:
    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1/completions"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def stream(client: httpx.AsyncClient, url: str, body: dict) -> int:
    """One streaming request; its completion tokens (from the usage chunk)."""
    n = 0
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                msg = json.loads(line[6:])
                if msg.get("usage"):
                    n = msg["usage"]["completion_tokens"]
    return n


def clients(url: str, n_clients: int, per_client: int, new: int, prompt: str) -> dict:
    async def main():
        async with httpx.AsyncClient(timeout=600) as client:

            async def one(c):
                total = 0
                for k in range(per_client):
                    body = {"prompt": prompt, "max_tokens": new, "temperature": 1.0, "seed": 1000 * c + k}
                    total += await stream(client, url, body)
                return total

            t = time.perf_counter()
            tokens = await asyncio.gather(*(one(c) for c in range(n_clients)))
            return sum(tokens), time.perf_counter() - t

    tokens, secs = asyncio.run(main())
    return {
        "clients": n_clients,
        "requests": n_clients * per_client,
        "tokens": tokens,
        "tok_s": tokens / secs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=200, help="tokens per request")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="for the single-stream comparison (main thread)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = tokenizer()
    cfg = load_config(
        "tiny-cpu", ["model.mlp.act=swiglu", "model.attn.qk_norm=false", f"model.vocab_size={tok.vocab_size}"]
    )
    torch.manual_seed(0)
    model = LM(cfg.model).eval()
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    prompt = [tok.bos_id] + tok.encode(text)
    new = min(a.new, cfg.model.max_seq_len - len(prompt))

    s1 = single_stream(model, prompt, new, a.reps)
    print(f"1. single stream, {new} new tokens, greedy (tiny-cpu shape, {model.num_params():,} params)")
    for k, v in s1["tok_s"].items():
        print(f"  {k:<14} {v:>8,.0f} tok/s")
    print(
        f"  adamba / transformers: {s1['ratio']:.2f}x (first-step logits differ by {s1['first_step_max_logit_diff']:.1e}; "
        f"greedy paths part after {s1['tokens_before_paths_part']} tokens at a near-tie)"
    )

    app = create_app(model, tok, "tiny", timeout=600, max_batch=16)  # its worker: 1 thread (Batcher)
    srv = Server(app)
    batcher: Batcher = app.state.batcher
    body = {"prompt": text, "max_tokens": new, "temperature": 1.0, "seed": 5}
    direct, http = [], []
    n_tok = 0
    for _ in range(a.reps):  # interleaved; the client is another process, as clients are
        t = time.perf_counter()
        s = Sampling(new, 1.0, None, 1.0, 5, {tok.special_id("<|end|>"), tok.eos_id})
        n_tok = len(list(batcher.submit(prompt, s)))
        direct.append(n_tok / (time.perf_counter() - t))
        res = subprocess.run(
            [sys.executable, __file__, "client", srv.url, json.dumps(body)], capture_output=True, text=True
        )
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        n, secs = json.loads(res.stdout)
        http.append(n / secs)
    s2 = {"direct_tok_s": statistics.median(direct), "http_tok_s": statistics.median(http), "tokens": n_tok}
    s2["overhead"] = 1 - s2["http_tok_s"] / s2["direct_tok_s"]
    print(
        f"\n2. one streaming client (another process) through HTTP vs the batcher in-process ({n_tok} tokens)"
    )
    print(
        f"  in-process {s2['direct_tok_s']:,.0f} tok/s, HTTP {s2['http_tok_s']:,.0f} tok/s: overhead {s2['overhead']:.1%}"
        f" (chunks at least {app.state.stream_interval * 1000:.0f} ms apart)"
    )

    s3 = []
    for n in (1, 4, 16):
        steps0, rows0 = batcher.steps, batcher.rows_stepped
        r = clients(srv.url, n, 2, new, text)
        r["mean_batch"] = (batcher.rows_stepped - rows0) / max(1, batcher.steps - steps0)
        s3.append(r)
    srv.stop()
    print(f"\n3. concurrent streaming clients, 2 requests each of up to {new} tokens")
    print(f"  {'clients':>7} {'tokens':>7} {'tok/s':>8} {'vs 1':>6} {'mean batch':>11}")
    for r in s3:
        print(
            f"  {r['clients']:>7} {r['tokens']:>7} {r['tok_s']:>8,.0f} {r['tok_s'] / s3[0]['tok_s']:>5.2f}x "
            f"{r['mean_batch']:>11.1f}"
        )
    path = write_result(
        "serve", {"single_stream": s1, "http_overhead": s2, "concurrency": s3, "threads": a.threads}
    )
    print(f"\n-> {path}")


def client_main(url: str, body: str) -> None:
    """`serve.py client URL BODY`: one streaming request; prints [tokens, seconds]."""

    async def run():
        async with httpx.AsyncClient(timeout=600) as client:
            await stream(client, url, {"prompt": "warm-up", "max_tokens": 2})  # connection, first-call costs
            t = time.perf_counter()
            n = await stream(client, url, json.loads(body))
            return n, time.perf_counter() - t

    print(json.dumps(asyncio.run(run())))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "client":
        client_main(sys.argv[2], sys.argv[3])
    else:
        main()
