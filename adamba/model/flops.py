"""One FLOPs accounting: 2 x the multiply-adds of every matmul a token runs (forward).

Used by the elastic runner's per-token accounting (widths, exits, copy-forward K/V), by the
training MFU in benchmarks, and by the cost estimator (`adamba estimate`), so the three never
disagree.
Norms, activations, rotary and softmax are left out (a few % at these shapes). Decoding counts
the Mamba2 / KDA layers by their projections only (their state update does not grow with the
context); training (`train_flops`) adds their chunked scans (`scan_flops`), which are 5-20% of
such a layer at training shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def mixer_matmul_flops(mixer: nn.Module) -> float:
    """Per-token FLOPs of an M/K mixer: 2 x its matrix weights (always full width)."""
    return 2 * sum(p.numel() for p in mixer.parameters() if p.ndim >= 2)


def attention_flops(attn: nn.Module, d_model: int, q_heads: int, kv_heads: int, ctx: int) -> float:
    """One token through attention with `q_heads` query heads, K/V computed for `kv_heads` heads,
    attending over `ctx` keys: the q/k/v projections, the scores and weighted values, o_proj."""
    hd = attn.head_dim
    return 2 * d_model * hd * (q_heads + 2 * kv_heads) + 4 * q_heads * hd * ctx + 2 * q_heads * hd * d_model


def mlp_flops(mlp: nn.Module, d_model: int, units: int) -> float:
    """One token through an MLP with `units` hidden units (SwiGLU has three matrices, ReLU² two)."""
    return 2 * d_model * units * (3 if mlp.act == "swiglu" else 2)


def layer_flops(block: nn.Module, d_model: int, width: float, ctx: int, kv_heads: int | None = None) -> float:
    """One token through a block at a Matryoshka width; `kv_heads`: the KV heads whose K/V are
    computed (a cache may store more than the width reads; None = what the width reads)."""
    if block.kind == "A":
        hq, hkv = block.mixer.heads_at(width)
        f = attention_flops(block.mixer, d_model, hq, hkv if kv_heads is None else kv_heads, ctx)
    else:
        f = mixer_matmul_flops(block.mixer)
    if block.mlp is not None and hasattr(block.mlp, "n_experts"):
        f += moe_flops(d_model, block.mlp.units_at(width), block.mlp.top_k, block.mlp.n_experts)
    elif block.mlp is not None:
        f += mlp_flops(block.mlp, d_model, block.mlp.units_at(width))
    return f


def copy_forward_flops(block: nn.Module, d_model: int, kv_heads: int) -> float:
    """A skipped layer's cost under early exit (CALM-style copy-forward): the K/V projections of
    the heads its cache stores; an M/K layer still runs its mixer to advance its state."""
    if block.kind != "A":
        return mixer_matmul_flops(block.mixer)
    return 2 * d_model * block.mixer.head_dim * 2 * kv_heads


def head_flops(model: nn.Module) -> float:
    """The LM head, which every token pays once."""
    return 2 * model.cfg.d_model * model.cfg.vocab_size


def token_flops(model: nn.Module, ctx: int) -> float:
    """One token through the full-width model at context `ctx`, LM head included: the reference
    that elastic FLOPs are reported against."""
    d = model.cfg.d_model
    return head_flops(model) + sum(layer_flops(b, d, 1.0, ctx) for b in model.blocks)


def train_flops_per_token(n_params: int, attn_layers: int, attn_dim: int, seq: int) -> float:
    """Training FLOPs per token (forward + backward) for MFU: 6N for the matmuls over the
    `n_params` non-embedding parameters, plus the attention scores and values of `attn_layers`
    layers of `attn_dim` = heads x head size at sequence length `seq` (PaLM, appendix B). Takes
    numbers, not a model, so a transformers peer is counted the same way."""
    return 6 * n_params + 6 * attn_layers * attn_dim * seq


# --- training steps (the cost estimator, `adamba estimate`) -------------------------------------
# A training step's matmul FLOPs per token, split into what the forward computes and the two
# halves of backward. For y = x W: the forward is 2 x |W| per token, the activation gradient
# dx = dy W^T as much again, the weight gradient dW = x^T dy as much again: 6|W| for a trained
# matrix (the 6N rule), 4|W| for a frozen one the gradient crosses on its way to a trained layer
# below, 2|W| for a frozen one below every trained layer, where backward never goes.
# Weightless matmuls (attention scores and values, the chunked scans) have no weight gradient
# but two input gradients each: backward = 2 x forward wherever the gradient crosses them.


@dataclass
class MoE:
    """A top-`top_k`-of-`n_experts` mixture of experts standing in for every layer's MLP, each
    expert an MLP of `units` hidden units (0: the MLP's own hidden size). Counted only: the model
    has no MoE layer yet, but the cost estimator prices a GPT-OSS-style model with one."""

    n_experts: int
    top_k: int
    units: int = 0


@dataclass
class TrainFlops:
    """Per-token FLOPs of one training step: forward, activation gradients, weight gradients."""

    forward: float = 0.0
    act_grad: float = 0.0
    weight_grad: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.act_grad + self.weight_grad

    def __add__(self, o: TrainFlops) -> TrainFlops:
        return TrainFlops(
            self.forward + o.forward, self.act_grad + o.act_grad, self.weight_grad + o.weight_grad
        )

    def scale(self, k: float) -> TrainFlops:
        return TrainFlops(self.forward * k, self.act_grad * k, self.weight_grad * k)


def moe_flops(d_model: int, expert_units: int, top_k: int, n_experts: int, act: str = "swiglu") -> float:
    """One token through a mixture of experts: the router (d_model -> n_experts logits) and its
    `top_k` experts' MLPs (SwiGLU: three matrices; ReLU²: two). The softmax / top-k selection and
    the weighted sum are elementwise and left out, like every activation here."""
    return 2 * d_model * n_experts + top_k * 2 * d_model * expert_units * (3 if act == "swiglu" else 2)


def mean_context(seq: int, window: int = 0) -> float:
    """The mean number of keys a query reads over a causal sequence of `seq` tokens: (seq + 1) / 2
    under full attention (the causal half, which flash kernels skip), the `window` last keys (at
    most) under a sliding window."""
    w = seq if window <= 0 else min(window, seq)
    return (w * (w + 1) / 2 + (seq - w) * w) / seq


def scan_flops(mixer: nn.Module) -> float:
    """Per-token matmul FLOPs of an M/K mixer's chunked scan (training and prefill; the
    projections are mixer_matmul_flops'). Both count whole chunk blocks, as the kernels compute them.
    Mamba2 SSD, chunk Q, heads H of P channels, state N, G groups: C B^T per group (2QN), the
    intra-chunk output per head (2QP), the chunk state B^T x and the output from the carried state
    C h (2NP each). KDA (chunk C, heads of dk = dv = d): Q K^T and K K^T in the chunk (2Cd each),
    the WY-transformed keys and values (2Cd each), the intra-chunk output (2Cd), and three products
    with the d x d state (reading it for the queries and the delta correction, updating it: 2d²
    each). The C x C triangular solve per chunk (~C²/3 per token) is left out."""
    if hasattr(mixer, "d_state"):  # Mamba2
        q, p, n = mixer.chunk_size, mixer.head_dim, mixer.d_state
        return mixer.ngroups * 2 * q * n + mixer.n_heads * (2 * q * p + 4 * n * p)
    c, d = mixer.chunk_size, mixer.head_dim
    return mixer.n_head * (10 * c * d + 6 * d * d)


# The matrices that read a block's normed input (qkv_proj, Mamba2 in_proj, KDA's q/k/v/beta and
# gate down-projections, the MLP's up and gate): their input gradient is wasted work, and skipped,
# when nothing below them trains.
INPUT_MATRICES = ("qkv_proj", "in_proj", "q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj", "f_a_proj")


def block_matmuls(
    block: nn.Module, d_model: int, width: float, seq: int, moe: MoE | None = None
) -> dict[str, tuple[float, float, float]]:
    """One token of a training sequence of `seq` through a block at a Matryoshka width, per
    sub-module ("mixer", "mlp"): (weight matmul FLOPs, weightless matmul FLOPs, the share of the
    weight FLOPs in matrices reading the sub-module's input)."""
    if block.kind == "A":
        m = block.mixer
        hq, hkv = m.heads_at(width)
        core = 4 * hq * m.head_dim * mean_context(seq, m.window)
        qkv = 2 * d_model * m.head_dim * (hq + 2 * hkv)
        out = {"mixer": (attention_flops(m, d_model, hq, hkv, 0), core, qkv)}
    else:
        inp = 2 * sum(
            p.numel()
            for n, p in block.mixer.named_parameters()
            if p.ndim >= 2 and n.split(".")[-2] in INPUT_MATRICES
        )
        out = {"mixer": (mixer_matmul_flops(block.mixer), scan_flops(block.mixer), float(inp))}
    if block.mlp is not None and hasattr(block.mlp, "n_experts"):  # an MoE layer of the model
        m, units = block.mlp, block.mlp.units_at(width)
        out["mlp"] = (
            moe_flops(d_model, units, m.top_k, m.n_experts),
            0.0,
            2.0 * d_model * m.n_experts + m.top_k * 4.0 * d_model * units,
        )
    elif block.mlp is not None:
        units = block.mlp.units_at(width)
        ups = 2 if block.mlp.act == "swiglu" else 1  # up (+ gate) read the input, down does not
        if moe is None:
            out["mlp"] = (mlp_flops(block.mlp, d_model, units), 0.0, 2.0 * d_model * units * ups)
        else:
            e_units = round((moe.units or block.mlp.hidden) * units / block.mlp.hidden)
            router = 2 * d_model * moe.n_experts
            up = router + moe.top_k * 2 * d_model * e_units * ups
            out["mlp"] = (moe_flops(d_model, e_units, moe.top_k, moe.n_experts, block.mlp.act), 0.0, up)
    return out


def _trained_share(module: nn.Module, trained: set[int]) -> float:
    """The share of a module's matrices (by size) that trains: its weight gradient's share."""
    mats = [p for p in module.parameters() if p.ndim >= 2]
    total = sum(p.numel() for p in mats)
    return sum(p.numel() for p in mats if id(p) in trained) / total if total else 0.0


def train_flops(
    model: nn.Module,
    seq: int,
    trainable: set[str] | None = None,
    width: float = 1.0,
    moe: MoE | None = None,
) -> TrainFlops:
    """Per-token FLOPs of one training pass (forward + backward) of `model` on sequences of `seq`
    tokens at a Matryoshka width, with the parameters named in `trainable` trained (None: all).

    Autograd's rule: a tensor gets a gradient when it depends on a trained parameter. So a
    sub-module (mixer, MLP) pays its activation gradient (= forward for weight matmuls, 2 x forward
    for attention scores/values and scans) when it or something below it trains, less its input
    matrices' input gradient when nothing below its input trains; below the lowest trained
    parameter it pays the forward only. The weight gradient (= forward) is paid by the trained
    matrices alone, pro rata within a mixer or MLP that trains in part (whose activation gradient
    is charged whole). Norms, activations, embedding lookups, optimizer updates and the scans'
    elementwise work are left out. tests/train/test_estimate.py checks this against
    torch.utils.flop_counter on real backward passes."""
    params = dict(model.named_parameters())
    trained = {id(p) for n, p in params.items() if trainable is None or n in trainable}

    def trains(module: nn.Module | None) -> bool:
        return module is not None and any(id(p) in trained for p in module.parameters())

    d = model.cfg.d_model
    below = id(model.embed.weight) in trained  # something under the current point trains
    out = TrainFlops()
    for b in model.blocks:
        norms = {"mixer": b.norm1, "mlp": getattr(b, "norm2", None)}
        for name, (w, core, inp) in block_matmuls(b, d, width, seq, moe).items():
            module = getattr(b, name)
            needs_in = below or trains(norms[name])  # the sub-module's input needs a gradient
            needs_out = needs_in or trains(module)
            out.forward += w + core
            if needs_out:
                out.act_grad += w + 2 * core - (0.0 if needs_in else inp)
            out.weight_grad += w * _trained_share(module, trained)
            below = needs_out
    h = head_flops(model)
    below = below or trains(model.norm)
    out.forward += h
    out.act_grad += h if below else 0.0
    out.weight_grad += h if id(model.head.weight) in trained else 0.0
    return out
