"""Plain dataclasses for every setting, TOML presets and type-checked dotted overrides.

A config file has one table per section ([model], [data], [train], [run], [elastic]); the model's
layer kinds have tables of their own ([model.attn], [model.mlp], [model.mamba], [model.kda]).
`--set section.key=value` (or `section.table.key=value`) overrides one field after loading.
Unknown keys and wrong types fail with one line that names the key and lists the valid ones,
because a typo silently ignored costs a run. Files in an older layout are migrated on load
(`migrate`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from adamba.errors import AdambaError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class AttnConfig:
    """[model.attn]: causal self-attention (A layers)."""

    n_head: int = 4
    n_kv_head: int = 4
    head_dim: int = 0  # 0 = d_model // n_head (resolved by validate)
    use_rope: bool = True
    rope_theta: float = 10000.0
    qk_norm: bool = True
    window: int = 0  # sliding-window size, 0 = full causal attention


@dataclass
class MLPConfig:
    """[model.mlp]: the feed-forward of every layer that has one."""

    act: str = "relu2"  # "relu2" or "swiglu"
    ratio: float = 4.0  # hidden = round(ratio * d_model)


@dataclass
class MambaConfig:
    """[model.mamba]: Mamba2 (M layers); names follow transformers' Mamba2Config."""

    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    head_dim: int = 32
    n_groups: int = 1
    chunk_size: int = 64
    ffn: str = "mlp"  # feed-forward on M layers ("none" as in Mamba2 LMs)


