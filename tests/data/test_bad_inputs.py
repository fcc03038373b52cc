"""Files that are not what a data command expects get one line naming the file and the fix
(issue 23, item 5): binary or non-UTF-8 manifests, stages and snapshots (verify, inspect, mix,
train), torn or garbage manifest lines, inputs with no usable text (curate, tokenizer, shards),
and the Parquet column hint. Run as the user runs them: the `adamba` command in a fresh
interpreter; the library-level variants beside them call the functions directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adamba.data import mixture
from adamba.data.commands import curate_cmd, shards_cmd, tokenizer_cmd, verify_cmd
from adamba.data.curate import read_processed
from adamba.data.shards import read_manifest
from adamba.errors import AdambaError
from tests.helpers import adamba, assert_clean_error, stdlib_texts

BINARY = bytes(range(256)) * 16  # NUL bytes and invalid UTF-8, like any image or archive


def cli_error(capsys, *args: str) -> str:
    """The CLI in this process (cheaper than a fresh interpreter): exit 2, one stderr line."""
    from adamba.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert e.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_data) -> dict[str, Path]:
    """Binary files under the names a user might give them, and stages/folders around them."""
    root = tmp_path_factory.mktemp("bad")
    names = {"manifest_file": "data.jsonl", "blob": "blob", "snap": "snap.json", "stage": "stage.toml"}
    out = {}
    for key, name in names.items():
        (root / name).write_bytes(BINARY)
        out[key] = root / name
    (root / "shards").mkdir()
    (root / "shards" / "manifest.jsonl").write_bytes(BINARY)  # a folder whose manifest is binary
    out["folder"] = root / "shards"
    stage = root / "points_at_binary.toml"
    stage.write_text('[sources.web]\nweight = 1\nmanifests = "data.jsonl"\n')
    out["stage_to_binary"] = stage
    return out


@pytest.mark.parametrize(
    "args, culprit, what",
    [
        (("data", "verify", "{folder}"), "folder", "not a manifest"),
        (("data", "inspect", "{blob}"), "blob", "not a manifest"),
        (("data", "mix", "{stage_to_binary}"), "manifest_file", "not a manifest"),
        (("data", "mix", "{stage}"), "stage", "not a stage file"),
        (("data", "verify", "{snap}"), "snap", "not a snapshot"),
    ],
    ids=[
        "verify-folder",
        "inspect-file",
        "mix-stage-naming-it",
        "mix-binary-stage",
        "verify-binary-snapshot",
    ],
)
def test_binary_file_where_a_manifest_is_expected(files, args, culprit, what):
    res = adamba(*(a.format(**files) for a in args))
    path = files[culprit] / "manifest.jsonl" if culprit == "folder" else files[culprit]
    assert_clean_error(res, str(path), what, "UTF-8")


def test_train_on_a_binary_manifest(files, tiny_data, tmp_path):
    res = adamba(
        "train",
        "--config",
        "tiny-cpu",
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"data.train={files['blob']}",
        "--set",
        f"data.val={tiny_data['val']}",
        "--set",
        f"data.tokenizer={tiny_data['tokenizer']}",
        "--set",
        "train.max_steps=1",
    )
    assert_clean_error(res, str(files["blob"]), "not a manifest")


def test_torn_manifest_line_names_file_and_line(tiny_data, tmp_path, capsys):
    """A manifest cut short mid-line (a full disk, a copy interrupted) or edited into garbage."""
    good = Path(tiny_data["train"]).read_text()
    torn = tmp_path / "manifest.jsonl"
    torn.write_text(good + good.splitlines()[0][:40])
    err = cli_error(capsys, "data", "verify", str(torn))
    assert f"{torn}:{len(good.splitlines()) + 1} is not a valid manifest line" in err

    line = json.loads(good.splitlines()[0])
    for bad, why in [
        ("[1, 2]", "expected a JSON object"),
        (json.dumps(dict(line, dtype="float64")), "dtype must be uint16 or uint32"),
        (json.dumps(dict(line, tokens=-5)), "tokens must be a whole number"),
        (json.dumps(dict(line, path=7)), "path must be a file name"),
        (json.dumps({k: v for k, v in line.items() if k != "sha256"}), "missing sha256"),
    ]:
        torn.write_text(bad + "\n")
        with pytest.raises(AdambaError, match=f"manifest.jsonl:1 is not a valid manifest line .*{why}"):
            read_manifest(torn)
    torn.write_text("\n\n")
    with pytest.raises(AdambaError, match="lists no shards"):
        read_manifest(torn)


def test_snapshot_that_is_not_one(tmp_path, capsys):
    """A .json given where a snapshot goes: not JSON, another JSON file, a damaged snapshot."""
    p = tmp_path / "snap.json"
    p.write_text('{"kind": "adamba-snapshot", "name": "x"')
    assert f"{p} is not a snapshot: not valid JSON" in cli_error(capsys, "data", "inspect", str(p))
    p.write_text('{"weights": [1, 2]}')
    with pytest.raises(AdambaError, match="not an adamba snapshot"):
        mixture.read_snapshot(p)
    p.write_text(json.dumps({"kind": "adamba-snapshot", "name": "x", "version": "v1", "sources": [3]}))
    with pytest.raises(AdambaError, match="damaged snapshot"):
        mixture.load_snapshot(p)
    # verify reports a changed snapshot as a FAIL line, but a file that is no snapshot at all
    # is the user's mistake: an error naming it
    p.write_bytes(BINARY)
    with pytest.raises(AdambaError, match="not a snapshot"):
        verify_cmd([str(p)])


def test_curate_without_usable_text(tmp_path, capsys):
    """A folder of binary files, or an empty one: exit 2 naming the input, nothing written. A
    folder where some files are text is fine: the binary ones are skipped and counted."""
    binary, empty = tmp_path / "binary", tmp_path / "empty"
    binary.mkdir()
    empty.mkdir()
    (binary / "a.txt").write_bytes(BINARY)
    (binary / "b.jsonl").write_bytes(BINARY)
    res = adamba("data", "curate", str(binary), "--out", str(tmp_path / "out"), "--no-progress")
    assert_clean_error(res, f"no usable text in {binary}", "skipped 1 binary files", "malformed")
    err = cli_error(capsys, "data", "curate", str(empty), "--out", str(tmp_path / "out"), "--no-progress")
    assert f"no usable text in {empty}: 0 documents from 0 files" in err
    assert not (tmp_path / "out").exists()  # nothing written, not even empty folders

    (binary / "c.py").write_text(stdlib_texts()[0])
    lines = curate_cmd([str(binary)], str(tmp_path / "out"), preset="dedup", progress=False)
    assert "1 documents in, 1 kept" in lines[0] and "skipped 1 binary files" in lines[1]


def test_tokenizer_and_shards_without_usable_text(tiny_data, tmp_path, capsys):
    src = tmp_path / "binary"
    src.mkdir()
    (src / "a.txt").write_bytes(BINARY)
    res = adamba(
        "data", "shards", str(src), "--tokenizer", tiny_data["tokenizer"], "--out", str(tmp_path / "s")
    )
    assert_clean_error(res, f"no usable text in {src}", "1 binary files")
    err = cli_error(capsys, "data", "tokenizer", str(src), "--out", str(tmp_path / "t.json"))
    assert f"no usable text in {src}" in err and "1 binary files" in err


def test_parquet_hint_names_the_real_flag(tiny_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": stdlib_texts()[:3]}), p)
    args = ([str(p)], tiny_data["tokenizer"], str(tmp_path / "s"))
    res = adamba("data", "shards", *args[0], "--tokenizer", args[1], "--out", args[2])
    assert_clean_error(res, str(p), "no column 'text'", "content", "(choose one with --text-field)")
    assert "3 documents" in shards_cmd(*args, text_field="content")[0]  # the flag it names works


def test_processed_file_that_is_not_curated_output(tmp_path):
    p = tmp_path / "run.jsonl"
    p.write_bytes(BINARY)
    with pytest.raises(AdambaError, match="not curated output"):
        list(read_processed(p))
    p.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "te')
    docs = read_processed(p)
    assert next(docs).text == "fine"
    with pytest.raises(AdambaError, match=r"run.jsonl:2 is not a curated record"):
        next(docs)


def test_flags_out_of_range(tiny_data, tmp_path):
    with pytest.raises(AdambaError, match="--workers must be >= 1"):
        shards_cmd([str(tmp_path)], tiny_data["tokenizer"], str(tmp_path / "s"), workers=0)
    for mb in (0.0, -1.0, float("nan")):
        with pytest.raises(AdambaError, match="--max-mb must be a number > 0"):
            tokenizer_cmd([str(tmp_path)], str(tmp_path / "t.json"), 300, max_mb=mb)
