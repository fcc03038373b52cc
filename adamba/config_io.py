"""The generic half of the config: typed values, dotted keys, TOML-shaped dicts, older layouts.

Nothing here knows the sections' fields; it walks whatever dataclasses `adamba.config.Config`
holds. A value from a TOML file must already have its field's type (TOML has ints, floats, bools,
strings and arrays: a string where an int belongs is a mistake, not something to convert), while
`--set key=value` strings are parsed, because a command line only has strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from adamba.errors import AdambaError


def check_range(key: str, value: float, spec: str, real: bool | None = None) -> None:
    """Raise one line unless `value` is finite and inside `spec`: ">= 1", "> 0", "[0, 1]",
    "[0, 1)". Finiteness is checked by name because `nan < 0` is False: a NaN passes every plain
    comparison. `real`: the field holds a float (default: judged from the value)."""
    m = re.fullmatch(r"(>=|>) (\S+)|([\[(])(\S+), (\S+)([\])])", spec)
    assert m, spec
    ok = isinstance(value, int) or math.isfinite(value)
    if m[1]:
        lo = float(m[2])
        ok = ok and (value >= lo if m[1] == ">=" else value > lo)
    else:
        lo, hi = float(m[4]), float(m[5])
        ok = ok and (value >= lo if m[3] == "[" else value > lo)
        ok = ok and (value <= hi if m[6] == "]" else value < hi)
    if not ok:
        what = "a finite number" if (isinstance(value, float) if real is None else real) else "an integer"
        where = f"in {spec}" if m[3] else spec
        raise AdambaError(f"{key}={value!r} is out of range: use {what} {where}")


def check_ranges(prefix: str, obj: Any, specs: dict[str, str]) -> None:
    """check_range for several fields of one table; `specs` maps field name -> range."""
    types = {f.name: str(f.type) for f in dataclasses.fields(obj)}
    for name, spec in specs.items():
        check_range(f"{prefix}.{name}", getattr(obj, name), spec, types[name].startswith("float"))


BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def coerce(key: str, value: Any, tp: Any, strict: bool = False) -> Any:
    """Check a value against a dataclass field type. Not `strict` (a `--set` string): parse
    strings into the type. `strict` (a TOML value): only an int may stand in for a float, and a
    lone string for a list of strings."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1]
        if isinstance(value, str) and inner is str and (strict or not value.startswith("[")):
            value = [value]
        elif isinstance(value, str) and not strict:
            value = _parse_literal(key, value)
        if not isinstance(value, (list, tuple)):
            raise AdambaError(f"config key '{key}' expects a list, got {value!r}")
        return [coerce(key, v, inner, strict) for v in value]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(key, value, arg, strict)
            except AdambaError:
                continue
        raise AdambaError(f"config key '{key}' expects {tp}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise AdambaError(f"config key '{key}' expects None, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and not strict and value.lower() in BOOL_WORDS:
            return BOOL_WORDS[value.lower()]
        raise AdambaError(
            f"config key '{key}' expects true/false, got {value!r}{_unquote(key, value, tp, strict)}"
        )
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and not strict:
            try:
                return int(value)
            except ValueError:
                pass
        raise AdambaError(
            f"config key '{key}' expects an integer, got {value!r}{_unquote(key, value, tp, strict)}"
        )
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and not strict:
            try:
                return float(value)
            except ValueError:
                pass
        raise AdambaError(
            f"config key '{key}' expects a number, got {value!r}{_unquote(key, value, tp, strict)}"
        )
    if tp is str:
        if isinstance(value, str):
            return value
        raise AdambaError(f"config key '{key}' expects a string, got {value!r}")
    return value


def _unquote(key: str, value: Any, tp: Any, strict: bool) -> str:
    """The hint for a TOML value that is the right one in quotes ("8" for an integer)."""
    if not (strict and isinstance(value, str)):
        return ""
    try:
        coerce(key, value, tp)
    except AdambaError:
        return ""
    return " (a string: write the value without quotes)"


def _parse_literal(key: str, text: str) -> Any:
    """A list typed on the command line: JSON, or a TOML array (so ['a', 'b'] works too)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            pass
        raise AdambaError(
            f"config key '{key}': cannot parse {text!r} as a list (use JSON or TOML, e.g. [1, 2] or [\"a\"])"
        ) from e


# Keys that moved (the flat [model] table became nested tables) or were renamed: TOML files and
# checkpoints' config.json written before are migrated on load (`migrate`); `--set` with an old
# name says the new one.
MOVED = {
    "elastic.gate_token_frac": "elastic.exit_token_frac",
    **{f"model.{k}": f"model.attn.{k}" for k in ("n_head", "n_kv_head", "head_dim", "use_rope")},
    **{f"model.{k}": f"model.attn.{k}" for k in ("rope_theta", "qk_norm", "window")},
    "model.mlp_act": "model.mlp.act",
    "model.mlp_ratio": "model.mlp.ratio",
    "model.mamba_ffn": "model.mamba.ffn",
    "model.mamba_d_state": "model.mamba.d_state",
    "model.mamba_d_conv": "model.mamba.d_conv",
    "model.mamba_expand": "model.mamba.expand",
    "model.mamba_headdim": "model.mamba.head_dim",
    "model.mamba_ngroups": "model.mamba.n_groups",
    "model.mamba_chunk_size": "model.mamba.chunk_size",
    "model.kda_n_head": "model.kda.n_head",
    "model.kda_head_dim": "model.kda.head_dim",
    "model.kda_conv": "model.kda.conv",
    "model.kda_chunk_size": "model.kda.chunk_size",
}


# Keys removed because measurements showed they did not help (docs/experiments/elastic.md names the
# commit behind any figure that used them): the value that reproduces today's behaviour, and why.
REMOVED = {
    "elastic.gate_weight": (
        None,
        "the gate is fitted only by the calibration phase (elastic.calibrate_steps)",
    ),
    "elastic.gate_full_only": (
        None,
        "the gate is fitted only by the calibration phase (elastic.calibrate_steps)",
    ),
    "elastic.predictor_tol_nats": (True, "elastic.predictor_tol is in nats per token"),
}


def migrate(data: dict[str, Any], strict: bool = False) -> dict[str, Any]:
    """A config dict in today's layout: keys of older layouts (MOVED) put where they live now,
    removed keys (REMOVED) dropped. `strict` (a user's TOML file): a removed key whose value asks
    for the old behaviour is an error rather than silently different. Returns a new dict; the
    input is left alone."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, (keeps, why) in REMOVED.items():
        sec, name = key.split(".", 1)
        table = out.get(sec)
        if isinstance(table, dict) and name in table:
            value = table.pop(name)
            if strict and keeps is not None and value != keeps:
                raise AdambaError(f"config key '{key}' was removed: {why}")
    for old, new in MOVED.items():
        sec, key = old.split(".", 1)
        table = out.get(sec)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table.pop(key)
        *path, leaf = new.split(".")[1:]
        node = table
        for name in path:
            node[name] = dict(node.get(name) or {})
            node = node[name]
        if leaf in node and node[leaf] != value:
            raise AdambaError(f"config sets both '{old}' (the old name) and '{new}'; keep '{new}'")
        node[leaf] = value
    return out


def fields(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def section(cfg: Any, name: str) -> Any:
    if name not in fields(cfg):
        raise AdambaError(f"unknown config section '{name}'; valid sections: {', '.join(fields(cfg))}")
    return getattr(cfg, name)


def table_list_type(obj: Any, name: str) -> type | None:
    """The dataclass of a field that is an array of tables (list[PhaseConfig]), else None."""
    tp = typing.get_type_hints(type(obj)).get(name)
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        if dataclasses.is_dataclass(inner):
            return inner
    return None


def fill_lenient(obj: Any, table: dict[str, Any]) -> None:
    """Copy a saved table (a checkpoint's config.json) into a dataclass, recursing into tables and
    arrays of tables; keys the dataclass no longer has are skipped, values are taken as saved."""
    names = set(fields(obj))
    for k, v in table.items():
        if k not in names:
            continue
        if dataclasses.is_dataclass(getattr(obj, k)):
            if isinstance(v, dict):
                fill_lenient(getattr(obj, k), v)
        elif (inner := table_list_type(obj, k)) is not None and isinstance(v, list):
            items = []
            for t in v:
                items.append(inner())
                fill_lenient(items[-1], t if isinstance(t, dict) else {})
            setattr(obj, k, items)
        else:
            setattr(obj, k, v)


def _table(cfg: Any, path: list[str]) -> tuple[Any, str]:
    """The dataclass at a dotted table path (['model', 'attn'], or ['phase', '1'] in an array of
    tables) and its printable name."""
    obj = section(cfg, path[0])
    for i, name in enumerate(path[1:], 1):
        where = ".".join(path[:i])
        if isinstance(obj, list):
            if not name.isdigit() or int(name) >= len(obj):
                raise AdambaError(
                    f"'{where}.{name}': [{where}] has {len(obj)} table(s), numbered 0..{len(obj) - 1}"
                    if obj
                    else f"'{where}.{name}': the config has no [[{where}]] tables (add them in its TOML file)"
                )
            obj = obj[int(name)]
            continue
        sub = getattr(obj, name, None) if name in fields(obj) else None
        if not (dataclasses.is_dataclass(sub) or table_list_type(obj, name)):
            tables = [f for f in fields(obj) if dataclasses.is_dataclass(getattr(obj, f))]
            hint = f"; tables in [{where}]: {', '.join(tables)}" if tables else ""
            raise AdambaError(f"unknown config table '{'.'.join(path[: i + 1])}'{hint}")
        obj = sub
    if isinstance(obj, list):
        raise AdambaError(f"'{'.'.join(path)}' is an array of tables: name one, e.g. {'.'.join(path)}.0.KEY")
    return obj, ".".join(path)


def set_value(cfg: Any, dotted: str, value: Any, strict: bool = False) -> None:
    """Set `section.key` (or `section.table.key`) to value, type-checked against the dataclass
    field; `strict` for values that carry their own type (TOML), see `coerce`."""
    parts = dotted.split(".")
    if len(parts) < 2 or not all(parts):
        raise AdambaError(
            f"config key '{dotted}' must look like section.key (sections: {', '.join(fields(cfg))})"
        )
    table, where = _table(cfg, parts[:-1])
    key = parts[-1]
    hints = typing.get_type_hints(type(table))
    if key not in hints:
        if dotted in MOVED:
            raise AdambaError(f"config key '{dotted}' is now '{MOVED[dotted]}'")
        if dotted in REMOVED:
            raise AdambaError(f"config key '{dotted}' was removed: {REMOVED[dotted][1]}")
        raise AdambaError(
            f"unknown config key '{dotted}'; valid keys in [{where}]: {', '.join(fields(table))}"
        )
    if dataclasses.is_dataclass(hints[key]):
        sub = fields(getattr(table, key))
        raise AdambaError(f"'{dotted}' is a table: set one of its keys, e.g. {dotted}.{sub[0]}")
    if table_list_type(table, key):
        raise AdambaError(f"'{dotted}' is an array of tables: set a key of one, e.g. {dotted}.0.KEY")
    setattr(table, key, coerce(dotted, value, hints[key], strict))


def apply_dict(cfg: Any, data: dict[str, Any], source: str = "config") -> Any:
    """Apply a (TOML-shaped) dict of tables, after migrating older layouts. Values must have
    their fields' types already (strict: no strings parsed into numbers)."""

    def walk(prefix: str, table: dict[str, Any]) -> None:
        obj, _ = _table(cfg, prefix.split("."))
        for key, value in table.items():
            sub = getattr(obj, key, None) if key in fields(obj) else None
            if dataclasses.is_dataclass(sub):
                if not isinstance(value, dict):
                    raise AdambaError(f"{source}: '{prefix}.{key}' must be a [{prefix}.{key}] table")
                walk(f"{prefix}.{key}", value)
            else:
                try:
                    set_value(cfg, f"{prefix}.{key}", value, strict=True)
                except AdambaError as e:  # name the file: the key alone may be in several
                    raise AdambaError(f"{source}: {e}") from None

    for sec_name, table in migrate(data, strict=True).items():
        if isinstance(table, list) and sec_name in fields(cfg) and (kind := table_list_type(cfg, sec_name)):
            if not all(isinstance(t, dict) for t in table):
                raise AdambaError(f"{source}: '{sec_name}' must be an array of [[{sec_name}]] tables")
            setattr(cfg, sec_name, [kind() for _ in table])
            for i, t in enumerate(table):
                walk(f"{sec_name}.{i}", t)
            continue
        if not isinstance(table, dict):
            raise AdambaError(
                f"{source}: '{sec_name}' must be a [section] table; sections: {', '.join(fields(cfg))}"
            )
        section(cfg, sec_name)
        walk(sec_name, table)
    return cfg


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """`--set section.key=value` strings, parsed into each field's type."""
    for item in overrides:
        if "=" not in item:
            raise AdambaError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    return cfg
