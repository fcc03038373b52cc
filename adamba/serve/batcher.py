"""Requests decoding together: a worker thread runs one BatchDecoder (adamba/model/batch_decode.py)
and every request that arrives joins it between steps, so concurrent clients share each decode
step instead of queueing behind each other.

Each request samples with its own settings and its own seeded generator, so its tokens depend on
its seed, never on which other requests shared its steps. Callers (the HTTP server, benchmarks)
`submit` and read the token ids from the returned stream, from any thread.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from adamba.model.batch_decode import BatchDecoder
from adamba.model.lm import LM


@dataclass
class Sampling:
    """How one request picks its tokens."""

    max_new_tokens: int = 64
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    stop: set[int] = field(default_factory=set)  # token ids that end the request (not emitted)


def sample(logits: torch.Tensor, s: Sampling, gen: torch.Generator) -> int:
    """One token from last-position logits [V]: greedy, or temperature + top-k + nucleus (top-p:
    the smallest set of most likely tokens whose probability reaches p)."""
    if s.temperature <= 0:
        return int(logits.argmax())
    lg = logits.float() / s.temperature
    if s.top_k:
        kth = torch.topk(lg, min(s.top_k, lg.shape[-1])).values[-1]
        lg = lg.masked_fill(lg < kth, float("-inf"))
    if s.top_p < 1.0:
        probs, order = F.softmax(lg, -1).sort(descending=True)
        drop = probs.cumsum(-1) - probs >= s.top_p  # tokens after the set already reached p
        lg[order[drop]] = float("-inf")
    return int(torch.multinomial(F.softmax(lg, -1), 1, generator=gen))


class _Request:
    def __init__(self, rid: int, ids: list[int], s: Sampling, device, sink=None):
        self.id, self.ids, self.s = rid, ids, s
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(s.seed if s.seed is not None else torch.seed())
        self.queue: queue.Queue = queue.Queue()
        self.put = sink or self.queue.put  # token ids, then None (done) or an exception
        self.n = 0
        self.cancelled = False


class Stream:
    """The token ids of one request, as they come (iterate); `cancel` stops it at the next step."""

    def __init__(self, req: _Request):
        self._req = req

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self._req.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self._req.cancelled = True


class Batcher:
    """The decoding worker: up to `max_batch` requests decode together; more wait their turn."""

    def __init__(self, model: LM, max_batch: int = 16, threads: int = 1):
        self.model, self.max_batch, self.threads = model, max_batch, threads
        self.device = next(model.parameters()).device
        self._waiting: queue.Queue = queue.Queue()
        self._ids = itertools.count()
        self._closed = False
        self.steps = 0  # decode steps run (a step serves every row in the batch)
        self.rows_stepped = 0  # rows served by those steps: rows_stepped / steps = mean batch
        self._thread = threading.Thread(target=self._run, name="adamba-batcher", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int], s: Sampling, sink=None) -> Stream:
        """Queue a request. Its token ids come through the returned Stream, or, with `sink`,
        are handed to sink(token) as they come, then sink(None) or sink(exception), from the
        worker thread (no thread of the caller's waits on a queue: the server's event loop
        takes them through call_soon_threadsafe)."""
        req = _Request(next(self._ids), ids, s, self.device, sink)
        self._waiting.put(req)
        return Stream(req)

    def close(self) -> None:
        self._closed = True
        self._waiting.put(None)
        self._thread.join(timeout=10)

    def _emit(self, req: _Request, tok: int) -> bool:
        """Hand `tok` to the request; True when the request is finished."""
        if req.cancelled or tok in req.s.stop:
            return True
        req.put(tok)
        req.n += 1
        return req.n >= req.s.max_new_tokens

    def _run(self) -> None:
        # CPU threads for this worker's ops. Measured (torch 2.13, 2 cores, tiny-cpu decode): a
        # second Python thread driving a 2-thread OpenMP team decodes 2.2-2.7x slower than the main
        # thread does; with 1 thread it is within 5-10% of the main thread's best.
        if self.device.type == "cpu" and self.threads > 0:
            torch.set_num_threads(self.threads)
        dec = BatchDecoder(self.model)
        live: dict[int, _Request] = {}
        nxt: dict[int, int] = {}  # the token each row feeds at the next step
        while not self._closed:
            try:  # admit waiting requests; block only when there is nothing to decode
                while len(live) < self.max_batch:
                    req = self._waiting.get(block=not live)
                    if req is None:
                        return
                    try:
                        logits = dec.add(req.id, req.ids)
                    except BaseException as e:  # a bad request fails alone
                        req.put(e)
                        continue
                    live[req.id] = req
                    tok = sample(logits, req.s, req.gen)
                    if self._emit(req, tok):
                        self._finish(dec, live, {req.id})
                    else:
                        nxt[req.id] = tok
            except queue.Empty:
                pass
            if not live:
                continue
            try:
                logits = dec.step(torch.tensor([nxt[r] for r in dec.ids], device=self.device))
            except BaseException as e:  # nothing can continue: fail every live request
                for req in live.values():
                    req.put(e)
                dec, live, nxt = BatchDecoder(self.model), {}, {}
                continue
            self.steps += 1
            self.rows_stepped += len(dec)
            done = set()
            for j, r in enumerate(dec.ids):
                req = live[r]
                tok = sample(logits[j], req.s, req.gen)
                if self._emit(req, tok):
                    done.add(r)
                else:
                    nxt[r] = tok
            self._finish(dec, live, done)

    @staticmethod
    def _finish(dec: BatchDecoder, live: dict, done: set[int]) -> None:
        if not done:
            return
        dec.remove(done)
        for r in done:
            live.pop(r).put(None)
