"""SFT data: conversations rendered into shards with a loss mask; the loader's targets are -100
exactly where the rendering says the token is not the assistant's; verify catches a changed
mask; `adamba data chat` makes the shards from files; an `sft` phase trains on them and refuses
plain text."""

import json

import numpy as np
import pytest

from adamba.data.chat import Conversation, Message, ToolCall
from adamba.data.loader import TokenLoader
from adamba.data.sft import parse_qa, write_chat_shards
from adamba.data.shards import load_mask, load_tokens, read_manifest, verify
from adamba.data.template import render_conversation
from adamba.data.tokenizer import Tokenizer
from tests.helpers import adamba, assert_clean_error


def conversations(n: int = 30) -> list[Conversation]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            call = ToolCall("calculator", {"expression": f"{i}*7"}, id=f"c{i}")
            msgs = [
                Message("system", "Use tools."),
                Message("user", f"What is {i} times 7?"),
                Message("assistant", "", tool_calls=[call]),
                Message("tool", str(i * 7), tool_call_id=f"c{i}", name="calculator"),
                Message("assistant", f"It is {i * 7}."),
            ]
            out.append(Conversation(msgs, tools=[{"name": "calculator"}]).validate())
        else:
            out.append(
                parse_qa({"question": f"Add {i} and {i}?", "answer": f"{i}+{i} = {2 * i}\n#### {2 * i}"})
            )
    return out


@pytest.fixture(scope="module")
def sft_data(tiny_data, tmp_path_factory):
    tok = Tokenizer.load(tiny_data["tokenizer"])
    convs = conversations()
    manifest = write_chat_shards(convs, tok, tmp_path_factory.mktemp("sft"), shard_tokens=700)
    return tok, convs, manifest


def test_shards_hold_the_rendering_and_its_mask(sft_data):
    tok, convs, manifest = sft_data
    shards = read_manifest(manifest)
    assert len(shards) > 1 and all(s.mask for s in shards)  # several shards, each with its mask
    ids = np.concatenate([load_tokens(s) for s in shards])
    mask = np.concatenate([load_mask(s) for s in shards])
    want = [render_conversation(tok, c) for c in convs]
    assert ids.tolist() == sum((r.ids for r in want), [])
    assert mask.tolist() == sum((r.mask for r in want), [])
    assert 0 < mask.mean() < 1 and verify(manifest) == []


def test_loader_targets_only_the_assistant(sft_data):
    tok, convs, manifest = sft_data
    shards = read_manifest(manifest)
    streams = [(np.asarray(load_tokens(s), dtype=np.int64), np.asarray(load_mask(s))) for s in shards]
    loader = TokenLoader([str(manifest)], 2, 24, seed=0, prefetch=0)
    assert loader.masked
    seen_masked = seen_kept = 0
    for _ in range(20):
        x, y = next(loader)
        for row in range(2):
            xs = x[row].numpy()
            for ids, mask in streams:  # find the window in its shard
                hits = [s for s in range(len(ids) - 24) if np.array_equal(ids[s : s + 24], xs)]
                if hits:
                    s = hits[0]
                    want = np.where(mask[s + 1 : s + 25] == 1, ids[s + 1 : s + 25], -100)
                    assert y[row].tolist() == want.tolist()
                    seen_masked += int((want == -100).sum())
                    seen_kept += int((want != -100).sum())
                    break
            else:
                raise AssertionError("window not found in any shard")
    assert seen_masked > 0 and seen_kept > 0


def test_verify_catches_a_changed_mask(sft_data, tmp_path):
    import shutil

    _, _, manifest = sft_data
    copy = tmp_path / "copy"
    shutil.copytree(manifest.parent, copy)
    s = read_manifest(copy)[0]
    data = bytearray(open(s.mask, "rb").read())
    data[5] ^= 1
    open(s.mask, "wb").write(bytes(data))
    (problem,) = verify(copy)
    assert "loss mask changed" in problem


def test_data_chat_cli_and_an_sft_phase(tiny_data, tmp_path):
    records = tmp_path / "qa.jsonl"
    rows = [
        {"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
        for i in range(60)
    ]
    records.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    out = tmp_path / "sft"
    res = adamba(
        "data",
        "chat",
        str(records),
        "--format",
        "qa",
        "--tokenizer",
        tiny_data["tokenizer"],
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "60 conversations (qa)" in res.stdout and "skipped 1 malformed" in res.stdout
    conf = tmp_path / "sft.toml"
    conf.write_text(
        '[[phase]]\nname = "sft"\nobjective = "sft"\nsteps = 3\ndata = ["'
        + str(out / "manifest.jsonl")
        + '"]\n'
    )
    base = ["--set", "model.d_model=32", "--set", "model.n_layer=1", "--set", "data.seq_len=32"]
    base += ["--set", "train.batch_size=2", "--set", f"data.tokenizer={tiny_data['tokenizer']}"]
    base += ["--set", f"data.train={tiny_data['train']}", "--set", "run.progress=false"]
    run = adamba("train", "--config", str(conf), "--out", str(tmp_path / "run"), *base)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows if "loss" in r] == ["sft"] * 3
    # plain text in an sft phase: refused (it would train on every token)
    conf.write_text('[[phase]]\nname = "sft"\nobjective = "sft"\nsteps = 3\n')
    bad = adamba("train", "--config", str(conf), "--out", str(tmp_path / "run2"), *base)
    assert_clean_error(bad, "needs chat data with a loss mask")


def test_data_chat_reads_a_dataset_through_datasets(tiny_data, tmp_path, monkeypatch):
    """`hf:FOLDER`: a local folder of Parquet / JSONL files read by `datasets.load_dataset`, as a
    hub dataset is (offline use); the same records as the file gives; an unknown name is one line."""
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = [{"question": f"What is {i}+{i}?", "answer": f"#### {2 * i}"} for i in range(25)]
    folder = tmp_path / "local-gsm8k" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    outs = {}
    for name, src in (("hf", f"hf:{tmp_path / 'local-gsm8k'}"), ("file", str(tmp_path / "qa.jsonl"))):
        outs[name] = tmp_path / name
        res = adamba(
            "data",
            "chat",
            src,
            "--format",
            "qa",
            "--tokenizer",
            tiny_data["tokenizer"],
            "--out",
            str(outs[name]),
        )
        assert res.returncode == 0, res.stderr
        assert "25 conversations (qa)" in res.stdout, res.stdout
    a, b = (read_manifest(outs[k] / "manifest.jsonl") for k in ("hf", "file"))
    assert [np.array_equal(load_tokens(x), load_tokens(y)) for x, y in zip(a, b)] == [True] * len(a)
    bad = adamba(
        "data",
        "chat",
        "no-such-set",
        "--format",
        "qa",
        "--tokenizer",
        tiny_data["tokenizer"],
        "--out",
        str(tmp_path / "x"),
    )
    assert_clean_error(bad, "no-such-set: no such file, and not a dataset name", "gsm8k")
