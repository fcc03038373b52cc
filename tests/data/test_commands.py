"""`adamba data ...` end to end on small real text: tokenizer -> shards -> mix/freeze -> verify -> inspect."""

import pytest

from adamba.cli import main
from adamba.data.shards import read_manifest
from adamba.data.tokenizer import load_cl100k
from tests.helpers import stdlib_texts


def run(capsys, *args):
    main(list(args))
    return capsys.readouterr().out


def fail(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    assert e.value.code == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err and len(out.err.strip().splitlines()) == 1
    return out.out, out.err


def test_data_cli_pipeline(tmp_path, capsys):
    texts = stdlib_texts()
    src = tmp_path / "src"
    src.mkdir()
    for i, t in enumerate(texts):
        (src / f"doc{i}.txt").write_text(t)
    tok = str(tmp_path / "tokenizer.json")
    out = run(capsys, "data", "tokenizer", str(src), "--vocab-size", "600", "--out", tok)
    assert "vocab 600" in out and "adamba" in out and "chars/token" in out
    # a cl100k comparison row when tiktoken's encoding is installed, else a line saying how to get it
    assert ("cl100k not available" in out) == (load_cl100k() is None) and "cl100k" in out

    out = run(
        capsys,
        "data",
        "shards",
        str(src),
        "--tokenizer",
        tok,
        "--out",
        str(tmp_path / "a"),
        "--source",
        "std",
    )
    assert f"{len(texts)} documents" in out
    run(capsys, "data", "shards", str(src / "doc0.txt"), "--tokenizer", tok, "--out", str(tmp_path / "b"))
    stage = tmp_path / "stage.toml"
    stage.write_text('[sources.a]\nweight = 3\nmanifests = "a"\n[sources.b]\nweight = 1\nmanifests = "b"\n')
    out = run(capsys, "data", "mix", str(stage), "--freeze", "v1", "--out", str(tmp_path / "snaps"))
    assert "75.0%" in out and "snapshot stage@v1#" in out
    snap = tmp_path / "snaps" / "stage-v1.json"
    out = run(capsys, "data", "verify", str(tmp_path / "a"), str(stage), str(snap))
    assert out.count("ok ") == 3

    out = run(capsys, "data", "inspect", str(tmp_path / "a"))  # finds tokenizer.json in a parent
    assert "std:" in out and "--- sample ---" in out
    out = run(capsys, "data", "inspect", str(snap))
    assert "[a] weight 75.0%" in out and "sample from b" in out

    shard = read_manifest(tmp_path / "a")[0]
    raw = bytearray(shard.path.read_bytes())
    raw[3] ^= 0x10
    shard.path.write_bytes(bytes(raw))
    out, err = fail(capsys, "data", "verify", str(tmp_path / "a"), str(snap))
    assert out.count(shard.path.name) == 2 and "2 problem(s)" in err
    _, err = fail(capsys, "data", "mix", str(stage), "--freeze", "v2")
    assert shard.path.name in err
