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


# Characters where pre-tokenisation is delicate: letters of several scripts, digits (grouped in
# threes), superscripts, punctuation, contractions, combining marks, emoji, odd spaces, newlines.
TRICKY = list("abcst") + ["'", "'s", "'ll", "中文", "日本", "1", "23", "²", "Ⅻ", ".", ",", "!", '"', "{", "_"]
TRICKY += ["\u0301", "😀", " ", " ", "  ", "\t", "\xa0", "\u3000", "\u2009", "\x1c", "\u200b"]
TRICKY += ["\n", "\n\n", "\r\n", " \n", "\n "]


def tricky_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(TRICKY) for _ in range(n))


def test_pieces_pre_tokenize_like_the_whole(tok):
    """Every cut falls where the pre-tokenizer splits anyway: the pieces' pre-tokens, in order,
    are the whole text's (tiny pieces, so there is a cut after nearly every character)."""
    from adamba.data.tokenizer import _is_cut, split_for_encoding

    def words(t):
        return [w for w, _ in tok.hf.pre_tokenizer.pre_tokenize_str(t)]

    rng = random.Random(0)
    n_cuts = 0
    for _ in range(300):
        text = tricky_text(rng, 40)
        whole = words(text)
        pieces = split_for_encoding(text, piece_chars=2, max_piece_chars=10**9)
        assert "".join(pieces) == text
        assert [w for p in pieces for w in words(p)] == whole, pieces
        for p in range(1, len(text)):  # the rule itself, at every position it allows
            if _is_cut(text, p):
                n_cuts += 1
                assert words(text[:p]) + words(text[p:]) == whole, (text[:p], text[p:])
    assert n_cuts > 3000
    assert len(split_for_encoding("ab cd" * 20, piece_chars=4)) > 10  # it does cut


def test_long_text_encodes_in_bounded_pieces_with_the_same_ids(monkeypatch):
    """A long one-line text reaches the library in pieces (bounded memory) and encodes to the
    ids of the whole; training on it learns the same merges."""
    from adamba.data import tokenizer as T

    rng = random.Random(1)
    text = tricky_text(rng, 6000).replace("\n", " ")
    whole_tok = T.Tokenizer.train([text], vocab_size=500)
    whole = whole_tok.hf.encode(text, add_special_tokens=False).ids
    monkeypatch.setattr(T, "PIECE_CHARS", 300)
    monkeypatch.setattr(T, "ENCODE_GROUP_CHARS", 1000)
    assert T.Tokenizer.train([text], vocab_size=500).fingerprint() == whole_tok.fingerprint()

    class Recording:  # the library object, recording how much text each call gets
        def __init__(self, hf):
            self.hf, self.calls = hf, []

        def encode_batch_fast(self, texts, **kw):
            self.calls.append(sum(len(t) for t in texts))
            return self.hf.encode_batch_fast(texts, **kw)

    rec = whole_tok._hf = Recording(whole_tok.hf)
    assert whole_tok.encode(text) == whole
    assert whole_tok.encode_batch(["x", text, ""]) == [whole_tok.hf.hf.encode("x").ids, whole, []]
    arrays = whole_tok.encode_arrays([text, "y"], np.uint16)
    assert arrays[0].dtype == np.uint16 and arrays[0].tolist() == whole
    assert len(rec.calls) > 10 and max(rec.calls) <= 1000 + T.MAX_PIECE_CHARS and max(rec.calls) < 1500


def test_forced_cut_only_without_a_safe_place():
    from adamba.data.tokenizer import split_for_encoding

    run = "a" * 100  # one 100-letter word: nowhere safe to cut
    assert [len(p) for p in split_for_encoding(run, piece_chars=10, max_piece_chars=30)] == [30, 30, 30, 10]
    assert split_for_encoding(run, piece_chars=10, max_piece_chars=200) == [run]
    far = "a" * 1000 + "1" + "b" * 3000 + " c"  # the first safe places are far ahead
    assert split_for_encoding(far, piece_chars=10, max_piece_chars=5000) == [far[:1000], far[1000:4001], " c"]
    words = "word " * 40  # safe cuts everywhere: never forced, cut before a space
    pieces = split_for_encoding(words, piece_chars=10, max_piece_chars=12)
    assert "".join(pieces) == words and all(p.startswith(" ") for p in pieces[1:])


def test_foreign_pre_tokenizer_is_never_cut(monkeypatch):
    """Cuts are only safe under adamba's pre-tokenizer: a tokenizer whose BPE merges across
    spaces (no splitting regex) encodes long text whole, as the library would."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    from adamba.data import tokenizer as T

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = " ".join(corpus(30, seed=4)).replace("\n", " ")
    hf.train_from_iterator([text], trainer)
    foreign = Tokenizer(hf)
    monkeypatch.setattr(T, "PIECE_CHARS", 100)
    cut = [i for p in T.split_for_encoding(text) for i in hf.encode(p, add_special_tokens=False).ids]
    whole = hf.encode(text, add_special_tokens=False).ids
    assert cut != whole  # cutting would change this tokenizer's ids ...
    assert foreign.encode(text) == whole and foreign.encode_batch([text]) == [whole]  # ... so it is not cut
