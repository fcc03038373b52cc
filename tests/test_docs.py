"""docs/: every page's examples run, in the order of the index, in one temp folder.

A page is a user's session: its ```bash blocks are `adamba ...` commands (run in-process through
the CLI's own `main`), its ```python blocks run in one namespace per page, and a block after a
`<!-- docs-test: file=PATH -->` line is written to PATH instead (a config the next command
reads). `<!-- docs-test: skip -->` keeps a block out (a GPU, torchrun, a server, a download);
other fences (```toml, ```text ...) are illustrations. Pages build on the ones listed before
them in docs/README.md (data, then shards, then a trained run ...), so testing one page first
runs those before it.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from adamba.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs"
MARK = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    mark: str = ""  # "", "skip" or "file=PATH"


def index_pages() -> list[str]:
    """The pipeline pages in order: the numbered list of links in docs/README.md."""
    return re.findall(r"^\d+\.\s+\[[^\]]+\]\(([\w./-]+\.md)\)", (DOCS / "README.md").read_text(), re.M)


def blocks(text: str) -> list[Block]:
    out, lines, i, mark = [], text.splitlines(), 0, ""
    while i < len(lines):
        m = MARK.search(lines[i])
        if m:
            mark = m.group(1)
        f = FENCE.match(lines[i])
        if f:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append(Block(f.group(1), "\n".join(body) + "\n", start + 1, mark))
            mark = ""
        elif lines[i].strip() and not m:
            mark = ""  # a marker applies to the block right after it
        i += 1
    return out


def commands(code: str) -> list[list[str]]:
    """A bash block as argument lists: continuation lines joined, comments dropped, globs expanded."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append([g for a in argv for g in (sorted(glob.glob(a)) or [a] if "*" in a else [a])])
    return out


def run_block(b: Block, page: str, ns: dict) -> None:
    where = f"{page}:{b.line}"
    if b.mark.startswith("file="):
        path = Path(b.mark[5:])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(b.code)
    elif b.lang == "python":
        exec(compile(b.code, where, "exec"), ns)
    elif b.lang in ("bash", "sh", "console"):
        for argv in commands(b.code):
            assert argv[0] == "adamba", f"{where}: `{argv[0]}` is not an adamba command: mark the block skip"
            try:
                main(argv[1:])
            except SystemExit as e:
                assert not e.code, f"{where}: `{shlex.join(argv)}` exited {e.code}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return {"dir": tmp_path_factory.mktemp("docs"), "done": set()}


def run_page(page: str, workspace: dict) -> int:
    """Run the page's blocks in the shared folder; returns how many ran."""
    ns: dict = {"__name__": "__docs__"}
    n = 0
    for b in blocks((DOCS / page).read_text()):
        if b.mark != "skip" and (b.mark.startswith("file=") or b.lang in ("python", "bash", "sh", "console")):
            run_block(b, page, ns)
            n += 1
    workspace["done"].add(page)
    return n


def test_index_lists_every_page():
    pages = index_pages()
    on_disk = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    assert sorted(pages) == on_disk, "list every docs/*.md page in docs/README.md's numbered list"


@pytest.mark.parametrize("page", index_pages())
def test_page_examples_run(page, workspace):
    old = os.getcwd()
    os.chdir(workspace["dir"])
    try:
        for before in index_pages()[: index_pages().index(page)]:
            if before not in workspace["done"]:
                run_page(before, workspace)
        assert run_page(page, workspace) > 0, f"{page} has no runnable example"
    finally:
        os.chdir(old)


def test_marks_are_understood():
    """A typo in a marker would silently run (or write) the wrong thing."""
    for page in [*index_pages(), "README.md"]:
        for b in blocks((DOCS / page).read_text()):
            assert b.mark in ("", "skip") or b.mark.startswith("file="), f"{page}:{b.line}: mark {b.mark!r}"


def test_runner_fails_on_a_failing_example(tmp_path, monkeypatch):
    """The checks above can fail: a command that errors, a non-adamba command, a raising block."""
    monkeypatch.chdir(tmp_path)
    text = (
        "<!-- docs-test: file=sub/a.toml -->\n```toml\nx = 1\n```\n"
        "<!-- docs-test: skip -->\n\n```bash\ntorchrun -m adamba\n```\n"
        "```bash\nadamba tool calculator \\\n  '1+1'  # two\n```\n"
    )
    found = blocks(text)
    assert [(b.lang, b.mark) for b in found] == [("toml", "file=sub/a.toml"), ("bash", "skip"), ("bash", "")]
    assert commands(found[2].code) == [["adamba", "tool", "calculator", "1+1"]]
    run_block(found[0], "t.md", {})
    assert (tmp_path / "sub" / "a.toml").read_text() == "x = 1\n"
    with pytest.raises(AssertionError, match="not an adamba command"):
        run_block(found[1], "t.md", {})
    with pytest.raises(AssertionError, match="exited 2"):
        run_block(Block("bash", "adamba train --config no-such-preset\n", 1), "t.md", {})
    with pytest.raises(ZeroDivisionError):
        run_block(Block("python", "1 / 0\n", 1), "t.md", {})