@dataclass
class KDAConfig:
    """[model.kda]: Kimi Delta Attention (K layers)."""

    n_head: int = 0  # 0 = attn.n_head (resolved by validate)
    head_dim: int = 0  # 0 = attn.head_dim (resolved by validate)
    conv: int = 4
    chunk_size: int = 64


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 256
    n_layer: int = 4
    pattern: str = "A"  # layer mixers, repeated to n_layer: A attention, M Mamba2, K KDA
    ffn: str = "mlp"  # feed-forward per layer: "mlp" or "none"; a string of letters D/N repeats too
    # embeddings, norms, init
    tie_embeddings: bool = False
    max_seq_len: int = 1024
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # zero the residual output projections and the LM head (every block starts as the identity)
    zero_init_out: bool = False
    attn: AttnConfig = field(default_factory=AttnConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    mamba: MambaConfig = field(default_factory=MambaConfig)
    kda: KDAConfig = field(default_factory=KDAConfig)

    def layer_types(self) -> list[str]:
        """The mixer letter of every layer: the pattern repeated and cut to n_layer."""
        return _repeat(self.pattern, self.n_layer, "model.pattern", "AMK")

    def layer_ffns(self) -> list[str]:
        """'mlp' or 'none' per layer (M layers follow mamba.ffn)."""
        if self.ffn in ("mlp", "none"):
            base = [self.ffn] * self.n_layer
        else:
            base = ["mlp" if c == "D" else "none" for c in _repeat(self.ffn, self.n_layer, "model.ffn", "DN")]
        return [self.mamba.ffn if t == "M" else f for t, f in zip(self.layer_types(), base)]

    def validate(self) -> ModelConfig:
        """Check the values and resolve the derived defaults (the 0s of attn.head_dim, kda.n_head,
        kda.head_dim), so layers read plain numbers. Run it after the last override: a resolved
        head_dim no longer follows d_model."""
        a = self.attn
        if a.head_dim == 0 and a.n_head > 0:
            a.head_dim = self.d_model // a.n_head
        self.kda.n_head = self.kda.n_head or a.n_head
        self.kda.head_dim = self.kda.head_dim or a.head_dim
        self.layer_types()
        self.layer_ffns()
        if "A" in self.pattern and a.n_head % max(a.n_kv_head, 1):
            raise AdambaError(
                f"model.attn.n_head={a.n_head} must be a multiple of model.attn.n_kv_head={a.n_kv_head} (GQA groups)"
            )
        if self.mlp.act not in ("relu2", "swiglu"):
            raise AdambaError(f"model.mlp.act={self.mlp.act!r}: choose 'relu2' or 'swiglu'")
        if self.mamba.ffn not in ("mlp", "none"):
            raise AdambaError(f"model.mamba.ffn={self.mamba.ffn!r}: choose 'mlp' or 'none'")
        return self


def _repeat(pattern: str, n: int, key: str, letters: str) -> list[str]:
    if not pattern or any(c not in letters for c in pattern):
        raise AdambaError(f"{key}={pattern!r}: use only the letters {', '.join(letters)}")
    return [pattern[i % len(pattern)] for i in range(n)]


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # manifest.jsonl files or shard folders
    val: list[str] = field(default_factory=list)
    tokenizer: str = ""  # tokenizer.json path
    seq_len: int = 256


@dataclass
class TrainConfig:
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    max_minutes: float = 0.0  # > 0: after a few steps, shrink max_steps to fit this wall-clock budget
    lr: float = 3e-3
    schedule: str = "cosine"  # "cosine" or "wsd"
    warmup_frac: float = 0.01
    decay_frac: float = 0.2  # WSD: final fraction of steps spent decaying
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    embed_lr_mult: float = 1.0  # learning-rate factor for the token embedding
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 20
    ckpt_every: int = 200
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu", "cuda", "mps"
    dtype: str = "float32"  # "float32" or "bfloat16" (autocast on GPU)
    compile: bool = False  # torch.compile the training forward (CPU: needs a C++ compiler)
    threads: int = 0  # torch intra-op threads on CPU, 0 = leave torch's default

    def validate(self) -> None:
        if self.schedule not in ("cosine", "wsd"):
            raise AdambaError(f"train.schedule={self.schedule!r}: choose 'cosine' or 'wsd'")
        if self.dtype not in ("float32", "bfloat16"):
            raise AdambaError(f"train.dtype={self.dtype!r}: choose 'float32' or 'bfloat16'")
        for name in ("batch_size", "grad_accum", "max_steps"):
            if getattr(self, name) < 1:
                raise AdambaError(f"train.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ElasticConfig:
    """Matryoshka widths + early exit (adamba/model/elastic.py, training in adamba/train/elastic.py)."""

    enabled: bool = False  # train with sandwich width sampling + gate/predictor heads (per phase)
    widths: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])  # fractions of full
    sandwich: bool = True  # per step: full + smallest + one random middle width (else full only)
    exit_threshold: float = 0.95  # gate probability above which a token exits early (auto mode)
    expand_threshold: float = 0.5  # gate probability below which the last layers run at full width
    expand_layers: int = 2  # the last N layers where expansion may switch to full width
    expand_train: float = 0.25  # share of sandwich steps whose middle member is an expansion schedule
    gate_hidden: int = 64  # ConfidenceGate: 0 = one Linear(d, 1) per layer, N = a d -> N -> 1 MLP
    gate_per_width: bool = True  # one more set of gates per narrow width, fitted in the calibration phase
    exit_loss_weight: float = 0.1  # weight of the intermediate-layer LM loss (trains layers to exit)
    exit_token_frac: float = (
        0.125  # fraction of positions the exit loss scores (an LM-head matmul per layer each)
    )
    exit_distill_weight: float = 0.0  # weight of KL(final layer || intermediate layer), teacher detached
    calibrate_steps: int = 4000  # gate-calibration Adam steps after the LM steps (LM frozen; fits the gate)
    calibrate_reuse: int = 8  # calibration steps per forward pass of the frozen model
    predictor_weight: float = 0.1  # weight of the width-predictor BCE (inputs detached)
    predictor_layer: int = 1  # the predictor reads the pooled hidden state after this many layers
    predictor_tol: float = 0.04  # a width is "good enough" if its loss <= full-width loss + tol (nats/token)

    def validate(self) -> None:
        if not self.widths or any(not (0.0 < w <= 1.0) for w in self.widths) or 1.0 not in self.widths:
            raise AdambaError(
                f"elastic.widths={self.widths}: use fractions in (0, 1] that include 1.0, e.g. [0.125, 0.25, 0.5, 1.0]"
            )
        self.widths = sorted(set(float(w) for w in self.widths))
        for name in (
            "exit_threshold",
            "expand_threshold",
            "exit_token_frac",
            "expand_train",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise AdambaError(f"elastic.{name}={v} must lie in [0, 1]")
        for name in (
            "predictor_tol",
            "predictor_weight",
            "exit_loss_weight",
            "gate_hidden",
            "calibrate_steps",
            "exit_distill_weight",
        ):
            if getattr(self, name) < 0:
                raise AdambaError(f"elastic.{name}={getattr(self, name)} must be >= 0")
        if self.expand_layers < 0:
            raise AdambaError(f"elastic.expand_layers={self.expand_layers} must be >= 0")
        if self.calibrate_reuse < 1:
            raise AdambaError(f"elastic.calibrate_reuse={self.calibrate_reuse} must be >= 1")


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs/run"
    progress: bool = True  # live rich progress display


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)

    def validate(self) -> Config:
        self.model.validate()
        self.train.validate()
        self.elastic.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Config)]


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and gently convert) a value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            value = [value] if inner is str and not value.startswith("[") else _parse_literal(key, value)
        if not isinstance(value, (list, tuple)):
            raise AdambaError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(key, v, inner) for v in value]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
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
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise AdambaError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise AdambaError(f"config key '{key}' expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise AdambaError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise AdambaError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise AdambaError(f"config key '{key}' expects a string, got {value!r}")
    return value


def _parse_literal(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AdambaError(
            f"config key '{key}': cannot parse {text!r} as a list (use JSON, e.g. [1, 2])"
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


# Keys removed because measurements showed they did not help (benchmarks/README.md names the
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


def _section(cfg: Config, name: str) -> Any:
    if name not in SECTIONS:
        raise AdambaError(f"unknown config section '{name}'; valid sections: {', '.join(SECTIONS)}")
    return getattr(cfg, name)


def _table(cfg: Config, path: list[str]) -> tuple[Any, str]:
    """The dataclass at a dotted table path (['model', 'attn']) and its printable name."""
    obj = _section(cfg, path[0])
    for i, name in enumerate(path[1:], 1):
        sub = getattr(obj, name, None) if name in _fields(obj) else None
        if not dataclasses.is_dataclass(sub):
            where = ".".join(path[:i])
            tables = [f for f in _fields(obj) if dataclasses.is_dataclass(getattr(obj, f))]
            hint = f"; tables in [{where}]: {', '.join(tables)}" if tables else ""
            raise AdambaError(f"unknown config table '{'.'.join(path[: i + 1])}'{hint}")
        obj = sub
    return obj, ".".join(path)


def _fields(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set `section.key` (or `section.table.key`) to value, type-checked against the dataclass field."""
    parts = dotted.split(".")
    if len(parts) < 2 or not all(parts):
        raise AdambaError(
            f"config key '{dotted}' must look like section.key (sections: {', '.join(SECTIONS)})"
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
            f"unknown config key '{dotted}'; valid keys in [{where}]: {', '.join(_fields(table))}"
        )
    if dataclasses.is_dataclass(hints[key]):
        sub = _fields(getattr(table, key))
        raise AdambaError(f"'{dotted}' is a table: set one of its keys, e.g. {dotted}.{sub[0]}")
    setattr(table, key, _coerce(dotted, value, hints[key]))


def apply_dict(cfg: Config, data: dict[str, Any], source: str = "config") -> Config:
    """Apply a (TOML-shaped) dict of tables, after migrating older layouts."""

    def walk(prefix: str, table: dict[str, Any]) -> None:
        obj, _ = _table(cfg, prefix.split("."))
        for key, value in table.items():
            sub = getattr(obj, key, None) if key in _fields(obj) else None
            if dataclasses.is_dataclass(sub):
                if not isinstance(value, dict):
                    raise AdambaError(f"{source}: '{prefix}.{key}' must be a [{prefix}.{key}] table")
                walk(f"{prefix}.{key}", value)
            else:
                set_value(cfg, f"{prefix}.{key}", value)

    for sec_name, table in migrate(data, strict=True).items():
        if not isinstance(table, dict):
            raise AdambaError(
                f"{source}: '{sec_name}' must be a [section] table; sections: {', '.join(SECTIONS)}"
            )
        _section(cfg, sec_name)
        walk(sec_name, table)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for item in overrides:
        if "=" not in item:
            raise AdambaError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    return cfg


def resolve_config_path(name: str) -> Path:
    """A path to a TOML file, or the name of a built-in preset (e.g. 'tiny-cpu')."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESET_DIR / (name if name.endswith(".toml") else f"{name}.toml")
    if preset.is_file():
        return preset
    if (PRESET_DIR / path.name).is_file():
        return PRESET_DIR / path.name
    names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
    raise AdambaError(f"config file not found: {name} (built-in presets: {names})")


def load_config(name: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file or preset, then --set overrides; validated."""
    cfg = Config()
    if name:
        path = resolve_config_path(name)
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise AdambaError(f"{path}: invalid TOML: {e}") from e
        apply_dict(cfg, data, source=str(path))
    apply_overrides(cfg, overrides or [])
    return cfg.validate()


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with to_dict (a checkpoint's config.json), migrated to today's
    layout. Lenient where loading a TOML file is strict: a key this version no longer has is
    skipped, so an older checkpoint still loads (its weights are checked separately)."""

    def fill(obj: Any, table: dict[str, Any]) -> None:
        names = set(_fields(obj))
        for k, v in table.items():
            if k not in names:
                continue
            if dataclasses.is_dataclass(getattr(obj, k)):
                if isinstance(v, dict):
                    fill(getattr(obj, k), v)
            else:
                setattr(obj, k, v)

    cfg = Config()
    for sec_name, table in migrate(data).items():
        if isinstance(table, dict):
            fill(_section(cfg, sec_name), table)
    return cfg
