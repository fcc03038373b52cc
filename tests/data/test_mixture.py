"""Mixtures and snapshots: token weights honoured, streams deterministic, frozen data enforced."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from adamba.data.loader import TokenLoader
from adamba.data.mixture import freeze, load_snapshot, load_stage, plan
from adamba.data.shards import read_manifest, write_shards
from adamba.errors import AdambaError

WEIGHTS = {"web": 50, "code": 20, "math": 10, "synth": 10, "arc": 10}
B, T = 4, 32


class IdTokenizer:
    """Text "5 7 9" -> ids [5, 7, 9]: each source gets its own id range, so a batch row shows
    which source it came from."""

    vocab_size, bos_id = 1000, 0

    def __init__(self, fp="a" * 64):
        self.fp = fp

    def encode_batch(self, texts):
        return [[int(w) for w in t.split()] for t in texts]

    def fingerprint(self):
        return self.fp


def make_sources(root, sizes=(3000, 800, 2500, 400, 1500), fp="a" * 64):
    rng = np.random.default_rng(0)
    for k, (name, n_docs) in enumerate(zip(WEIGHTS, sizes)):
        lo = 100 * (k + 1)
        docs = [
            " ".join(map(str, rng.integers(lo, lo + 100, rng.integers(5, 60)))) for _ in range(n_docs // 10)
        ]
        write_shards(docs, IdTokenizer(fp), root / "shards" / name, shard_tokens=2000, source=name)


def write_stage(root, weights=WEIGHTS, name="stage1"):
    lines = [f'name = "{name}"']
    for src, w in weights.items():
        lines += [f"[sources.{src}]", f"weight = {w}", f'manifests = ["shards/{src}"]']
    p = root / f"{name}.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("mix")
    make_sources(root)
    return write_stage(root)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def same(a, b):
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_stage_parsing(stage, tmp_path):
    mix = load_stage(stage)
    assert mix.name == "stage1" and [s.name for s in mix.sources] == list(WEIGHTS)
    assert [s.weight for s in mix.sources] == pytest.approx([0.5, 0.2, 0.1, 0.1, 0.1])
    assert all(m.name == "manifest.jsonl" for s in mix.sources for m in s.manifests)
    rows = plan(mix)
    assert rows[0]["tokens"] == sum(s.tokens for s in read_manifest(stage.parent / "shards" / "web"))
    bad = tmp_path / "bad.toml"
    for text, msg in [
        ("[sources.a]\nweight = 1\nmanifests = 'x'\nextra = 2\n", "unknown key"),
        ("[sources.a]\nweight = -1\nmanifests = 'x'\n", "weight must be"),
        ("[sources.a]\nweight = 1\nmanifests = 'nowhere'\n", "manifest not found"),
        ("stages = 1\n", "unknown key"),
        ("name = 'x'\n", "at least one"),
    ]:
        bad.write_text(text)
        with pytest.raises(AdambaError, match=msg):
            load_stage(bad)


def test_sampling_matches_token_weights_over_10m_tokens(stage):
    loader = TokenLoader(str(stage), B, T, prefetch=0)
    s = loader._sampler
    n_seq = 10_000_000 // T
    counts = Counter(s.next_component() for _ in range(n_seq))
    share = np.array([counts[i] for i in range(len(WEIGHTS))]) / n_seq
    want = np.array(list(WEIGHTS.values())) / sum(WEIGHTS.values())
    assert np.all(np.abs(share - want) <= 0.01 * want)  # within 1% of each weight
    # the same on materialised batches: each row's ids reveal its source
    loader = TokenLoader(str(stage), 16, T, seed=3)
    tok = Counter()
    for x, _ in take(loader, 200):
        src = x // 100 - 1  # BOS (0) maps to -1: skip
        tok.update(src[src >= 0].tolist())
        for row in src:
            assert len(set(row[row >= 0].tolist())) == 1  # a sequence never mixes sources
    got = np.array([tok[i] for i in range(len(WEIGHTS))]) / sum(tok.values())
    assert np.all(np.abs(got - want) <= 0.02)  # BOS tokens vary a little per source


def test_same_seed_same_stream_and_exact_resume(stage):
    a = TokenLoader(str(stage), B, T, seed=7)
    first = take(a, 5)
    state = json.loads(json.dumps(a.state_dict()))
    rest = take(a, 40)  # runs past the end of the small sources' epochs
    b = TokenLoader(str(stage), B, T, seed=7)
    assert same(take(b, 5), first)
    c = TokenLoader(str(stage), B, T, seed=7, prefetch=0)
    c.load_state_dict(state)
    assert same(take(c, 40), rest)
    assert not same(take(TokenLoader(str(stage), B, T, seed=8), 5), first)


def test_two_ranks_disjoint_union_is_one_rank_stream(stage):
    one = [x for x, _ in take(TokenLoader(str(stage), B, T, seed=1), 16)]
    ranks = [
        [x for x, _ in take(TokenLoader(str(stage), B, T, seed=1, rank=r, world_size=2), 8)] for r in (0, 1)
    ]
    for k in range(8):
        block = torch.cat([one[2 * k], one[2 * k + 1]])  # 2B global sequences of step k
        assert torch.equal(ranks[0][k], block[0::2]) and torch.equal(ranks[1][k], block[1::2])
    # disjoint: the (component, pick) pairs dealt to the two ranks never coincide
    picks = []
    for r in (0, 1):
        loader = TokenLoader(str(stage), B, T, seed=1, rank=r, world_size=2, prefetch=0)
        picks.append({p for _ in range(50) for p in loader._sampler.block(B, 2, r)})
    assert not picks[0] & picks[1] and len(picks[0]) == len(picks[1]) == 50 * B


def test_snapshot_freeze_and_load(stage, tmp_path):
    snap_path = freeze(stage, "v1.0", tmp_path / "snaps")
    assert snap_path.name == "stage1-v1.0.json"
    assert not (snap_path.stat().st_mode & 0o222)  # written read-only
    snap = load_snapshot(snap_path)
    assert snap.id.startswith("stage1@v1.0#") and len(snap.sources) == 5
    assert freeze(stage, "v1.0", tmp_path / "snaps") == snap_path  # same content: idempotent
    a = TokenLoader(str(snap_path), B, T, seed=2)
    assert a.data_id == snap.id
    assert same(take(a, 10), take(TokenLoader(str(stage), B, T, seed=2), 10))
    other = write_stage(stage.parent, dict(WEIGHTS, web=30), name="stage1")
    try:
        with pytest.raises(AdambaError, match="immutable"):
            freeze(other, "v1.0", tmp_path / "snaps")
    finally:
        write_stage(stage.parent)


def test_snapshot_refuses_changed_files(tmp_path):
    make_sources(tmp_path)
    stage = write_stage(tmp_path)
    snap = freeze(stage, "v2", tmp_path / "snap.json")
    shard = read_manifest(tmp_path / "shards" / "math")[1]
    raw = bytearray(shard.path.read_bytes())
    raw[5] ^= 0x01
    shard.path.write_bytes(bytes(raw))
    with pytest.raises(AdambaError, match=f"stage1@v2.*no longer match.*{shard.path.name}.*sha256"):
        load_snapshot(snap)
    with pytest.raises(AdambaError, match=shard.path.name):
        TokenLoader(str(snap), B, T)
    with pytest.raises(AdambaError, match="cannot freeze"):
        freeze(stage, "v3", tmp_path / "snaps")
    raw[5] ^= 0x01
    shard.path.write_bytes(bytes(raw))
    load_snapshot(snap)  # restored: accepted again
    # re-sharding replaces the files: the snapshot's shards are gone
    write_shards(["101 102 103"] * 50, IdTokenizer(), tmp_path / "shards" / "math", shard_tokens=2000)
    with pytest.raises(AdambaError, match="missing"):
        load_snapshot(snap)
    # a hand-edited snapshot is refused
    edited = tmp_path / "edited.json"
    d = json.loads(snap.read_text())
    d["sources"][0]["weight"] = 0.9
    edited.write_text(json.dumps(d))
    with pytest.raises(AdambaError, match="edited"):
        load_snapshot(edited)


def test_mixed_tokenizers_refused(tmp_path):
    make_sources(tmp_path)
    write_shards(["1 2 3"] * 10, IdTokenizer("b" * 64), tmp_path / "shards" / "arc")
    with pytest.raises(AdambaError, match="different tokenizers"):
        freeze(write_stage(tmp_path), "v1", tmp_path)
    with pytest.raises(AdambaError, match="different tokenizers"):
        TokenLoader(str(write_stage(tmp_path)), B, T)
    with pytest.raises(AdambaError, match="not both"):
        TokenLoader([str(write_stage(tmp_path)), str(tmp_path / "shards" / "web")], B, T)
