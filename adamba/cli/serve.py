"""`adamba serve`: an OpenAI-compatible HTTP API (and a chat page) over a checkpoint."""

from __future__ import annotations

import argparse
import math
import sys

from adamba.errors import AdambaError


def run(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise AdambaError(f"--port {args.port} must lie in 1..65535")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise AdambaError(f"--timeout {args.timeout} must be a finite number of seconds > 0")
    if not (math.isfinite(args.stream_interval) and 0 <= args.stream_interval <= 1):
        raise AdambaError(f"--stream-interval {args.stream_interval} must lie in [0, 1] seconds")
    if args.threads < 1:
        raise AdambaError(f"--threads {args.threads} must be >= 1")
    if args.max_batch < 1:
        raise AdambaError(f"--max-batch {args.max_batch} must be >= 1")
    import uvicorn

    from adamba.checkpoint import load_model
    from adamba.serve.server import create_app

    model, tok, ckpt = load_model(args.ckpt)
    run_dir = ckpt.path.parent.parent if ckpt.path.parent.name == "checkpoints" else ckpt.path
    name = args.name or run_dir.name
    app = create_app(
        model, tok, name, args.api_key, args.timeout, args.max_batch, args.threads, args.stream_interval
    )
    print(
        f"adamba serve: {name} ({model.num_params():,} params) on http://{args.host}:{args.port}/ "
        f"(OpenAI API at /v1{', API key required' if args.api_key else ''})",
        file=sys.stderr,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    except OSError as e:
        raise AdambaError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None


def register(sub) -> None:
    s = sub.add_parser(
        "serve",
        help="serve a checkpoint: OpenAI-compatible /v1/chat/completions + /v1/completions and a chat page",
        description="An OpenAI-compatible HTTP server over a checkpoint: /health, /v1/models, "
        "/v1/chat/completions and /v1/completions (streaming as server-sent events), a chat page at /. "
        "Concurrent requests decode together (continuous batching). The extension field `mode` "
        "(ghost/whisper/normal/think/auto) picks a compute mode per request.",
        epilog="example:\n  adamba serve --ckpt runs/qs --port 8000\n"
        "  curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        '       -d \'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}\'\n'
        "  python -c \"import openai; c = openai.OpenAI(base_url='http://localhost:8000/v1', api_key='x'); "
        "print(c.chat.completions.create(model='qs', messages=[{'role': 'user', 'content': 'hi'}]))\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--ckpt", required=True, help="run directory or checkpoint folder")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every one)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1")
    s.add_argument("--name", help="the model id clients use (default: the run directory's name)")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take (504 after)")
    s.add_argument("--max-batch", type=int, default=16, help="requests decoding together at most")
    s.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of the decoding worker (default 1: on a CPU a worker thread is 2x slower with more)",
    )
    s.add_argument(
        "--stream-interval",
        type=float,
        default=0.02,
        help="seconds between two streamed chunks of a request at least (tokens meanwhile share one; "
        "0: a chunk per token); 20 ms keeps the HTTP overhead near 6%% for the tiny models",
    )
    s.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    s.set_defaults(func=run)
