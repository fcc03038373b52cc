"""Peak memory on a document that is one long line: a regression guard for issue 23.

The tokenizers library holds ~130 bytes per character of an input while it pre-tokenises it, so
a one-line 50 MB file took 6-8 GB to shard or train on until long texts were cut into pieces
(adamba/data/tokenizer.py). A 3 M-character line shows the difference in a few seconds: each
job runs in a fresh interpreter, and the rise of its peak RSS over the RSS before the job is
~450 MB (shards) and ~260 MB (tokenizer) when the line goes to the library whole, ~90 and ~25 MB
in pieces.
"""

import os
import subprocess
import sys

import pytest

from adamba.data.tokenizer import Tokenizer
from tests.helpers import stdlib_texts

CHARS = 3_000_000
LIMIT_MB = 150  # ~2x above the piecewise peak, well under the whole-line peak

# VmHWM, not ru_maxrss: the latter starts at the forking parent's (pytest's) resident size
JOB = """
import sys
from adamba.data.shards import write_shards
from adamba.data.tokenizer import Tokenizer
def kb(key):
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith(key))
kind, text_path, tok_path, out = sys.argv[1:]
text = open(text_path, encoding="utf-8").read()
tok = Tokenizer.load(tok_path)
tok.encode_arrays(["warm up the library's thread pool"], "uint16")
before = kb("VmRSS:")
if kind == "shards":
    write_shards([text], tok, out)
else:
    Tokenizer.train([text], 400)
print((kb("VmHWM:") - before) / 1e3)
"""


@pytest.fixture(scope="module")
def one_line(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_line")
    text = " ".join(stdlib_texts()).replace("\n", " ")
    (root / "line.txt").write_text((text * (CHARS // len(text) + 1))[:CHARS], encoding="utf-8")
    Tokenizer.train(stdlib_texts(), 400).save(root / "tokenizer.json")
    return root


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("kind", ["shards", "tokenizer"])
def test_one_long_line_stays_small(one_line, kind):
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            JOB,
            kind,
            *(str(one_line / f) for f in ("line.txt", "tokenizer.json", "out")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAYON_NUM_THREADS": "2"},  # the same per-thread overhead on any machine
    )
    assert res.returncode == 0, res.stderr
    rise = float(res.stdout.split()[-1])
    assert rise < LIMIT_MB, f"{kind} on one {CHARS:,}-character line raised peak RSS by {rise:.0f} MB"
