"""Training in several processes under `torchrun`: the process group, the parallel wrapper of
each phase (DDP or FSDP2), the few reductions the trainer needs, and checkpoint state gathered to
plain full tensors, so a checkpoint is the same file whatever the world size wrote it (a run
saved by 2 ranks resumes in 1 process, and the reverse).

Why a `Step` module: DDP and FSDP2 act through the forward of the module they wrap (DDP readies
its gradient reduction there, FSDP2 gathers the sharded weights). The objectives do not all go
through `LM.forward` (the elastic sandwich runs the blocks at several widths, gate calibration
runs the frozen model and the gates), so the wrapped module is a `Step` whose forward runs any
function of the model; every objective and the evaluation run inside it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn

from adamba.errors import AdambaError


class Step(nn.Module):
    """Runs `fn(*args)` as this module's forward; `model` is its only submodule."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(*args)


@dataclass
class Dist:
    """This process's place in the run; world == 1 is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    parallel: str = "none"  # none | ddp | fsdp
    mesh: object = None  # FSDP2's device mesh

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        """Sums over ranks (float64, so token counts stay exact)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        td.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on one (a stop request, a non-finite step)."""
        return self.all_sum([float(flag)])[0] > 0 if self.world > 1 else flag

    def min(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        td.all_reduce(t, op=td.ReduceOp.MIN)
        return float(t)

    def barrier(self) -> None:
        if self.world > 1:
            td.barrier()

    def close(self) -> None:
        if self.world > 1 and td.is_initialized():
            td.destroy_process_group()


def init(parallel: str, device: torch.device) -> Dist:
    """The process group when torchrun started us (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if parallel == "none":
        raise AdambaError(
            f"started with {world} processes (torchrun) but train.parallel='none': "
            "set train.parallel=ddp or fsdp, or run one process"
        )
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    d = Dist(rank=rank, world=world, local_rank=local, parallel="ddp" if parallel == "auto" else parallel)
    if d.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        d.mesh = init_device_mesh(device.type, (world,))
    return d


def local_device(d: Dist, device: torch.device) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK) under torchrun; CPU ranks share the CPU."""
    if d.world > 1 and device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return device


def shard(d: Dist, step: Step) -> None:
    """FSDP2: every block its own unit (its weights gathered only while it runs), the rest
    (embedding, head, norms, elastic heads) in the root unit around the whole step."""
    from torch.distributed.fsdp import fully_shard

    for block in step.model.blocks:
        fully_shard(block, mesh=d.mesh)
    fully_shard(step, mesh=d.mesh)


def wrap(d: Dist, step: Step, find_unused: bool) -> nn.Module:
    """The module a phase runs its steps through: DDP is built per phase over the parameters
    that require gradients now (changing the trainable set under a live DDP wrapper fails with
    "Expected to have finished reduction"); FSDP2 shards once and follows requires_grad."""
    if d.parallel != "ddp":
        return step
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [d.local_rank] if next(step.parameters()).device.type == "cuda" else None
    return DDP(step, device_ids=ids, broadcast_buffers=False, find_unused_parameters=find_unused)


def no_sync(d: Dist, wrapped: nn.Module, skip: bool):
    """Gradient accumulation: no reduction on the micro-steps before the last."""
    if not skip or d.world == 1:
        return contextlib.nullcontext()
    if d.parallel == "ddp":
        return wrapped.no_sync()
    wrapped.set_requires_gradient_sync(False)
    return _resync(wrapped)


@contextlib.contextmanager
def _resync(wrapped: nn.Module):
    try:
        yield
    finally:
        wrapped.set_requires_gradient_sync(True)


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a sharded one (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as plain CPU tensors (FSDP2 shards gathered)."""
    return {k: full(v).detach().cpu() for k, v in model.state_dict().items()}


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name with full tensors, so it loads into any
    world size and any wrapper (torch's own state dict numbers the parameters instead)."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    sd = opt.state_dict()
    state = {
        order[i]: {k: full(v).cpu() if torch.is_tensor(v) else v for k, v in s.items()}
        for i, s in sd["state"].items()
    }
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"by_name": True, "state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, saved: dict) -> None:
    """Inverse of optimizer_state (sharding each tensor like its parameter); a state dict saved
    by torch's own numbering (checkpoints from before) loads as it is."""
    if not saved.get("by_name"):
        opt.load_state_dict(saved)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for g in opt.param_groups for p in g["params"]]
    want = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    have = [g["params"] for g in saved["param_groups"]]
    if want != have:
        raise AdambaError(
            "cannot resume: the optimizer state in the checkpoint is for other parameters than this phase trains "
            f"({sum(map(len, have))} saved, {sum(map(len, want))} now)"
        )
    state = {}
    for i, p in enumerate(params):
        s = saved["state"].get(names[id(p)])
        if s is None:
            continue
        out = {}
        for k, v in s.items():
            if torch.is_tensor(v) and isinstance(p, DTensor) and v.shape == p.shape:
                v = distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            out[k] = v
        state[i] = out
    groups = [
        {**g, "params": list(range(sum(map(len, want[:j])), sum(map(len, want[: j + 1]))))}
        for j, g in enumerate(saved["param_groups"])
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})
