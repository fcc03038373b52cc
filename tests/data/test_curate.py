"""Curation: normalisation, MinHash against exact Jaccard, each quality filter, both dedups, the
written outputs, and the acceptance run on real text with planted duplicates."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from adamba.data.curate import CurateConfig, curate, curate_documents, normalize, read_processed
from adamba.data.dedup_check import dedup_quality
from adamba.data.minhash import MinHasher, estimated_jaccard
from adamba.data.quality import FILTERS, quality_reason
from adamba.data.sources import Document, python_stdlib_documents
from adamba.errors import AdambaError

PROSE = (
    "The river runs through the old town and the bridge that crosses it was built with stone "
    "from the hills. Children walk to school over it every morning, and in the evening the "
    "fishermen come back with their boats. Nobody remembers who laid the first stone, but the "
    "town has kept the bridge in good repair for more than three hundred years, and the people "
    "who live there are proud of it."
)


def test_normalize_unicode_and_whitespace():
    web, code = CurateConfig(), CurateConfig.for_code()
    assert normalize("cafe\u0301", web) == "caf\u00e9"  # NFC
    assert normalize("a\r\nb\rc", web) == "a\nb\nc"
    assert normalize("x \t\ny\u00a0z\n\n\n\n\nw\x07  ", web) == "x\ny z\n\nw"
    assert normalize("  lead  and   inner", web) == "  lead and inner"  # indentation kept
    assert normalize("    x  =  1   # c", code) == "    x  =  1   # c"  # code keeps alignment
    assert normalize("\ufeffhi\u200b", web) == "hi"


def test_minhash_estimates_exact_jaccard():
    """Oracle: the exact Jaccard of the two shingle sets; 128 permutations estimate it within ~4 sigma."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    h = MinHasher(num_perm=128, shingle_words=3, seed=1)
    errs = []
    for _ in range(40):
        a = [rng.choice(vocab) for _ in range(rng.randint(50, 400))]
        b = list(a)
        for i in rng.sample(range(len(b)), int(len(b) * rng.uniform(0.0, 0.5))):
            b[i] = rng.choice(vocab)
        ta, tb = " ".join(a), " ".join(b)
        sa, sb = set(h.shingles(ta).tolist()), set(h.shingles(tb).tolist())
        exact = len(sa & sb) / len(sa | sb)
        est = estimated_jaccard(h.signature(ta), h.signature(tb))
        errs.append(est - exact)
        assert abs(est - exact) <= 4 * np.sqrt(exact * (1 - exact) / 128) + 0.02
    assert abs(np.mean(errs)) < 0.02  # unbiased
    assert h.signature("") is None and h.signature("one two").shape == (128,)
    # case and punctuation do not change the word shingles
    assert np.array_equal(h.signature("Hello, World! again"), h.signature("hello world again"))


REJECTS = {
    "min_words": "too short to be a document",
    "max_words": PROSE + " word" * 100_001,
    "mean_word_length": "the a an to of in on at by it " * 8,
    "symbol_ratio": PROSE + " #tag" * 12,
    "bullet_lines": "\n".join(f"- the item {i} with some words to pass the other checks" for i in range(12)),
    "ellipsis_lines": "\n".join(f"and the story goes on and on with the words {i}..." for i in range(12)),
    "alpha_words": PROSE + " 12345 67890 3.1415 2024" * 6,
    "stop_words": " ".join(f"lorem{i} ipsum dolor sit amet" for i in range(15)),
    "dup_lines": "\n".join([PROSE] + ["the same line repeated with the words"] * 6),
    # one long paragraph of unique lines + a short paragraph three times: few duplicate lines, but
    # 2 of 4 paragraphs repeat
    "dup_paragraphs": "\n".join(" ".join(PROSE.split()[i : i + 4]) for i in range(0, 76, 4))
    + "\n\nthe short one\n\nthe short one\n\nthe short one",
    "top_ngram": PROSE + " " + " ".join(["the bridge"] * 60),
    "dup_ngram": PROSE + " " + " ".join(PROSE.split()[:30]) * 1,
}


@pytest.mark.parametrize("name", list(REJECTS))
def test_each_gopher_filter_rejects_its_case(name):
    text = REJECTS[name]
    got = quality_reason(text, CurateConfig())
    assert got is not None and got[0] == name, got
    # and turning that one filter off lets the document past it
    off = {
        "min_words": {"min_words": None},
        "max_words": {"max_words": None},
        "mean_word_length": {"min_mean_word_length": None},
        "symbol_ratio": {"max_symbol_word_ratio": None},
        "bullet_lines": {"max_bullet_lines": None},
        "ellipsis_lines": {"max_ellipsis_lines": None},
        "alpha_words": {"min_alpha_words": None},
        "stop_words": {"min_stop_words": None},
        "dup_lines": {"max_dup_line_frac": None, "max_dup_line_char_frac": None},
        "dup_paragraphs": {"max_dup_para_frac": None, "max_dup_para_char_frac": None},
        "top_ngram": {"max_top_ngram_char_frac": None},
        "dup_ngram": {"max_dup_ngram_char_frac": None},
    }[name]
    again = quality_reason(text, CurateConfig(**off))
    assert again is None or again[0] != name


