"""TokenLoader: deterministic, exact resume, disjoint ranks, BOS-aligned packing, clear errors."""

import json
import random

import numpy as np
import pytest
import torch

from adamba.data.loader import TokenLoader, pack_starts
from adamba.data.shards import read_manifest, write_shards
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError

WORDS = "the a of to and in is was for on that with as by it at from his her they time king day said".split()
B, T = 4, 16


def corpus(n_docs: int = 150, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + "." for _ in range(n_docs)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("loader")
    tok = Tokenizer.train(corpus(200), vocab_size=400)
    m = write_shards(corpus(), tok, root / "train", shard_tokens=700)
    return tok, m


def take(loader, n):
    return [next(loader) for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b)
    )


def test_batches_shape_and_shift(data):
    tok, m = data
    x, y = next(TokenLoader([str(m)], B, T))
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < tok.vocab_size


def test_same_seed_same_stream(data):
    _, m = data
    a = take(TokenLoader([str(m)], B, T, seed=3), 60)  # > 1 epoch: epochs reshuffle deterministically
    b = take(TokenLoader([str(m.parent)], B, T, seed=3, prefetch=0), 60)
    c = take(TokenLoader([str(m)], B, T, seed=4), 60)
    assert same(a, b) and not same(a, c)


def test_epoch_visits_each_window_once(data):
    _, m = data
    loader = TokenLoader([str(m)], 1, T, prefetch=0)
    n = loader.components[0].n_seq
    s = loader._sampler
    seen = [s.window(0, k) for k in range(n)]
    assert len(set(seen)) == n
    assert set(seen) == {s.window(0, k) for k in range(n, 2 * n)}  # epoch 2: same windows...
    assert seen != [s.window(0, k) for k in range(n, 2 * n)]  # ...in a new order


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_continues_exact_stream(data, prefetch):
    _, m = data
    a = TokenLoader([str(m)], B, T, seed=1, prefetch=prefetch)
    take(a, 7)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-serialisable
    n_seq = a.components[0].n_seq
    assert 0 < state["picked"][0] < n_seq  # saved mid-epoch
    rest = take(a, n_seq // B + 5)  # continue across the epoch boundary (reshuffle)
    b = TokenLoader([str(m)], B, T, seed=1, prefetch=prefetch)
    b.load_state_dict(state)
    assert same(take(b, len(rest)), rest)
    b.load_state_dict(state)  # restoring again mid-stream (with batches prefetched) rewinds
    assert same(take(b, 5), rest[:5])


def test_ranks_disjoint_union_is_one_rank_stream(data):
    _, m = data
    one = take(TokenLoader([str(m)], B, T, seed=5), 20)
    r0 = take(TokenLoader([str(m)], B, T, seed=5, rank=0, world_size=2), 10)
    r1 = take(TokenLoader([str(m)], B, T, seed=5, rank=1, world_size=2), 10)
    for k in range(10):
        want = torch.cat([one[2 * k][0], one[2 * k + 1][0]])
        got = torch.cat([r0[k][0], r1[k][0]])
        # same rows at step k (dealt round-robin), no row on both ranks
        assert sorted(map(tuple, want.tolist())) == sorted(map(tuple, got.tolist()))
        assert torch.equal(r0[k][0], want[0::2]) and torch.equal(r1[k][0], want[1::2])


def test_world_size_change_continues_global_stream(data):
    _, m = data
    one = take(TokenLoader([str(m)], 2 * B, T, seed=2), 6)
    a = TokenLoader([str(m)], B, T, seed=2, rank=0, world_size=2)
    take(a, 3)  # 3 steps of 2 ranks x B = first 3 global batches of 2B
    b = TokenLoader([str(m)], 2 * B, T, seed=2)  # resumed on one rank with twice the batch
    b.load_state_dict(a.state_dict())
    assert same(take(b, 3), one[3:])


def test_bos_aligned_packing():
    toks = np.full(30, 5, dtype=np.uint16)
    toks[[0, 9, 20]] = 0
    # p=0: BOS at 0; p=8: BOS at 9 is within slack 2 -> start there (token 8, a doc tail, skipped);
    # p=17: next BOS (20) is 3 away -> start mid-document at 17; p=25: no room for 9 tokens
    assert pack_starts(toks, 0, 8, 2).tolist() == [0, 9, 17]
    rng = np.random.default_rng(0)
    toks = rng.integers(1, 50, 5000).astype(np.uint16)
    toks[rng.random(5000) < 0.15] = 0  # documents of ~7 tokens
    bos_pos = np.flatnonzero(toks == 0)
    starts = pack_starts(toks, 0, 32, 8)
    p = 0
    for s in starts.tolist():
        near = bos_pos[(bos_pos >= p) & (bos_pos <= p + 8)]
        assert s == (near[0] if len(near) else p)  # the first BOS within slack, else p itself
        assert s + 33 <= len(toks)
        p = s + 32
    assert p + 33 > len(toks)  # no room left for another window
    assert np.mean(toks[starts] == 0) > 0.5


def test_errors_name_the_source(data, tmp_path):
    tok, m = data
    with pytest.raises(AdambaError, match="manifest not found: .*nowhere"):
        TokenLoader([str(tmp_path / "nowhere")], B, T)
    with pytest.raises(AdambaError, match="tokenizer"):
        TokenLoader([str(m)], B, T, tokenizer_fingerprint="0" * 64)
    TokenLoader([str(m)], B, T, tokenizer_fingerprint=tok.fingerprint())
    with pytest.raises(AdambaError, match="no sequence"):
        TokenLoader([str(m)], B, 100_000)
    a = TokenLoader([str(m)], B, T)
    with pytest.raises(AdambaError, match="different data"):
        TokenLoader([str(m)], B, T + 1).load_state_dict(a.state_dict())


def test_corrupted_shard_is_refused(data, tmp_path):
    tok, _ = data
    m = write_shards(corpus(seed=9), tok, tmp_path, shard_tokens=500)
    s = read_manifest(m)[1]
    raw = bytearray(s.path.read_bytes())
    raw[10] ^= 0x40
    s.path.write_bytes(bytes(raw))
    with pytest.raises(AdambaError, match=f"corrupted shard .*{s.path.name}"):
        TokenLoader([str(m)], B, T)
    TokenLoader([str(m)], B, T, verify=False)  # opt-out for trusted data


def test_exit_hook_stops_prefetch_threads(data):
    """A loader never closed (or kept alive by a traceback) has its prefetch thread stopped by
    the interpreter-exit hook, before torch is torn down."""
    from adamba.data import loader as mod

    tok, m = data
    keep = TokenLoader([str(m)], B, T, prefetch=2)
    next(keep)
    thread = keep._thread
    assert thread is not None and thread.is_alive()
    mod._stop_prefetch_threads()
    assert not thread.is_alive()


def test_exit_hook_stops_threads_of_collected_loaders(data):
    """A loader dropped just before exit is collected at once, but its thread can still be
    inside a torch call for a moment: the exit hook must still find and join that thread."""
    import gc

    from adamba.data import loader as mod

    tok, m = data
    dropped = TokenLoader([str(m)], B, T, prefetch=2)
    next(dropped)
    thread = dropped._thread
    del dropped
    gc.collect()
    assert any(t is thread for t, _ in mod._THREADS)
    mod._stop_prefetch_threads()
    assert not thread.is_alive()
