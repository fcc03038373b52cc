"""Rooms import downward only (../shared/ARCHITECTURE.md, section 2): every `adamba` import in
the package, lazy ones inside functions included, goes to a lower room or stays in its own."""

import ast
from pathlib import Path

import adamba

# room -> level; a room may import rooms of a lower level only (data and config sit low so that
# everything above may use them)
LEVELS = {
    "errors": 0,
    "config_io": 0.5,  # the TOML/override machinery config.py is built on
    "config": 1,
    "data": 1,
    "ops": 2,
    "nn": 3,
    "model": 4,
    "checkpoint": 5,
    "eval": 6,
    "hf": 6,
    "tools": 6,
    "train": 7,
    "trm": 7,
    "surgery": 7,
    "post": 8,
    "serve": 8,
    "quickstart": 9,
    "grow": 9.5,  # the plan route in miniature: reuses quickstart's data stages
    "cli": 10,
    "__main__": 11,
    "__init__": 11,
}
PKG = Path(adamba.__file__).parent


def room_of(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "adamba":
            if node.module == "adamba":  # from adamba import checkpoint
                yield from (f"adamba.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "adamba")


def test_rooms_import_downward_only():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        src = room_of(".".join(rel.parts))
        assert src in LEVELS, f"{path}: room '{src}' has no level here or in ARCHITECTURE.md"
        for tgt in imports(path):
            dst = room_of(tgt)
            if dst != src and LEVELS.get(dst, 99) >= LEVELS[src]:
                bad.append(f"{rel} ({src}) imports {tgt} ({dst})")
    assert not bad, "\n".join(bad)


def test_no_module_in_the_package_is_over_600_lines():
    long = {
        str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, long