def test_clean_prose_passes_and_code_rules():
    assert quality_reason(PROSE, CurateConfig()) is None
    code = CurateConfig.for_code()
    assert quality_reason("def f(x):\n    return x + 1\n", code) is None
    assert quality_reason("x = '" + "A" * 2000 + "'", code)[0] == "max_line_length"
    assert quality_reason("\n".join(["{{[(0)]}}, " * 5] * 5), code)[0] == "alnum_fraction"
    assert quality_reason("\n".join(["x = " + "1" * 150] * 5), code)[0] == "mean_line_length"
    assert quality_reason("def f(x):\n    return x + 1\n", CurateConfig())[0] == "min_words"
    assert set(FILTERS) >= {"min_words", "dup_ngram", "max_line_length", "alnum_fraction"}


def test_dedup_exact_near_and_first_copy_wins():
    rng = random.Random(3)
    words = PROSE.split()
    base = [" ".join(rng.sample(words, len(words))) + f" unique{i} marker{i}" for i in range(6)]
    near = base[0].split()
    near[5] = "changed"
    docs = [Document(t, id=f"d{i}") for i, t in enumerate(base)]
    docs += [
        Document(base[1], id="exact"),
        Document(base[2].replace(" ", "  ") + "\n\n\n", id="exact-after-normalising"),
        Document(" ".join(near), id="near"),
        Document("   \n\t", id="blank"),
    ]
    kept, rep = curate_documents(docs, CurateConfig.dedup_only())
    assert [d.id for d in kept] == [f"d{i}" for i in range(6)]
    assert rep.removed == {"exact_dup": 2, "near_dup": 1, "empty": 1}
    assert "'d0'" in rep.examples["near_dup"][0]["why"]
    assert rep.docs_in == 10 and rep.docs_out == 6
    # near dedup off: the edited copy stays; exact dedup off: near dedup catches the copies (Jaccard 1)
    kept, rep = curate_documents(
        docs, CurateConfig(**{**CurateConfig.dedup_only().to_dict(), "near_dedup": False})
    )
    assert "near" in {d.id for d in kept} and rep.removed == {"exact_dup": 2, "empty": 1}
    _, rep = curate_documents(
        docs, CurateConfig(**{**CurateConfig.dedup_only().to_dict(), "exact_dedup": False})
    )
    assert rep.removed == {"near_dup": 3, "empty": 1}
    both_off = {**CurateConfig.dedup_only().to_dict(), "exact_dedup": False, "near_dedup": False}
    kept, _ = curate_documents(docs, CurateConfig(**both_off))
    assert {"exact", "near"} <= {d.id for d in kept}


def test_config_errors():
    with pytest.raises(AdambaError, match="bands must divide"):
        curate_documents([Document("x")], CurateConfig(lsh_bands=30))
    with pytest.raises(AdambaError, match="unknown curation preset"):
        CurateConfig.preset("poetry")


def test_code_preset_keeps_stdlib_prose_preset_does_not():
    docs = list(python_stdlib_documents())[:80]
    kept_code, rep = curate_documents(docs, CurateConfig.for_code())
    kept_web, _ = curate_documents(docs, CurateConfig())
    assert len(kept_code) >= 0.95 * len(docs) and len(kept_web) <= 0.6 * len(docs)
    assert kept_code[0].text.startswith(docs[0].text.strip()[:40])


