"""TokenLoader: deterministic, resumable, rank-sharded (x, y) batches from token shards.

The stream, exactly:
1. **Sequences.** Each shard is cut into windows of seq_len+1 tokens (x = window[:-1],
   y = window[1:]); a window never crosses a shard boundary. Packing is BOS-aligned: the next
   window starts at the first BOS within `bos_slack` tokens (default seq_len // 4) of where
   the previous one stopped, so most sequences begin at a document start; if no BOS is that
   close (a long document) it starts right there, mid-document, so no long text is skipped.
   Consecutive windows overlap by one token, so without skips every token is a target once.
2. **Components.** A plain list of manifests is one component (their union). A mixture
   (see adamba.data.mixture) has one component per entry, each with a token weight.
3. **Global stream.** Sequence g = 0, 1, 2, ... of the global stream comes from the component
   that is furthest behind its weight (smooth weighted round-robin: pick argmax of
   w_i * (g + 1) - picked_i, ties to the lowest index), so every prefix of the stream matches
   the weights to within one sequence per component. Within a component, the k-th pick is
   sequence perm_e[k mod n] where perm_e is a permutation seeded by (seed, component, epoch e =
   k // n): every epoch visits each sequence once, in a fresh order; the stream is infinite.
4. **Ranks.** Each step consumes a block of batch_size * world_size global sequences; rank r
   takes block positions r, r + W, r + 2W, ... So ranks are disjoint and their union is the
   one-rank stream (one-rank batches 2k and 2k+1 hold what ranks 0 and 1 see at step k, W=2).
5. **Position.** state_dict() is the global position after the last batch handed out (not the
   prefetched ones): the next global sequence index and the picks per component. It is the
   same on every rank. load_state_dict() continues the exact stream. If world_size or
   batch_size change between save and restore, the global stream still continues at the first
   sequence no rank has consumed (nothing skipped, nothing repeated); only the split of later
   sequences across ranks differs from an uninterrupted run.
SFT shards (adamba/data/sft.py) carry a loss mask beside the tokens: a target the mask marks 0
(system and user turns, tool results) is -100 in y, so only the assistant's tokens are trained.
A background thread prepares the next `prefetch` batches (numpy slices of memory-mapped
shards), so the trainer does not wait on disk.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import queue
import threading
import weakref
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adamba.data.mixture import is_mixture_file, load_components
from adamba.data.shards import ShardInfo, check_shard, load_mask, load_tokens, manifest_path, read_manifest
from adamba.errors import AdambaError

STATE_VERSION = 1


def pack_starts(tokens: np.ndarray, bos: int, seq_len: int, slack: int) -> np.ndarray:
    """Start offsets of the BOS-aligned windows of one shard (policy in the module docstring)."""
    n, span = len(tokens), seq_len + 1
    if n < span:
        return np.zeros(0, dtype=np.int64)
    bos_pos = np.flatnonzero(np.asarray(tokens) == bos).tolist()
    starts, p, j = [], 0, 0
    while p + span <= n:
        j = bisect_left(bos_pos, p, j)
        s = p
        if j < len(bos_pos) and bos_pos[j] - p <= slack and bos_pos[j] + span <= n:
            s = bos_pos[j]
        starts.append(s)
        p = s + seq_len
    return np.asarray(starts, dtype=np.int64)


@dataclass
class Component:
    """One weighted part of the stream: its shards and the index of their windows."""

    name: str
    weight: float
    shards: list[ShardInfo]
    seq_shard: np.ndarray  # window -> shard index
    seq_start: np.ndarray  # window -> start offset in that shard

    @property
    def n_seq(self) -> int:
        return len(self.seq_start)


def _index(name: str, weight: float, shards: list[ShardInfo], seq_len: int, slack: int) -> Component:
    seq_shard, seq_start = [], []
    for i, s in enumerate(shards):
        st = pack_starts(load_tokens(s), s.bos, seq_len, slack)
        seq_start.append(st)
        seq_shard.append(np.full(len(st), i, dtype=np.int32))
    comp = Component(name, weight, shards, np.concatenate(seq_shard), np.concatenate(seq_start))
    if comp.n_seq == 0:
        total = sum(s.tokens for s in shards)
        raise AdambaError(
            f"{name}: {total} tokens yield no sequence of seq_len+1={seq_len + 1} tokens within a shard; "
            "use a shorter data.seq_len or more data"
        )
    return comp


def resolve_sources(
    sources: list[str] | str, verify: bool = True
) -> tuple[list[tuple[str, float, list[ShardInfo]]], str, bool]:
    """(name, weight, shards) per component, a data id, and whether the shards were already
    checked. A list of manifests is one component; a stage TOML or snapshot JSON
    (adamba.data.mixture) gives one component per source, and a snapshot checks its files."""
    if isinstance(sources, (str, Path)):
        sources = [str(sources)]
    if not sources:
        raise AdambaError("no data sources given: list manifest.jsonl files or shard folders")
    mixes = [s for s in sources if is_mixture_file(s)]
    if mixes:
        if len(sources) > 1:
            raise AdambaError(
                f"give either one stage/snapshot file or manifests, not both: {', '.join(sources)}"
            )
        comps, data_id = load_components(mixes[0], verify=verify)
        return comps, data_id, not data_id.startswith("stage:")  # a snapshot checked its files
    shards = []
    for s in sources:
        shards.extend(read_manifest(s))
    name = str(manifest_path(sources[0])) if len(sources) == 1 else f"{len(sources)} manifests"
    return [(name, 1.0, shards)], "manifests", False


class _Sampler:
    """The global stream of (component, window) picks; plain data, cheap to copy."""

    def __init__(self, comps: list[Component], seed: int):
        self.comps, self.seed = comps, seed
        total = sum(c.weight for c in comps)
        self.w = [c.weight / total for c in comps]
        self.g = 0
        self.picked = [0] * len(comps)
        self._perm: dict[int, tuple[int, np.ndarray]] = {}

    def next_component(self) -> int:
        """Advance the global stream by one sequence; returns its component."""
        if len(self.w) == 1:
            i = 0
        else:
            need = [w * (self.g + 1) - p for w, p in zip(self.w, self.picked)]
            i = max(range(len(need)), key=need.__getitem__)
        self.g += 1
        self.picked[i] += 1
        return i

    def window(self, comp: int, k: int) -> tuple[int, int]:
        """(shard index, start) of the k-th pick (0-based) from component `comp`."""
        c = self.comps[comp]
        epoch, pos = divmod(k, c.n_seq)
        cached = self._perm.get(comp)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, comp, epoch])
            cached = (epoch, rng.permutation(c.n_seq))
            self._perm[comp] = cached
        w = int(cached[1][pos])
        return int(c.seq_shard[w]), int(c.seq_start[w])

    def block(self, batch_size: int, world_size: int, rank: int) -> list[tuple[int, int]]:
        """Advance by one step's block; returns this rank's (component, k) picks."""
        mine = []
        for j in range(batch_size * world_size):
            i = self.next_component()
            if j % world_size == rank:
                mine.append((i, self.picked[i] - 1))
        return mine


class TokenLoader:
    """Infinite iterator of (x, y) int64 tensors [batch_size, seq_len]; see the module docstring.

    `sources`: manifest files/folders (one component), or one stage TOML / snapshot JSON.
    `verify`: re-hash every shard at open and refuse a corrupted one (a snapshot always checks
    its files; off, only sizes are checked). `data_id` names the data for the run record: the
    snapshot id (name@version#hash), "stage:NAME", or "manifests".
    """

    def __init__(
        self,
        sources: list[str] | str,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        tokenizer_fingerprint: str | None = None,
        verify: bool = True,
        prefetch: int = 2,
        bos_slack: int | None = None,
    ):
        if batch_size < 1 or seq_len < 1:
            raise AdambaError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise AdambaError(f"rank {rank} is outside world_size {world_size}")
        self.batch_size, self.seq_len, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.prefetch = prefetch
        slack = seq_len // 4 if bos_slack is None else bos_slack
        comps = []
        resolved, self.data_id, checked = resolve_sources(sources, verify)
        for name, weight, shards in resolved:
            for s in shards:
                if tokenizer_fingerprint and s.tokenizer != tokenizer_fingerprint:
                    raise AdambaError(
                        f"{name}: shard {s.path} was made by tokenizer {s.tokenizer[:12]}, not the one in use "
                        f"({tokenizer_fingerprint[:12]}); re-run `adamba data shards` with this tokenizer"
                    )
                if verify and not checked and (problem := check_shard(s)):
                    raise AdambaError(f"{name}: corrupted shard {problem}; run `adamba data verify`")
            comps.append(_index(name, weight, shards, seq_len, slack))
        fps = {s.tokenizer for c in comps for s in c.shards}
        if len(fps) > 1:
            raise AdambaError(
                f"the data mixes shards from {len(fps)} different tokenizers; re-shard with one"
            )
        self.components = comps
        self._tokens = [[load_tokens(s) for s in c.shards] for c in comps]
        # SFT shards carry a loss mask: targets it marks 0 (prompts, tool results) become -100
        self._masks = [[load_mask(s) for s in c.shards] for c in comps]
        self.masked = any(m is not None for ms in self._masks for m in ms)
        self._sampler = _Sampler(comps, seed)
        self._sig = self._signature(comps, seq_len, slack)
        self._state = self._sampler_state()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None

    # ---- stream -------------------------------------------------------------------------
    @staticmethod
    def _signature(comps: list[Component], seq_len: int, slack: int) -> str:
        desc = [
            (
                c.weight,
                [(s.sha256, s.tokens, s.mask_sha256) if s.mask else (s.sha256, s.tokens) for s in c.shards],
            )
            for c in comps
        ]
        return hashlib.sha256(json.dumps([seq_len, slack, desc]).encode()).hexdigest()[:16]

    def _sampler_state(self) -> dict:
        s = self._sampler
        return {
            "version": STATE_VERSION,
            "seed": s.seed,
            "next": s.g,
            "picked": list(s.picked),
            "data": self._sig,
        }

    def _make_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        picks = self._sampler.block(self.batch_size, self.world_size, self.rank)
        buf = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        keep = np.ones((self.batch_size, self.seq_len + 1), dtype=bool) if self.masked else None
        for row, (comp, k) in enumerate(picks):
            shard, start = self._sampler.window(comp, k)
            buf[row] = self._tokens[comp][shard][start : start + self.seq_len + 1]
            mask = self._masks[comp][shard]
            if mask is not None:
                keep[row] = mask[start : start + self.seq_len + 1] != 0
        x, y = torch.from_numpy(buf[:, :-1].copy()), torch.from_numpy(buf[:, 1:].copy())
        if keep is not None:
            y[torch.from_numpy(~keep[:, 1:])] = -100
        return x, y

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefetch <= 0:
            x, y = self._make_batch()
            self._state = self._sampler_state()
            return x, y
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._thread = None
            raise item
        x, y, self._state = item
        return x, y

    def _start(self) -> None:
        self._queue, self._stop = queue.Queue(maxsize=self.prefetch), threading.Event()
        # the thread holds no reference to self, so an abandoned loader is collected and its
        # __del__ stops the thread
        self._thread = threading.Thread(
            target=_produce, args=(weakref.ref(self), self._queue, self._stop), daemon=True
        )
        self._thread.start()
        _THREADS.difference_update([p for p in _THREADS if not p[0].is_alive()])
        _THREADS.add((self._thread, self._stop))

    def close(self) -> None:
        """Stop the prefetch thread and drop prefetched batches (restarts on the next batch)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._restore(self._state)  # the thread ran ahead of what was handed out

    def __del__(self):
        if getattr(self, "_stop", None) is not None:
            self._stop.set()

    # ---- position -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-serialisable position after the last batch returned (same on every rank)."""
        return dict(self._state, picked=list(self._state["picked"]))

    def load_state_dict(self, d: dict) -> None:
        """Continue from a state_dict(); refuses a state saved for other data or seq_len."""
        if d.get("version") != STATE_VERSION or d.get("data") != self._sig:
            raise AdambaError(
                "loader state was saved for different data (shards, weights or seq_len changed); "
                "resume with the original data config or start a new run"
            )
        self.close()
        self._restore(d)

    def _restore(self, d: dict) -> None:
        s = _Sampler(self.components, int(d["seed"]))
        s.g, s.picked = int(d["next"]), [int(p) for p in d["picked"]]
        self._sampler = s
        self._state = self._sampler_state()


# (thread, stop event) of every prefetch thread started and not yet seen finished. Threads, not
# loaders: a loader collected just before exit has left a WeakSet while its thread still winds
# down (measured: 1 process in 40 aborted when a script dropped its loader and exited at once)
_THREADS: set[tuple[threading.Thread, threading.Event]] = set()


@atexit.register
def _stop_prefetch_threads() -> None:
    """At interpreter exit, stop every prefetch thread still running (a loader kept alive by a
    traceback, never closed, or collected a moment ago) before torch is torn down: a daemon
    thread caught inside a torch call during shutdown aborts the process ("terminate called
    without an active exception") after all the work is done."""
    for thread, stop in list(_THREADS):
        stop.set()
        thread.join(timeout=2.0)


def _produce(ref: weakref.ref, q: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        loader = ref()
        if loader is None:
            return
        try:
            x, y = loader._make_batch()
            item = (x, y, loader._sampler_state())
        except BaseException as e:  # hand the error to the consumer
            item = e
        del loader
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        if isinstance(item, BaseException):
            return
