"""Mixtures (weighted compositions of manifests) and frozen, versioned snapshots of them.

A stage file is TOML; each `[sources.NAME]` table gives a token weight and one or more
manifests (files or folders, relative to the stage file):

    name = "stage1"
    [sources.web]
    weight = 0.5
    manifests = ["../shards/fineweb-edu"]
    [sources.code]
    weight = 0.2
    manifests = "../shards/stack-edu"

Weights are shares of *sampled tokens* (normalised, so 50/20/... works as well as 0.5/0.2);
a small source with a large weight is simply repeated more often (the loader reshuffles it
every epoch). A mixture is never a copy of the data.

`freeze()` writes a snapshot: the mixture plus every shard's path, size and sha256, and a
content hash over weights and shard hashes (paths left out, so moving the data tree keeps
the id). Snapshots are immutable (written once, read-only; re-freezing a version with other
content is refused) and loading one re-checks every file, refusing any that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from adamba.data.shards import ShardInfo, check_shard, manifest_path, read_manifest, shard_dict
from adamba.data.sources import read_text_file
from adamba.errors import AdambaError

SNAPSHOT_KIND = "adamba-snapshot"
SNAPSHOT_FORMAT = 1
STAGE_KEYS = {"name", "sources"}
STAGE_FIX = "a stage is a TOML file of [sources.NAME] tables with weight and manifests"
SNAPSHOT_FIX = "make one with `adamba data mix STAGE --freeze VERSION`"
SOURCE_KEYS = {"weight", "manifests"}


@dataclass
class MixSource:
    name: str
    weight: float  # normalised token share
    manifests: list[Path]


@dataclass
class Mixture:
    name: str
    sources: list[MixSource]
    path: Path | None = None


def is_mixture_file(path: str | Path) -> bool:
    """True for a stage TOML or a snapshot JSON (manifests are .jsonl files or folders)."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in (".toml", ".json")


def load_stage(path: str | Path) -> Mixture:
    """Parse and check a stage file; every manifest it names must exist."""
    p = Path(path)
    if not p.is_file():
        raise AdambaError(f"stage file not found: {p}")
    text = read_text_file(p, "a stage file", STAGE_FIX)
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AdambaError(f"{p} is not valid TOML: {e}; {STAGE_FIX}") from None
    if bad := set(d) - STAGE_KEYS:
        raise AdambaError(
            f"{p}: unknown key(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(STAGE_KEYS))}"
        )
    table = d.get("sources")
    if not isinstance(table, dict) or not table:
        raise AdambaError(f"{p}: add at least one [sources.NAME] table with weight and manifests")
    sources = []
    for name, s in table.items():
        where = f"{p} [sources.{name}]"
        if not isinstance(s, dict):
            raise AdambaError(f"{where}: must be a table with weight and manifests")
        if bad := set(s) - SOURCE_KEYS:
            raise AdambaError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; valid: weight, manifests")
        w = s.get("weight")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise AdambaError(f"{where}: weight must be a number > 0, got {w!r}")
        ms = s.get("manifests")
        ms = [ms] if isinstance(ms, str) else ms
        if not ms or not all(isinstance(m, str) for m in ms):
            raise AdambaError(f"{where}: manifests must be a path or a list of paths")
        paths = [manifest_path(p.parent / m) for m in ms]
        sources.append(MixSource(name, float(w), paths))
    total = sum(s.weight for s in sources)
    for s in sources:
        s.weight /= total
    return Mixture(str(d.get("name") or p.stem), sources, p)


def _content_hash(name: str, version: str, sources: list[dict]) -> str:
    canon = [
        (s["name"], round(s["weight"], 12), [(sh["sha256"], sh["tokens"], sh["dtype"]) for sh in s["shards"]])
        for s in sources
    ]
    blob = json.dumps([name, version, canon], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path.resolve(), base.resolve())