def test_curate_writes_processed_and_metadata(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    lines = [json.dumps({"text": PROSE + f" Entry number {i} of the list."}) for i in range(5)]
    lines += [
        json.dumps({"text": PROSE + " Entry number 0 of the list."}),
        "{broken",
        json.dumps({"nope": 1}),
    ]
    (src / "a.jsonl").write_text("\n".join(lines) + "\n")
    (src / "b.bin").write_bytes(b"\x00\x01binary")
    (src / "c.txt").write_text("tiny")
    out = tmp_path / "out"
    rep = curate([src], out, CurateConfig(near_dedup=False))
    proc, meta = Path(rep.output_path), Path(rep.metadata_path)
    assert proc == out / "processed" / f"{rep.run}.jsonl" and meta == out / "metadata" / f"{rep.run}.json"
    kept = list(read_processed(proc))
    assert len(kept) == 5 and kept[0].text.startswith("The river")
    m = json.loads(meta.read_text())
    assert m["removed"] == {"exact_dup": 1, "min_words": 1}
    assert m["examples"]["min_words"][0]["text"] == "tiny"
    assert (
        m["sources"]["malformed"] == 1
        and m["sources"]["missing_field"] == 1
        and m["sources"]["binary_files"] == 1
    )
    assert m["output_hash"] == hashlib.sha256(proc.read_bytes()).hexdigest()
    assert m["inputs"][0]["files"] == 3 and len(m["inputs"][0]["sha256"]) == 64
    assert m["config"]["min_words"] == 50 and m["docs_in"] == 7
    # the same command gives the same run name and the same bytes; in memory, the same output hash
    rep2 = curate([src], out, CurateConfig(near_dedup=False))
    assert rep2.run == rep.run and rep2.output_hash == rep.output_hash
    from adamba.data.registry import open_input

    _, rep3 = curate_documents(open_input(str(src)), CurateConfig(near_dedup=False))
    assert rep3.output_hash == rep.output_hash and rep3.input_hash == rep.input_hash
    with pytest.raises(AdambaError, match="no such file"):
        curate([tmp_path / "missing"], out)


def test_workers_give_identical_results():
    docs = [Document(PROSE + f" variant {i % 40} " + "extra " * (i % 3), id=str(i)) for i in range(300)]
    kept1, r1 = curate_documents(docs, CurateConfig(), workers=1)
    kept2, r2 = curate_documents(docs, CurateConfig(), workers=2)
    assert [d.id for d in kept1] == [d.id for d in kept2]
    assert (r1.output_hash, r1.removed) == (r2.output_hash, r2.removed)
    assert r2.workers == 2


# ---- acceptance on real text (../shared/data) ---------------------------------------------


def real_documents(root: Path, gsm8k_limit: int | None = None) -> list[Document]:
    """Tiny Shakespeare in ~300-word chunks (at blank lines), WikiText-2 valid articles, GSM8K records."""
    docs: list[Document] = []
    cur, n = [], 0
    for line in (root / "tinyshakespeare" / "input.txt").read_text().split("\n"):
        cur.append(line)
        n += len(line.split())
        if n >= 300 and not line.strip():
            docs.append(
                Document("\n".join(cur).strip(), id=f"shakespeare/{len(docs)}", source="tinyshakespeare")
            )
            cur, n = [], 0
    wiki = re.split(r"\n (= [^=].*? =) \n", "\n" + (root / "wikitext2" / "valid.txt").read_text())
    for i in range(1, len(wiki), 2):
        docs.append(
            Document((wiki[i] + "\n" + wiki[i + 1]).strip(), id=f"wikitext/{i // 2}", source="wikitext2")
        )
    with open(root / "gsm8k" / "train.jsonl") as f:
        for i, line in enumerate(f):
            if gsm8k_limit is not None and i >= gsm8k_limit:
                break
            r = json.loads(line)
            docs.append(Document(r["question"] + "\n" + r["answer"], id=f"gsm8k/{i}", source="gsm8k"))
    return docs


def test_acceptance_planted_duplicates_on_real_text(shared_data):
    docs = real_documents(shared_data, gsm8k_limit=2000)
    q = dedup_quality(docs, CurateConfig.dedup_only())
    print(
        f"\n{q['documents']} real documents + {q['planted_exact']} exact + {q['planted_near']} near copies (5% words edited): "
        f"exact removed {q['exact_removed']:.1%}, near detected {q['near_detected']:.1%}, "
        f"false positives {q['false_positive_rate']:.2%} {q['false_positives']}, {q['seconds']:.1f} s"
    )
    assert q["exact_removed"] == 1.0
    assert q["removed"]["exact_dup"] == q["planted_exact"]
    assert q["near_detected"] >= 0.95
    assert q["false_positive_rate"] <= 0.01


def test_cli_data_curate(tmp_path, capsys):
    from adamba.cli import main

    src = tmp_path / "code"
    src.mkdir()
    (src / "a.py").write_text("def f(x):\n    return x + 1\n")
    (src / "b.py").write_text("def f(x):\n    return x + 1\n")  # exact duplicate
    (src / "c.py").write_text("DATA = '" + "x" * 3000 + "'\n")  # a machine-made line
    main(
        [
            "data",
            "curate",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--preset",
            "code",
            "--run",
            "r1",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert "3 documents in, 1 kept" in out and "exact_dup" in out and "max_line_length" in out
    assert (tmp_path / "out" / "processed" / "r1.jsonl").is_file()
    assert json.loads((tmp_path / "out" / "metadata" / "r1.json").read_text())["removed"] == {
        "exact_dup": 1,
        "max_line_length": 1,
    }
    with pytest.raises(SystemExit) as e:
        main(["data", "curate", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "missing" in capsys.readouterr().err
