"""Tokenizer: fixed special ids, exact round trip, byte counts for bpb, stable fingerprint."""

import json
import random

import numpy as np
import pytest

from adamba.data.tokenizer import BOS_ID, N_SPECIAL, SPECIAL_TOKENS, Tokenizer
from adamba.errors import AdambaError

WORDS = "the a of to and in is was for on that with as by it at from his her they time king day said".split()


def corpus(n_docs: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 60))]
        docs.append(" ".join(words).capitalize() + f". Number {rng.randint(0, 99999)}!\n")
    return docs


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(corpus(), vocab_size=400)


def test_special_ids_are_fixed(tok):
    assert len(SPECIAL_TOKENS) == N_SPECIAL == 32
    assert SPECIAL_TOKENS[:3] == ["<|bos|>", "<|eos|>", "<|pad|>"]
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.hf.token_to_id(name) == i
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (BOS_ID, 1, 2)
    assert tok.special_id("user") == tok.special_id("<|user|>") == 4
    assert tok.special_id("/tool_result") == 10
    with pytest.raises(AdambaError, match="unknown special token"):
        tok.special_id("nope")


def test_round_trip_and_token_bytes(tok):
    text = "The king said: naïve café, 日本語 😀\n\n\tindent  x = 12345678;\r\nend "
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(i >= N_SPECIAL for i in ids)  # ordinary text never yields a special id
    tb = tok.token_bytes()
    assert tb.shape == (tok.vocab_size,) and tb.dtype == np.int64
    assert tb[ids].sum() == len(text.encode("utf-8"))
    assert (tb[:N_SPECIAL] == 0).all() and (tb[N_SPECIAL:] > 0).all()


def test_special_strings_in_text_are_plain_bytes(tok):
    ids = tok.encode("hello <|bos|> <|user|>")
    assert BOS_ID not in ids and tok.special_id("user") not in ids
    assert tok.decode(ids) == "hello <|bos|> <|user|>"
    assert tok.decode([BOS_ID]) == "<|bos|>"


def test_encode_batch_matches_encode(tok):
    texts = corpus(20, seed=1)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_vocab_size_and_compression(tok):
    assert tok.vocab_size == 400
    text = "".join(corpus(50, seed=2))  # held out
    assert len(text) / len(tok.encode(text)) > 2.0  # merges learned something


def test_save_load_fingerprint_stable(tok, tmp_path):
    p = tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path)  # a folder works too
    assert again.fingerprint() == tok.fingerprint() == Tokenizer.load(p).fingerprint()
    assert len(tok.fingerprint()) == 64
    # re-serialised with different formatting: same ids, same fingerprint
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(p.read_text()), indent=2))
    assert Tokenizer.load(pretty).fingerprint() == tok.fingerprint()
    other = Tokenizer.train(corpus(seed=3), vocab_size=380)
    assert other.fingerprint() != tok.fingerprint()


def test_errors(tmp_path):
    with pytest.raises(AdambaError, match="no usable text"):
        Tokenizer.train(["", "   ", "\n"], vocab_size=400)
    with pytest.raises(AdambaError, match="too small"):
        Tokenizer.train(["hello"], vocab_size=100)
    with pytest.raises(AdambaError, match="tokenizer not found"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AdambaError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)


def test_foreign_tokenizer_refused(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    p = tmp_path / "foreign.json"
    HFTokenizer(models.BPE(vocab={"a": 0, "<|bos|>": 1}, merges=[])).save(str(p))
    with pytest.raises(AdambaError, match="not an adamba tokenizer"):
        Tokenizer.load(p)
