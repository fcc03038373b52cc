"""Shards: exact token layout, dtype choice, manifest fields, verify, crash-safe rewrite."""

import hashlib
import json
import random

import numpy as np
import pytest

from adamba.data.shards import load_tokens, read_manifest, token_dtype, verify, write_shards
from adamba.data.sources import Document
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError

WORDS = "the a of to and in is was for on that with as by it at from his her they time king day said".split()


def corpus(n_docs: int = 100, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) + "." for _ in range(n_docs)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(corpus(200), vocab_size=400)


class BigVocab:
    """Duck-typed tokenizer with > 65536 ids, to exercise the uint32 path cheaply."""

    vocab_size, bos_id = 70_000, 0

    def encode_batch(self, texts):
        return [[65_536 + len(w) for w in t.split()] for t in texts]

    def fingerprint(self):
        return "f" * 64


def test_layout_and_manifest(tok, tmp_path):
    docs = corpus()
    m = write_shards(docs, tok, tmp_path / "out", shard_tokens=500, source="unit")
    assert m.name == "manifest.jsonl"
    shards = read_manifest(tmp_path / "out")
    expect = np.concatenate([np.array([tok.bos_id] + tok.encode(d)) for d in docs])
    got = np.concatenate([load_tokens(s) for s in shards])
    np.testing.assert_array_equal(got, expect)
    assert [s.tokens for s in shards[:-1]] == [500] * (len(shards) - 1) and 0 < shards[-1].tokens <= 500
    assert sum(s.docs for s in shards) == len(docs)
    for s in shards:
        assert s.dtype == "uint16" and s.source == "unit" and s.tokenizer == tok.fingerprint()
        assert s.sha256 == hashlib.sha256(s.path.read_bytes()).hexdigest()
        assert s.path.parent == (tmp_path / "out").resolve()
    line = json.loads(m.read_text().splitlines()[0])
    assert {"path", "dtype", "tokens", "docs", "sha256", "source", "tokenizer"} <= set(line)
    assert "/" not in line["path"]  # relative to the manifest
    assert verify(m) == []


def test_no_bos_and_document_sources(tok, tmp_path):
    docs = [
        Document("one two", source="a.txt"),
        Document("", source="empty"),
        Document("three", source="a.txt"),
    ]
    m = write_shards(docs, tok, tmp_path, append_bos=False)
    (s,) = read_manifest(m)
    assert s.source == "a.txt" and s.docs == 0
    np.testing.assert_array_equal(load_tokens(s), tok.encode("one two") + tok.encode("three"))


def test_dtype_choice(tmp_path):
    assert token_dtype(256) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    m = write_shards(["a bb ccc", "dddd"], BigVocab(), tmp_path)
    (s,) = read_manifest(m)
    assert s.dtype == "uint32" and s.path.stat().st_size == 4 * s.tokens
    np.testing.assert_array_equal(load_tokens(s), [0, 65_537, 65_538, 65_539, 0, 65_540])


def test_no_usable_text(tok, tmp_path):
    with pytest.raises(AdambaError, match="no usable text"):
        write_shards(["", ""], tok, tmp_path / "x")
    assert not (tmp_path / "x" / "manifest.jsonl").exists()


def test_verify_names_the_bad_shard(tok, tmp_path):
    m = write_shards(corpus(), tok, tmp_path, shard_tokens=400)
    shards = read_manifest(m)
    raw = bytearray(shards[1].path.read_bytes())
    raw[7] ^= 0x01
    shards[1].path.write_bytes(bytes(raw))
    shards[2].path.write_bytes(shards[2].path.read_bytes()[:-2])
    shards[3].path.unlink()
    problems = verify(m)
    assert len(problems) == 3
    assert shards[1].path.name in problems[0] and "sha256" in problems[0]
    assert shards[2].path.name in problems[1] and "size" in problems[1]
    assert shards[3].path.name in problems[2] and "missing" in problems[2]
    with pytest.raises(AdambaError, match="truncated"):
        load_tokens(shards[2])
    with pytest.raises(AdambaError, match="shard missing"):
        load_tokens(shards[3])


def test_manifest_errors(tmp_path):
    with pytest.raises(AdambaError, match="manifest not found"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "manifest.jsonl").write_text('{"path": "x.bin"}\n')
    with pytest.raises(AdambaError, match="manifest.jsonl:1"):
        read_manifest(tmp_path)


def test_rewrite_is_crash_safe(tok, tmp_path):
    old = write_shards(corpus(seed=1), tok, tmp_path, shard_tokens=300)
    old_text = old.read_text()

    def crashing():
        yield from corpus(seed=2)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_shards(crashing(), tok, tmp_path, shard_tokens=300)
    assert old.read_text() == old_text and verify(old) == []  # the old data is intact
    write_shards(corpus(seed=3), tok, tmp_path, shard_tokens=300)  # a successful rewrite
    assert verify(old) == []
    listed = {s.path.name for s in read_manifest(old)}
    assert {p.name for p in tmp_path.glob("*.bin")} == listed  # stale shards cleaned up
    assert not list(tmp_path.glob("*.tmp"))


def test_parallel_workers_write_identical_shards(tok, tmp_path):
    docs = corpus(300, seed=4)
    one = read_manifest(write_shards(docs, tok, tmp_path / "w1", shard_tokens=1000))
    two = read_manifest(write_shards(docs, tok, tmp_path / "w2", shard_tokens=1000, workers=2))
    assert [s.sha256 for s in one] == [s.sha256 for s in two] and len(one) > 2


def test_long_documents_split_without_changing_ids(tok):
    from adamba.data.tokenizer import split_for_encoding

    seps = ["\n", "\n\n", " \n\t", "\n  ", "\r\n", "\n\n\n", ".\n", "\n-"]
    docs = corpus(400, seed=5)
    text = "".join(d + seps[i % len(seps)] for i, d in enumerate(docs)) + "\n\n\n   tail  \n"
    pieces = split_for_encoding(text, piece_chars=500)
    assert len(pieces) > 5 and "".join(pieces) == text
    assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text)


@pytest.mark.parametrize("workers", [1, 2])
def test_one_line_document_shards_like_the_whole(tok, tmp_path, monkeypatch, workers):
    """A document that is one long line is encoded in pieces (bounded memory) and the shards
    hold exactly the whole document's ids, with one BOS."""
    from adamba.data import tokenizer as T

    line = " ".join(corpus(300, seed=6))
    monkeypatch.setattr(T, "PIECE_CHARS", 200)  # module globals: seen by forked workers too
    monkeypatch.setattr(T, "ENCODE_GROUP_CHARS", 700)
    assert len(T.split_for_encoding(line)) > 20
    m = write_shards(["short doc", line], tok, tmp_path, shard_tokens=1000, workers=workers)
    got = np.concatenate([load_tokens(s) for s in read_manifest(m)])
    whole = tok.hf.encode(line, add_special_tokens=False).ids
    np.testing.assert_array_equal(got, [tok.bos_id, *tok.encode("short doc"), tok.bos_id, *whole])
    assert sum(s.docs for s in read_manifest(m)) == 2