def freeze(mixture: Mixture | str | Path, version: str, out: str | Path, verify: bool = True) -> Path:
    """Write the immutable snapshot `<out>/<name>-<version>.json` (or `out` if it ends in .json).

    Every shard is re-hashed first (`verify`), so a snapshot never certifies corrupted data.
    """
    mix = mixture if isinstance(mixture, Mixture) else load_stage(mixture)
    if not version or any(c in version for c in "/\\ "):
        raise AdambaError(f"snapshot version {version!r} must be non-empty, without spaces or slashes")
    out = Path(out)
    target = out if out.suffix == ".json" else out / f"{mix.name}-{version}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    sources, fps = [], set()
    for s in mix.sources:
        shards = [sh for m in s.manifests for sh in read_manifest(m)]
        for sh in shards:
            if problem := check_shard(sh, rehash=verify):
                raise AdambaError(f"cannot freeze {mix.name}: {problem}; fix it with `adamba data verify`")
        fps.update(sh.tokenizer for sh in shards)
        entries = []
        for sh in shards:
            e = shard_dict(sh)
            e["path"] = _rel(sh.path, target.parent)
            entries.append(e)
        sources.append(
            {
                "name": s.name,
                "weight": s.weight,
                "manifests": [_rel(m, target.parent) for m in s.manifests],
                "tokens": sum(sh.tokens for sh in shards),
                "shards": entries,
            }
        )
    if len(fps) > 1:
        raise AdambaError(
            f"{mix.name} mixes shards made by {len(fps)} different tokenizers; re-shard with one"
        )
    snap = {
        "kind": SNAPSHOT_KIND,
        "format": SNAPSHOT_FORMAT,
        "name": mix.name,
        "version": version,
        "stage": str(mix.path) if mix.path else "",
        "tokenizer": fps.pop(),
        "content_hash": _content_hash(mix.name, version, sources),
        "sources": sources,
    }
    if target.exists():
        old = _read_json(target)
        if old.get("content_hash") == snap["content_hash"]:
            return target  # the same snapshot again: nothing to do
        raise AdambaError(
            f"snapshot {target} already exists with different content; versions are immutable, pick a new one"
        )
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(snap, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o444)
    tmp.replace(target)
    return target


def _read_json(p: Path) -> dict:
    text = read_text_file(p, "a snapshot", SNAPSHOT_FIX)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise AdambaError(f"{p} is not a snapshot: not valid JSON ({e}); {SNAPSHOT_FIX}") from None
    if not isinstance(d, dict):
        raise AdambaError(f"{p} is not a snapshot (expected a JSON object); {SNAPSHOT_FIX}")
    return d


def read_snapshot(path: str | Path) -> dict:
    """The raw JSON of a snapshot file; AdambaError naming it when it is not one at all (binary,
    not JSON, not an adamba snapshot), before any of its shards is looked at."""
    p = Path(path)
    if not p.is_file():
        raise AdambaError(f"snapshot not found: {p}")
    d = _read_json(p)
    if d.get("kind") != SNAPSHOT_KIND:
        raise AdambaError(f"{p} is not an adamba snapshot ({SNAPSHOT_FIX})")
    return d


@dataclass
class Snapshot:
    name: str
    version: str
    content_hash: str
    tokenizer: str
    path: Path
    sources: list[tuple[str, float, list[ShardInfo]]]

    @property
    def id(self) -> str:
        """What a training run records: name@version#hash-prefix."""
        return f"{self.name}@{self.version}#{self.content_hash[:12]}"


def load_snapshot(path: str | Path, verify: bool = True) -> Snapshot:
    """Read a snapshot and check that every file still matches it (sha256 when `verify`,
    else existence and size); any difference is refused, naming the snapshot and the file."""
    p = Path(path)
    d = read_snapshot(p)
    try:
        label = f"snapshot {d['name']}@{d['version']} ({p})"
        if _content_hash(d["name"], d["version"], d["sources"]) != d["content_hash"]:
            raise AdambaError(f"{label} was edited after it was frozen (content hash mismatch); re-freeze it")
        sources = []
        for s in d["sources"]:
            shards = []
            for e in s["shards"]:
                e = dict(e, path=(p.parent / e["path"]).resolve())
                sh = ShardInfo(**{k: v for k, v in e.items() if k in ShardInfo.__dataclass_fields__})
                if problem := check_shard(sh, rehash=verify):
                    raise AdambaError(f"{label}: its files no longer match: {problem}")
                shards.append(sh)
            sources.append((s["name"], float(s["weight"]), shards))
        return Snapshot(d["name"], d["version"], d["content_hash"], d["tokenizer"], p, sources)
    except KeyError as e:
        raise AdambaError(f"{p} is a damaged snapshot (missing {e}); re-freeze it") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise AdambaError(f"{p} is a damaged snapshot ({e}); re-freeze it") from None


def load_components(
    path: str | Path, verify: bool = True
) -> tuple[list[tuple[str, float, list[ShardInfo]]], str]:
    """(name, weight, shards) per source of a stage or snapshot file, and its id (the
    snapshot id, or "stage:<name>" for an unfrozen stage)."""
    p = Path(path)
    if p.suffix.lower() == ".toml":
        mix = load_stage(p)
        comps = [
            (s.name, s.weight, [sh for m in s.manifests for sh in read_manifest(m)]) for s in mix.sources
        ]
        return comps, f"stage:{mix.name}"
    snap = load_snapshot(p, verify=verify)
    return snap.sources, snap.id


def plan(mixture: Mixture) -> list[dict]:
    """Per source: weight, tokens available, and how many tokens of the mixture one pass over
    that source corresponds to (the point where it starts repeating)."""
    rows = []
    for s in mixture.sources:
        tokens = sum(sh.tokens for m in s.manifests for sh in read_manifest(m))
        rows.append({"name": s.name, "weight": s.weight, "tokens": tokens, "epoch_at": tokens / s.weight})
    return rows
