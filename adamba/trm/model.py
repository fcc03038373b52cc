"""The Tiny Recursive Model (Jolicoeur-Martineau 2025, "Less is More: Recursive Reasoning with
Tiny Networks"): one small core network f, applied over and over to an answer y and a latent z.

One supervision step, given the carry (y, z) and the embedded input x:
    repeat T times (the first T-1 under torch.no_grad: only the last round is backpropagated):
        z <- f(z + y + x)   n times      (refine the reasoning)
        y <- f(y + z)                    (update the answer from it)
    logits = head(y), q_halt = q_head(y[first position])
and (y, z) go on to the next step detached (deep supervision: up to n_sup steps per example,
each with its own loss). f is the same network in both updates; its input sums say which
update it is doing (x is present only when z is updated).

Details kept from the reference code (SamsungSAILMontreal/TinyRecursiveModels, trm.py):
- x = sqrt(d) * [puzzle embedding positions ; token embeddings], embeddings init std 1/sqrt(d);
  the puzzle embedding table (one d-vector per puzzle id, zero init) is a buffer trained by
  its own sign-SGD optimizer (`SparseSignSGD`), filling the first of `puzzle_len` prepended
  positions (the others stay 0: extra room for the recursion to write into);
- y and z start from fixed random vectors (truncated normal, std 1), saved with the weights;
- post-norm blocks: h = norm(h + mixer(h)); h = norm(h + mlp(h));
- the Q head reads position 0 and starts at weight 0, bias -5 (halting is rare at first);
- linear weights: truncated LeCun normal (std 1/sqrt(fan_in)).

Core layers (TRMModelConfig.pattern): A = adamba.nn Attention with `causal = False`; M = the
MLP-mixer: adamba.nn MLP applied across positions (a [B, L, d] -> [B, d, L] transpose), TRM's
Sudoku variant; K = adamba.nn KDA, which is causal, run on the sequence and on its reverse with
the same weights and the two outputs averaged, so every cell sees the whole grid (a row-major
scan forward and backward). Norms are adamba.nn RMSNorm (a learnable scale, where TRM's has none).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from adamba.config import ModelConfig
from adamba.nn.attention import Attention
from adamba.nn.kda import KDA
from adamba.nn.mlp import MLP
from adamba.nn.norm import RMSNorm
from adamba.trm.config import TRMModelConfig


def trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    """Truncated normal at +-2 standard deviations whose actual std is `std` (JAX's
    truncated_normal: torch's trunc_normal_ with std s has a smaller spread than s)."""
    with torch.no_grad():
        if std == 0:
            return t.zero_()
        # the std of a standard normal truncated to [-2, 2]
        z = math.erf(2 / math.sqrt(2))
        pdf = math.exp(-2) / math.sqrt(2 * math.pi)
        unit = math.sqrt(1 - 2 * 2 * pdf / z)
        return nn.init.trunc_normal_(t, 0.0, std / unit, -2 * std / unit, 2 * std / unit)


class BiKDA(nn.Module):
    """KDA over a grid read both ways: the mean of the causal scan of the sequence and of its
    reverse (one set of weights), so no cell is blind to the cells after it."""

    def __init__(self, cfg):
        super().__init__()
        self.kda = KDA(cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.kda(h) + self.kda(h.flip(1)).flip(1))


class TokenMixer(nn.Module):
    """TRM's MLP-mixer layer: an MLP across the positions (the same for every channel)."""

    def __init__(self, positions: int, ratio: float, act: str):
        super().__init__()
        cfg = ModelConfig(d_model=positions)
        cfg.mlp.act, cfg.mlp.ratio = act, ratio
        self.mlp = MLP(cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h.transpose(1, 2)).transpose(1, 2)


class Block(nn.Module):
    """Post-norm: h = norm(h + mixer(h)); h = norm(h + mlp(h))."""

    def __init__(self, kind: str, cfg: TRMModelConfig):
        super().__init__()
        core = cfg.core_config()
        if kind == "A":
            self.mixer = Attention(core)
            self.mixer.causal = False
        elif kind == "M":
            self.mixer = TokenMixer(cfg.positions, cfg.mixer_ratio, cfg.ffn_act)
        else:
            self.mixer = BiKDA(core)
        self.mlp = MLP(core)
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm1(h + self.mixer(h))
        return self.norm2(h + self.mlp(h))


class Core(nn.Module):
    """f(h, injection) = blocks(h + injection): the one network both updates use."""

    def __init__(self, cfg: TRMModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(kind, cfg) for kind in cfg.pattern)

    def forward(self, h: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        h = h + injection
        for block in self.blocks:
            h = block(h)
        return h


@dataclass
class Carry:
    """What passes from one supervision step to the next, per row: answer y and latent z
    ([B, positions, d], detached)."""

    y: torch.Tensor
    z: torch.Tensor


class TRM(nn.Module):
    def __init__(self, cfg: TRMModelConfig):
        super().__init__()
        if min(cfg.vocab_size, cfg.seq_len, cfg.n_puzzle_ids) < 1:
            raise ValueError("TRMModelConfig needs vocab_size, seq_len and n_puzzle_ids from the task")
        self.cfg = cfg
        d = cfg.d_model
        self.embed_scale = math.sqrt(d)
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.core = Core(cfg)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.q_head = nn.Linear(d, 1, bias=True)
        self.register_buffer("puzzle_emb", torch.zeros(cfg.n_puzzle_ids, d))
        self.register_buffer("y_init", torch.empty(d))
        self.register_buffer("z_init", torch.empty(d))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        trunc_normal_(self.embed.weight, 1 / self.embed_scale)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, m.in_features**-0.5)
            elif isinstance(m, nn.Conv1d):  # KDA's short convolution: torch's default init
                m.reset_parameters()
            elif isinstance(m, KDA):
                m.forget_gate.reset_gate()
        trunc_normal_(self.y_init, 1.0)
        trunc_normal_(self.z_init, 1.0)
        self.puzzle_emb.zero_()
        self.q_head.weight.zero_()
        self.q_head.bias.fill_(-5.0)

    def embed_input(self, inputs: torch.Tensor, puzzle_emb: torch.Tensor) -> torch.Tensor:
        """x: [B, puzzle_len + seq_len, d] from the tokens and each row's puzzle vector [B, d]."""
        B = inputs.shape[0]
        tok = self.embed(inputs)
        pz = torch.zeros(B, self.cfg.puzzle_len, self.cfg.d_model, dtype=tok.dtype, device=tok.device)
        pz = torch.cat([puzzle_emb.to(tok.dtype)[:, None], pz[:, 1:]], dim=1)
        return self.embed_scale * torch.cat([pz, tok], dim=1)

    def initial_carry(self, batch: int) -> Carry:
        shape = (batch, self.cfg.positions, self.cfg.d_model)
        return Carry(self.y_init.expand(shape).clone(), self.z_init.expand(shape).clone())

    def reset_rows(self, carry: Carry, rows: torch.Tensor) -> Carry:
        """The carry with `rows` ([B] bool) back at the initial y, z (a new example there)."""
        m = rows.view(-1, 1, 1)
        return Carry(torch.where(m, self.y_init, carry.y), torch.where(m, self.z_init, carry.z))

    def forward(
        self,
        carry: Carry,
        inputs: torch.Tensor,
        puzzle_ids: torch.Tensor,
        puzzle_emb: torch.Tensor | None = None,
    ) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        """One supervision step -> (new carry detached, logits [B, seq_len, V], q_halt [B]).
        `puzzle_emb` [B, d]: the rows' puzzle vectors as a leaf with gradient (training: its
        optimizer reads the gradient); default the table's rows, no gradient."""
        if puzzle_emb is None:
            puzzle_emb = self.puzzle_emb[puzzle_ids]
        x = self.embed_input(inputs, puzzle_emb)
        y, z = carry.y, carry.z
        n, T = self.cfg.n, self.cfg.T
        with torch.no_grad():
            for _ in range(T - 1):
                for _ in range(n):
                    z = self.core(z, y + x)
                y = self.core(y, z)
        for _ in range(n):
            z = self.core(z, y + x)
        y = self.core(y, z)
        logits = self.head(y[:, self.cfg.puzzle_len :])
        q = self.q_head(y[:, 0]).squeeze(-1).float()
        return Carry(y.detach(), z.detach()), logits, q


class SparseSignSGD:
    """TRM's optimizer for the puzzle embedding table: per step, the gradients of the rows a batch
    used are summed per puzzle id and each such row moves by -lr * sign(grad) after a decoupled
    weight decay (Adam is close to sign SGD for gradients this sparse). Rows not in the batch are
    untouched. Stateless, so nothing to checkpoint but the table."""

    def __init__(self, table: torch.Tensor, lr: float, weight_decay: float):
        self.table, self.lr, self.weight_decay = table, lr, weight_decay

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows for `ids` as a leaf tensor that collects their gradient."""
        return self.table[ids].detach().requires_grad_(True)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, rows: torch.Tensor, lr: float) -> None:
        if rows.grad is None:
            return
        uniq, inv = ids.unique(return_inverse=True)
        grad = torch.zeros(len(uniq), rows.shape[1], dtype=rows.grad.dtype, device=rows.device)
        grad.index_add_(0, inv, rows.grad)
        p = self.table[uniq]
        p.mul_(1 - lr * self.weight_decay).add_(grad.sign(), alpha=-lr)
        self.table[uniq] = p


class EMA:
    """An exponential moving average of a model's parameters in a copy of it (what evaluation
    runs and checkpoints hold); buffers (the puzzle table, initial y/z) are copied as they are."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, 1 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def count_params(model: nn.Module) -> int:
    """Trainable parameters plus the puzzle embedding table (trained by its own optimizer)."""
    return sum(p.numel() for p in model.parameters()) + model.puzzle_emb.numel()


def core_calls(cfg: TRMModelConfig) -> tuple[int, int]:
    """(core applications with gradient, without) in one supervision step."""
    return cfg.n + 1, (cfg.T - 1) * (cfg.n + 1)
