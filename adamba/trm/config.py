"""The config of a TRM run: [model] (the recursive network), [train] (the loop), [task] (what
`load_task` gets) and [run] (where it writes). Plain dataclasses on the same TOML / `--set`
machinery as the LM config (adamba/config_io.py), so keys, types and one-line errors behave
alike; presets live beside the LM ones as adamba/configs/trm-*.toml.

A TRM TOML has a [task] table, which no LM config has: that is how `adamba train` tells a TRM
config apart and points to `adamba trm train` (`is_trm_config`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from adamba.config import ModelConfig, resolve_config_path
from adamba.config_io import _parse_literal, apply_dict, apply_overrides, check_ranges
from adamba.errors import AdambaError


@dataclass
class TRMModelConfig:
    """[model]: one small core network f applied recursively (adamba/trm/model.py)."""

    d_model: int = 128
    heads: int = 4
    # core layers, one letter each: A bidirectional attention, M MLP-mixer (token-mixing MLP over
    # the sequence, TRM's Sudoku variant), K KDA scanned in both directions; "KKKA" is the 3:1 core
    pattern: str = "AA"
    ffn_ratio: float = 4.0  # channel MLP hidden = ratio * d_model
    ffn_act: str = "swiglu"  # "swiglu" (TRM's) or "relu2"
    mixer_ratio: float = 4.0  # MLP-mixer hidden = ratio * positions
    rope: bool = True  # RoPE in attention layers (TRM turns it off for the MLP-mixer)
    n: int = 6  # latent updates z <- f(z + y + x) per round
    T: int = 3  # rounds per supervision step; the first T-1 run without gradients
    n_sup: int = 16  # supervision steps (the carry y, z passes from one to the next, detached)
    halting: bool = True  # training: rows halt when the Q head says so (else after n_sup steps)
    explore: float = 0.1  # training: chance a row gets a random minimum number of steps
    puzzle_len: int = 1  # positions prepended for the puzzle embedding (the Q head reads the first)
    puzzle_lr: float = 1e-2  # the puzzle embedding's own learning rate (sign SGD, as TRM)
    puzzle_wd: float = 0.1  # its decoupled weight decay
    kda_chunk: int = 16  # KDA chunk length (chunks longer than the grid only cost padding on a CPU)
    norm_eps: float = 1e-5
    # filled from the task when 0 (the checkpoint keeps them, so the model rebuilds without data)
    vocab_size: int = 0
    seq_len: int = 0
    n_puzzle_ids: int = 0

    @property
    def positions(self) -> int:
        return self.seq_len + self.puzzle_len

    def core_config(self) -> ModelConfig:
        """The adamba.nn layers' config for the core: width, heads, MLP; attention without
        windows or sinks. `pattern` here is the LM's letters (M would be Mamba there: the core
        builds its own mixer layers, see model.py)."""
        m = ModelConfig(vocab_size=max(self.vocab_size, 2), d_model=self.d_model, n_layer=1, pattern="A")
        m.norm_eps = self.norm_eps
        m.max_seq_len = max(self.positions, 1)
        m.attn.n_head = m.attn.n_kv_head = self.heads
        m.attn.use_rope = self.rope
        m.mlp.act, m.mlp.ratio = self.ffn_act, self.ffn_ratio
        m.kda.chunk_size = self.kda_chunk
        return m.validate()

    def validate(self) -> None:
        check_ranges("model", self, MODEL_RANGES)
        if not self.pattern or set(self.pattern) - set("AMK"):
            raise AdambaError(
                f"model.pattern={self.pattern!r}: use the letters A (attention), M (MLP-mixer), K (KDA)"
            )
        if self.ffn_act not in ("swiglu", "relu2"):
            raise AdambaError(f"model.ffn_act={self.ffn_act!r}: choose 'swiglu' or 'relu2'")
        if self.d_model % self.heads:
            raise AdambaError(f"model.heads={self.heads} must divide model.d_model={self.d_model}")
        if self.rope and (self.d_model // self.heads) % 2:
            raise AdambaError(
                f"model.d_model / model.heads={self.d_model // self.heads} must be even for RoPE, or set model.rope=false"
            )


MODEL_RANGES = {
    **{k: ">= 1" for k in ("d_model", "heads", "n", "T", "n_sup", "puzzle_len", "kda_chunk")},
    **{k: "> 0" for k in ("ffn_ratio", "mixer_ratio", "norm_eps")},
    **{k: ">= 0" for k in ("puzzle_lr", "puzzle_wd", "vocab_size", "seq_len", "n_puzzle_ids")},
    "explore": "[0, 1]",
}


@dataclass
class TRMTrainConfig:
    """[train]: AdamW on the network, sign SGD on the puzzle embedding, warmup then cosine."""

    batch_size: int = 64
    lr: float = 1e-3
    lr_min_ratio: float = 1.0  # cosine decay to this fraction of lr (1.0 = constant after warmup, TRM's)
    weight_decay: float = 0.1  # on matrices; norms, biases and the Q head's bias are not decayed
    beta1: float = 0.9
    beta2: float = 0.95
    warmup: int = 100  # steps of linear warmup
    max_steps: int = 1000  # optimizer steps (each is one supervision step of every row)
    ema: float = 0.999  # EMA decay of the weights evaluated and saved; 0 = no EMA
    loss: str = "stablemax"  # "stablemax" (TRM's) or "softmax" cross-entropy
    q_weight: float = 0.5  # weight of the halting BCE
    grad_clip: float = 1.0  # max global gradient norm; 0 = off (TRM has none; deep recursion at a high lr diverged here without it)
    eval_every: int = 250  # 0 = only at the end
    eval_batch: int = 256
    eval_n: int = 0  # test rows evaluated during training; 0 = all (the final evaluation is always all)
    ckpt_every: int = 500  # 0 = only at the end
    seed: int = 0
    device: str = "cpu"
    threads: int = (
        0  # CPU threads for torch; 0 = torch's default (1 was 5-40x faster on a busy 2-core machine)
    )

    def validate(self) -> None:
        check_ranges("train", self, TRAIN_RANGES)
        if self.loss not in ("stablemax", "softmax"):
            raise AdambaError(f"train.loss={self.loss!r}: choose 'stablemax' or 'softmax'")


TRAIN_RANGES = {
    **{k: ">= 1" for k in ("batch_size", "max_steps", "eval_batch")},
    **{
        k: ">= 0"
        for k in (
            "warmup",
            "eval_every",
            "eval_n",
            "ckpt_every",
            "weight_decay",
            "q_weight",
            "grad_clip",
            "threads",
        )
    },
    **{"lr": "> 0", "lr_min_ratio": "[0, 1]", "beta1": "[0, 1)", "beta2": "[0, 1)", "ema": "[0, 1)"},
}


@dataclass
class TRMTaskConfig:
    """[task]: `load_task(name, split, **options)`; the test split gets test_options on top."""

    name: str = "sudoku"
    options: dict[str, Any] = field(default_factory=dict)
    test_options: dict[str, Any] = field(default_factory=dict)

    def split_options(self, split: str) -> dict[str, Any]:
        return {**self.options, **(self.test_options if split == "test" else {})}


@dataclass
class TRMRunConfig:
    out_dir: str = "runs/trm"
    progress: bool = True


@dataclass
class TRMConfig:
    model: TRMModelConfig = field(default_factory=TRMModelConfig)
    train: TRMTrainConfig = field(default_factory=TRMTrainConfig)
    task: TRMTaskConfig = field(default_factory=TRMTaskConfig)
    run: TRMRunConfig = field(default_factory=TRMRunConfig)

    def validate(self) -> TRMConfig:
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise AdambaError(f"{path}: invalid TOML: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise AdambaError(f"cannot read config file {path}: {e}") from e


def is_trm_config(name: str) -> bool:
    """Does `name` (a path or preset) hold a TRM config (a [task] table)? False when unreadable:
    the LM loader then reports the problem."""
    try:
        return isinstance(_read_toml(resolve_config_path(name)).get("task"), dict)
    except AdambaError:
        return False


def task_override(cfg: TRMConfig, item: str) -> bool:
    """`--set task.options.KEY=VALUE` (or test_options): the task's options are a free table, so
    the value is parsed as a TOML / JSON literal (a bare word stays a string)."""
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 3 or parts[:2] not in (["task", "options"], ["task", "test_options"]):
        return False
    try:
        parsed = _parse_literal(key, value.strip())
    except AdambaError:
        parsed = value.strip()
    getattr(cfg.task, parts[1])[parts[2]] = parsed
    return True


def load_trm_config(name: str | None = None, overrides: list[str] | None = None) -> TRMConfig:
    """Defaults, then the TOML file or preset, then --set overrides; validated."""
    cfg = TRMConfig()
    if name:
        path = resolve_config_path(name)
        data = _read_toml(path)
        if not isinstance(data.get("task"), dict):
            raise AdambaError(f"{path} is not a TRM config (no [task] table): train it with `adamba train`")
        apply_dict(cfg, data, source=str(path))
    rest = [o for o in overrides or [] if not task_override(cfg, o)]
    apply_overrides(cfg, rest)
    return cfg.validate()


def trm_config_from_dict(data: dict[str, Any]) -> TRMConfig:
    """Rebuild a TRMConfig saved with to_dict (a checkpoint's config.json)."""
    cfg = TRMConfig()
    for sec in ("model", "train", "task", "run"):
        obj, table = getattr(cfg, sec), data.get(sec) or {}
        names = {f.name for f in dataclasses.fields(obj)}
        for k, v in table.items():
            if k in names:
                setattr(obj, k, v)
    return cfg


def read_trm_config(ckpt_dir: Path) -> TRMConfig:
    try:
        data = json.loads((ckpt_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdambaError(f"{ckpt_dir}: unreadable config.json ({e})") from e
    if "task" not in data or "n_sup" not in (data.get("model") or {}):
        raise AdambaError(f"{ckpt_dir} is not a TRM checkpoint (an LM one? use `adamba eval`)")
    return trm_config_from_dict(data)
