"""Plain dataclasses for every setting, TOML presets and type-checked dotted overrides.

A config file has one table per section ([model], [data], [train], [run], [elastic], [post], [predictive]);
the model's layer kinds have tables of their own ([model.attn], [model.mlp], [model.mamba], [model.kda]).
`--set section.key=value` (or `section.table.key=value`) overrides one field after loading.
Unknown keys, wrong types (a TOML string where a number belongs too) and values out of range
fail with one line that names the key and what it accepts, because a mistake silently taken costs
a run. Files in an older layout are migrated on load (`migrate`). The generic machinery (typed
values, dotted keys, migration) lives in adamba/config_io.py; the dataclasses, their `validate`
and loading stay here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from adamba.config_io import (  # noqa: F401  (re-exported: the config API is adamba.config)
    MOVED,
    REMOVED,
    apply_dict,
    apply_overrides,
    check_range,
    check_ranges,
    fields,
    fill_lenient,
    migrate,
    section,
    set_value,
)
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
    # per attention layer: S = sliding (`window` keys), F = full causal; the letters are repeated
    # over the A layers in order (the i-th A layer, not the i-th layer, so injecting M/K layers
    # keeps every attention layer's window); "" = every A layer uses `window` (GPT-OSS: "SF")
    window_pattern: str = ""
    bias: bool = False  # biases on q/k/v (qkv_proj) and o_proj (GPT-OSS attention_bias)
    sinks: bool = False  # a learned logit per head that joins the softmax denominator (GPT-OSS)
    # RoPE scaling: "" (plain RoPE) or "yarn"; the yarn_* values below default to GPT-OSS's
    rope_scaling: str = ""
    yarn_factor: float = 32.0  # context extension factor
    yarn_original_max: int = 4096  # the pretraining context (original_max_position_embeddings)
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_truncate: bool = False  # floor/ceil the correction range (transformers' default is true)
    yarn_attention_factor: float = 0.0  # cos/sin scale; 0 = 0.1 ln(factor) + 1

    def window_at(self, a_index: int) -> int:
        """The sliding window of the `a_index`-th attention layer (0-based among A layers); 0 =
        full causal attention."""
        if not self.window_pattern:
            return self.window
        return self.window if self.window_pattern[a_index % len(self.window_pattern)] == "S" else 0


@dataclass
class MLPConfig:
    """[model.mlp]: the feed-forward of every layer that has one."""

    act: str = "relu2"  # "relu2" or "swiglu"
    ratio: float = 4.0  # hidden = round(ratio * d_model)


@dataclass
class MoEConfig:
    """[model.moe]: the mixture-of-experts feed-forward of layers with ffn "moe" (GPT-OSS style,
    adamba/nn/moe.py)."""

    n_experts: int = 8
    top_k: int = 2  # 1: the router learns from aux_weight's loss only (GPT-OSS softmaxes the chosen k)
    ratio: float = 0.0  # expert hidden = round(ratio * d_model); 0: the MLP's hidden size
    aux_weight: float = 0.01  # load-balancing loss weight (transformers' router_aux_loss_coef)
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0


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


# The range of every numeric field of [model] and its tables, checked whether or not a layer uses
# it (a value no layer reads is still a mistake); what depends on the pattern is checked in
# ModelConfig.validate.
MODEL_RANGES = {
    **{"vocab_size": ">= 2", "d_model": ">= 1", "n_layer": ">= 1", "max_seq_len": ">= 1"},
    **{"norm_eps": "> 0", "init_std": "> 0"},
}
TABLE_RANGES = {
    "attn": {
        **{"n_head": ">= 1", "n_kv_head": ">= 1", "head_dim": ">= 0", "window": ">= 0", "rope_theta": "> 0"},
        **{k: "> 0" for k in ("yarn_factor", "yarn_beta_fast", "yarn_beta_slow")},
        **{"yarn_original_max": ">= 1", "yarn_attention_factor": ">= 0"},
    },
    "mlp": {"ratio": "> 0"},
    "mamba": {k: ">= 1" for k in ("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size")},
    "kda": {"n_head": ">= 0", "head_dim": ">= 0", "conv": ">= 1", "chunk_size": ">= 1"},
    "moe": {
        **{"n_experts": ">= 1", "top_k": ">= 1", "ratio": ">= 0", "aux_weight": ">= 0"},
        **{"swiglu_alpha": "> 0", "swiglu_limit": "> 0"},
    },
}


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    d_model: int = 256
    n_layer: int = 4
    pattern: str = "A"  # layer mixers, repeated to n_layer: A attention, M Mamba2, K KDA
    # feed-forward per layer: "mlp", "moe" or "none"; letters D/E/N (dense/experts/none) repeat too
    ffn: str = "mlp"
    # embeddings, norms, init
    tie_embeddings: bool = False
    max_seq_len: int = 1024  # initial RoPE table length; the tables grow on demand, so not a limit
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # zero the residual output projections and the LM head (every block starts as the identity)
    zero_init_out: bool = False
    attn: AttnConfig = field(default_factory=AttnConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    mamba: MambaConfig = field(default_factory=MambaConfig)
    kda: KDAConfig = field(default_factory=KDAConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)

    def layer_types(self) -> list[str]:
        """The mixer letter of every layer: the pattern repeated and cut to n_layer."""
        return _repeat(self.pattern, self.n_layer, "model.pattern", "AMK")

    def layer_ffns(self) -> list[str]:
        """'mlp' or 'none' per layer (M layers follow mamba.ffn)."""
        if self.ffn in ("mlp", "moe", "none"):
            base = [self.ffn] * self.n_layer
        else:
            letter = {"D": "mlp", "E": "moe", "N": "none"}
            base = [letter[c] for c in _repeat(self.ffn, self.n_layer, "model.ffn", "DEN")]
        return [self.mamba.ffn if t == "M" else f for t, f in zip(self.layer_types(), base)]

    def validate(self) -> ModelConfig:
        """Check the values and resolve the derived defaults (the 0s of attn.head_dim, kda.n_head,
        kda.head_dim), so layers read plain numbers. Run it after the last override: a resolved
        head_dim no longer follows d_model. Every range first, then what the pattern uses."""
        check_ranges("model", self, MODEL_RANGES)
        for name, specs in TABLE_RANGES.items():
            check_ranges(f"model.{name}", getattr(self, name), specs)
        if self.mlp.act not in ("relu2", "swiglu"):
            raise AdambaError(f"model.mlp.act={self.mlp.act!r}: choose 'relu2' or 'swiglu'")
        if self.mamba.ffn not in ("mlp", "none"):
            raise AdambaError(f"model.mamba.ffn={self.mamba.ffn!r}: choose 'mlp' or 'none'")
        kinds, a = set(self.layer_types()), self.attn
        ffns = self.layer_ffns()
        if a.head_dim == 0 and ("A" in kinds or ("K" in kinds and self.kda.head_dim == 0)):
            if self.d_model % a.n_head:
                raise AdambaError(
                    f"model.attn.n_head={a.n_head} must divide model.d_model={self.d_model} "
                    "(head_dim = d_model / n_head), or set model.attn.head_dim"
                )
        if a.head_dim == 0:
            a.head_dim = self.d_model // a.n_head
        self.kda.n_head = self.kda.n_head or a.n_head
        self.kda.head_dim = self.kda.head_dim or a.head_dim
        if "A" in kinds:
            self._check_attention()
        if "M" in kinds:
            self._check_mamba()
        if "moe" in ffns and self.moe.top_k > self.moe.n_experts:
            raise AdambaError(
                f"model.moe.top_k={self.moe.top_k} must be <= model.moe.n_experts={self.moe.n_experts}"
            )
        if "mlp" in ffns and round(self.mlp.ratio * self.d_model) < 1:
            raise AdambaError(
                f"model.mlp.ratio={self.mlp.ratio} gives an MLP of 0 units at model.d_model={self.d_model}; "
                f"use model.mlp.ratio >= {1 / self.d_model:.3g}"
            )
        return self

    def _check_attention(self) -> None:
        a = self.attn
        if a.n_head % a.n_kv_head:
            raise AdambaError(
                f"model.attn.n_head={a.n_head} must be a multiple of model.attn.n_kv_head={a.n_kv_head} (GQA groups)"
            )
        if a.use_rope and a.head_dim % 2:
            raise AdambaError(
                f"model.attn.head_dim={a.head_dim} must be even for RoPE (rotary pairs of channels); "
                "change model.attn.head_dim (or n_head) or set model.attn.use_rope=false"
            )
        if set(a.window_pattern) - set("SF"):
            raise AdambaError(
                f"model.attn.window_pattern={a.window_pattern!r}: use only the letters S (sliding, "
                "model.attn.window keys) and F (full), repeated over the attention layers"
            )
        if "S" in a.window_pattern and a.window == 0:
            raise AdambaError(
                f"model.attn.window_pattern={a.window_pattern!r} has sliding layers (S) but "
                "model.attn.window=0: set model.attn.window to their number of keys"
            )
        if a.rope_scaling not in ("", "yarn"):
            raise AdambaError(f"model.attn.rope_scaling={a.rope_scaling!r}: choose '' (plain RoPE) or 'yarn'")
        if a.rope_scaling and not a.use_rope:
            raise AdambaError(
                f"model.attn.rope_scaling={a.rope_scaling!r} needs model.attn.use_rope=true (or rope_scaling='')"
            )

    def _check_mamba(self) -> None:
        mc = self.mamba
        d_inner = mc.expand * self.d_model
        if d_inner % mc.head_dim:
            raise AdambaError(
                f"model.mamba.head_dim={mc.head_dim} must divide mamba.expand*d_model={d_inner}"
            )
        if (d_inner // mc.head_dim) % mc.n_groups:
            raise AdambaError(
                f"model.mamba.n_groups={mc.n_groups} must divide the number of Mamba heads "
                f"{d_inner // mc.head_dim} (= mamba.expand*d_model / mamba.head_dim)"
            )


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

    def validate(self) -> None:
        check_range("data.seq_len", self.seq_len, ">= 1")
        for name in ("train", "val"):
            if any(not p for p in getattr(self, name)):
                raise AdambaError(f"data.{name}={getattr(self, name)} has an empty path; list manifest paths")


DEVICES = r"auto|cpu|mps|cuda(:\d+)?"
SCHEDULES = ("cosine", "wsd", "constant")
PARALLEL = ("auto", "none", "ddp", "fsdp")
# train/ and post/objectives.py register them
OBJECTIVES = ("lm", "sft", "elastic", "gate-calibration", "grpo", "dpo", "distill")


@dataclass
class TrainConfig:
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    init_from: str = ""  # a checkpoint (run dir or folder) whose weights start a fresh run (after surgery)
    max_minutes: float = 0.0  # > 0: after a few steps, shrink max_steps to fit this wall-clock budget
    lr: float = 3e-3
    schedule: str = "cosine"  # "cosine", "wsd" or "constant" (after the warm-up)
    warmup_frac: float = 0.01
    decay_frac: float = 0.2  # WSD: final fraction of steps spent decaying
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    embed_lr_mult: float = 1.0  # learning-rate factor for the token embedding
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = no clipping
    eval_every: int = 100  # 0 = no evaluation during training
    eval_batches: int = 20  # validation: this many training steps' worth of sequences (all ranks)
    ckpt_every: int = 200  # 0 = a checkpoint at the end only
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N", "mps"
    dtype: str = "float32"  # "float32" or "bfloat16" (autocast on GPU)
    compile: bool = False  # torch.compile the training forward (CPU: needs a C++ compiler)
    threads: int = 0  # torch intra-op threads on CPU, 0 = leave torch's default
    parallel: str = "auto"  # under torchrun: "ddp" or "fsdp" (FSDP2); "auto" = ddp; "none" refuses
    activation_checkpointing: bool = False  # recompute each block's activations in backward

    RANGES = {
        **{k: ">= 1" for k in ("batch_size", "grad_accum", "max_steps", "eval_batches", "log_every")},
        **{k: ">= 0" for k in ("eval_every", "ckpt_every", "threads", "max_minutes", "grad_clip")},
        **{k: "[0, 1]" for k in ("warmup_frac", "decay_frac", "min_lr_frac")},
        **{k: ">= 0" for k in ("weight_decay", "embed_lr_mult")},
        "lr": "> 0",
        "eps": "> 0",  # 0 divides 0 by 0 for a parameter that never had a gradient
        "beta1": "[0, 1)",
        "beta2": "[0, 1)",
        "seed": f"[0, {2**63})",  # numpy's and torch's generators take no negative seed
    }

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise AdambaError(f"train.schedule={self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise AdambaError(f"train.dtype={self.dtype!r}: choose 'float32' or 'bfloat16'")
        if self.parallel not in PARALLEL:
            raise AdambaError(f"train.parallel={self.parallel!r}: choose one of {', '.join(PARALLEL)}")
        if not re.fullmatch(DEVICES, self.device):
            raise AdambaError(
                f"train.device={self.device!r}: choose auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps"
            )
        check_ranges("train", self, self.RANGES)


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
    exit_token_frac: float = 0.125  # fraction of positions the exit loss scores (an LM-head matmul/layer)
    exit_distill_weight: float = 0.0  # weight of KL(final layer || intermediate layer), teacher detached
    calibrate_steps: int = 4000  # gate-calibration Adam steps after the LM steps (LM frozen; fits the gate)
    calibrate_reuse: int = 8  # calibration steps per forward pass of the frozen model
    predictor_weight: float = 0.1  # weight of the width-predictor BCE (inputs detached)
    predictor_layer: int = 1  # the predictor reads the pooled hidden state after this many layers
    predictor_tol: float = 0.04  # a width is "good enough" if its loss <= full-width loss + tol (nats/token)

    RANGES = {
        **{k: "[0, 1]" for k in ("exit_threshold", "expand_threshold", "exit_token_frac", "expand_train")},
        **{k: ">= 0" for k in ("predictor_tol", "predictor_weight", "exit_loss_weight")},
        **{k: ">= 0" for k in ("exit_distill_weight", "gate_hidden", "calibrate_steps")},
        **{k: ">= 0" for k in ("expand_layers", "predictor_layer")},
        "calibrate_reuse": ">= 1",
    }

    def validate(self) -> None:
        if not self.widths or any(not (0.0 < w <= 1.0) for w in self.widths) or 1.0 not in self.widths:
            raise AdambaError(
                f"elastic.widths={self.widths}: use fractions in (0, 1] that include 1.0, e.g. [0.125, 0.25, 0.5, 1.0]"
            )
        self.widths = sorted(set(float(w) for w in self.widths))
        check_ranges("elastic", self, self.RANGES)


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs/run"
    progress: bool = True  # live rich progress display
    tensorboard: bool = True  # TensorBoard event files in <run>/tensorboard/ (tensorboard --logdir runs)
    wandb: bool = False  # also log to Weights & Biases (needs `pip install wandb`; WANDB_MODE=offline works)
    wandb_project: str = "adamba"

    def validate(self) -> None:
        if not self.out_dir.strip():
            raise AdambaError("run.out_dir is empty: name the run directory (--out DIR)")


@dataclass
class PhaseConfig:
    """One [[phase]] table: what trains, on which data, for how long, with which objective and
    learning rate (adamba/train/phases.py resolves it; unset fields take the [train] / [data]
    values). A config without [[phase]] tables is one `lm` phase of train.max_steps (two with
    elastic.enabled: `elastic`, then `gate-calibration`)."""

    name: str = ""  # default: phase<i>
    objective: str = "lm"  # lm | sft (chat data with a loss mask) | elastic | gate-calibration | grpo
    steps: int = 0  # the phase's length in optimizer steps ...
    tokens: int = 0  # ... or in training tokens (rounded up to whole steps); one of the two
    data: list[str] = field(default_factory=list)  # manifests, shard folders, stages; [] = data.train
    train: list[str] | None = None  # trainable: name globs, or @A / @M / @K (whole layers of that
    # kind); None = the objective's own (everything, or the gates for gate-calibration)
    freeze: list[str] = field(default_factory=list)  # taken out of `train`
    lr: float | None = None
    schedule: str | None = None  # cosine | wsd | constant
    warmup_frac: float | None = None
    min_lr_frac: float | None = None
    weight_decay: float | None = None
    beta2: float | None = None  # AdamW's second-moment decay
    grad_clip: float | None = None  # 0 = no clipping
    batch_size: int | None = None
    grad_accum: int | None = None
    seq_len: int | None = None
    reset_optimizer: bool = False  # drop the optimizer state of parameters that trained in the
    # previous phase (kept by default); a parameter frozen for a phase has no state to carry

    RANGES = {
        **{k: ">= 0" for k in ("steps", "tokens")},
        **{k: "[0, 1]" for k in ("warmup_frac", "min_lr_frac")},
        "lr": "> 0",
        **{k: ">= 0" for k in ("weight_decay", "grad_clip")},
        "beta2": "[0, 1)",
        **{k: ">= 1" for k in ("batch_size", "grad_accum", "seq_len")},
    }

    def validate(self, where: str) -> None:
        if self.objective not in OBJECTIVES:
            raise AdambaError(f"{where}.objective={self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if (self.steps > 0) == (self.tokens > 0):
            raise AdambaError(f"{where}: give its length as steps = N or tokens = N (one of the two, > 0)")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise AdambaError(f"{where}.schedule={self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        for sel in [*(self.train or []), *self.freeze]:
            if not sel or (sel.startswith("@") and (len(sel) < 2 or set(sel[1:]) - set("AMK"))):
                raise AdambaError(f"{where}: bad parameter selector {sel!r} (a name glob, or @A / @M / @K)")
        set_ = {k: v for k, v in self.RANGES.items() if getattr(self, k) is not None}
        check_ranges(where, self, set_)


@dataclass
class PostConfig:
    """[post]: post-training after SFT, read by the grpo, dpo and distill objectives
    (adamba/post/objectives.py checks `reward`, `tools`, the files and the teacher)."""

    prompts: str = ""  # JSONL of {question, answer} or {messages, answer} records (a grpo phase's)
    group_size: int = 8  # G completions per prompt; a micro-step samples the phase's batch_size prompts
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0  # 0 = sample from the whole vocabulary
    reward: str = "exact+0.1*format"  # a weighted sum of adamba/post/rewards.py's REWARDS
    loss_type: str = "dapo"  # grpo | bnpo | dr_grpo | dapo (adamba/post/grpo.py)
    scale: str = "group"  # advantage scaling: group | batch | none
    eps_low: float = 0.2  # the ratio is clipped to [1 - eps_low, 1 + eps_high]
    eps_high: float = 0.2
    beta: float = 0.0  # KL to the model at the phase's start; 0 keeps no reference model
    pairs: str = ""  # dpo: JSONL of {prompt, chosen, rejected} strings
    dpo_beta: float = 0.1  # dpo: the implicit reward's scale
    label_smoothing: float = 0.0  # dpo: cDPO's share of the flipped pair
    teacher: str = ""  # distill: an adamba run or checkpoint with the student's tokenizer
    distill_mode: str = "on-policy"  # on-policy (student samples, reverse KL) | off-policy (teacher, forward)
    tools: str = ""  # grpo: tools the rollouts may call, comma-separated (calculator, python); "" = none
    max_calls: int = 4  # grpo with tools: tool calls run per completion at most

    RANGES = {"group_size": ">= 2", "max_new_tokens": ">= 1", "temperature": "> 0", "top_k": ">= 0"}
    RANGES["max_calls"] = ">= 1"
    RANGES.update({k: ">= 0" for k in ("eps_low", "eps_high", "beta")})
    RANGES.update({"dpo_beta": "> 0", "label_smoothing": "[0, 0.5)"})

    def validate(self) -> None:
        check_ranges("post", self, self.RANGES)
        for key, choices in (
            ("loss_type", "grpo, bnpo, dr_grpo, dapo"),
            ("scale", "group, batch, none"),
            ("distill_mode", "on-policy, off-policy"),
        ):
            if getattr(self, key) not in choices.split(", "):
                raise AdambaError(f"post.{key}={getattr(self, key)!r}: choose one of {choices}")


@dataclass
class PredictiveConfig:
    """[predictive]: experimental; WARMUP, FULL, PREDICT, CORRECT cycles (adamba/train/predictive.py)."""

    enabled: bool = False
    warmup_steps: int = 20  # real steps that only collect updates
    full_steps: int = 10  # real steps that train the dynamics model before a PREDICT run
    horizon: int = 4  # first PREDICT run's length; doubles after a clean run, halves after a departure
    max_horizon: int = 16
    correct_steps: int = 2  # real steps after a PREDICT run: residuals stored, corrector fitted
    history: int = 4  # recent real updates the predicted one combines (per tensor)
    band: float = 3.0  # leave PREDICT when loss > predicted + band x the loss noise's std
    max_error: float = 0.7  # relative error of the last prediction above which CORRECT goes to FULL
    hidden: int = 16  # state encoder width
    lr: float = 3e-3  # Adam rate of the dynamics model and the corrector

    RANGES = {k: ">= 1" for k in ("full_steps", "horizon", "max_horizon", "correct_steps", "hidden")}
    RANGES.update({"warmup_steps": ">= 0", "history": ">= 2", "band": "> 0", "max_error": "> 0", "lr": "> 0"})

    def validate(self) -> None:
        check_ranges("predictive", self, self.RANGES)
        if self.max_horizon < self.horizon:
            raise AdambaError(
                f"predictive.max_horizon={self.max_horizon} must be >= predictive.horizon={self.horizon}"
            )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    post: PostConfig = field(default_factory=PostConfig)
    predictive: PredictiveConfig = field(default_factory=PredictiveConfig)
    phase: list[PhaseConfig] = field(default_factory=list)  # [[phase]] tables, in order

    def validate(self) -> Config:
        """Every section's ranges, then what one section asks of another."""
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.run.validate()
        self.elastic.validate()
        self.post.validate()
        self.predictive.validate()
        for i, ph in enumerate(self.phase):
            ph.validate(f"phase.{i}")
            if ph.objective in ("elastic", "gate-calibration") and not self.elastic.enabled:
                raise AdambaError(
                    f"phase.{i} ({ph.name or ph.objective}) uses the {ph.objective!r} objective: set elastic.enabled=true"
                )
        names = [ph.name for ph in self.phase if ph.name]
        if len(names) != len(set(names)):
            raise AdambaError(f"phase names repeat ({', '.join(names)}): give each [[phase]] its own name")
        e, n = self.elastic, self.model.n_layer
        if e.enabled and e.predictor_layer > n - 1:
            raise AdambaError(
                f"elastic.predictor_layer={e.predictor_layer} must be below model.n_layer={n} "
                f"(the predictor reads the hidden state after that many layers): use 0..{n - 1}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(Config)]
TABLE_LISTS = {"phase": PhaseConfig}  # sections that are arrays of tables ([[phase]])


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
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise AdambaError(f"{path}: invalid TOML: {e}") from e
        except UnicodeDecodeError as e:
            raise AdambaError(f"{path}: not a TOML file (not UTF-8 text: byte {e.start})") from e
        except OSError as e:
            raise AdambaError(f"cannot read config file {path}: {e.strerror}") from e
        apply_dict(cfg, data, source=str(path))
    apply_overrides(cfg, overrides or [])
    return cfg.validate()


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with to_dict (a checkpoint's config.json), migrated to today's
    layout. Lenient where loading a TOML file is strict: a key this version no longer has is
    skipped, so an older checkpoint still loads (its weights are checked separately)."""
    cfg = Config()
    tables = migrate(data)
    fill_lenient(cfg, {k: v for k, v in tables.items() if k in TABLE_LISTS})
    for sec_name, table in tables.items():
        if isinstance(table, dict):
            fill_lenient(section(cfg, sec_name), table)
    return cfg
