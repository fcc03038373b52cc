"""inject-mamba: insert new Mamba2 layers into a trained model, the residual stream unchanged.

A new block adds mixer(norm(x)) (+ its feed-forward's output) to the residual stream x. With
the mixer's output projection (and the feed-forward's down projection) at zero it adds exactly
zero, so the grown model computes the old function bit for bit; training then moves the new
layers away from zero (their output projections get gradients at once, the rest follows). The
old layers keep their weights under new indices; a phase with `train = ["@M"]` trains only the
new layers and leaves every old weight bitwise unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from adamba.config import ModelConfig
from adamba.errors import AdambaError
from adamba.model.lm import LM


def default_positions(n_layer: int) -> list[int]:
    """After every second block: 1, 3, 5, ... (the original plan's "AAM" layout)."""
    return list(range(1, n_layer, 2))


def grown_config(
    cfg: ModelConfig, after: list[int], kind: str = "M"
) -> tuple[ModelConfig, list[int], list[int]]:
    """The config with a `kind` layer (A, M or K) after each block index in `after`, and (new
    index of every old block, indices of the new blocks)."""
    kinds = cfg.layer_types()
    bad = [i for i in after if not 0 <= i < len(kinds)]
    if bad or len(set(after)) != len(after) or not after:
        raise AdambaError(
            f"--at {','.join(map(str, after)) or '(empty)'}: give distinct block indices in 0..{len(kinds) - 1} "
            f"to insert a {kind} layer after"
        )
    pattern, old_at, new_at = [], [], []
    for i, k in enumerate(kinds):
        old_at.append(len(pattern))
        pattern.append(k)
        if i in after:
            new_at.append(len(pattern))
            pattern.append(kind)
    new = dataclasses.replace(cfg, pattern="".join(pattern), n_layer=len(pattern))
    return new.validate(), old_at, new_at


def zero_output(block) -> None:
    """Make a block add nothing to the residual stream: its mixer's output projection and its
    feed-forward's down projection at zero (the gradient reaches them at once)."""
    mixer = block.mixer
    (mixer.out_proj if hasattr(mixer, "out_proj") else mixer.o_proj).weight.zero_()
    if block.mlp is not None:
        block.mlp.w_down.weight.zero_()


@torch.no_grad()
def inject_mamba(
    model: LM, after: list[int] | None = None, seed: int = 0, kind: str = "M"
) -> tuple[LM, dict]:
    """(the grown model, a record of the surgery). The new blocks (Mamba2 by default; `kind` A or
    K deepens with attention or KDA blocks) are freshly initialised (seeded) except their output
    projections, which are zero."""
    if hasattr(model, "elastic"):
        raise AdambaError(
            "inject-mamba takes a model without elastic heads (their gates are per layer): inject before "
            "Matryoshka training, as the plan does"
        )
    after = default_positions(model.cfg.n_layer) if after is None else after
    cfg, old_at, new_at = grown_config(model.cfg, after, kind)
    torch.manual_seed(seed)
    grown = LM(cfg).to(next(model.parameters()).device)
    old = model.state_dict()
    moved = {}
    for k, v in old.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            k = f"blocks.{old_at[int(i)]}.{rest}"
        moved[k] = v
    for j in new_at:
        b = grown.blocks[j]
        zero_output(b)
        moved.update({f"blocks.{j}.{k}": v for k, v in b.state_dict().items()})
    grown.load_state_dict(moved, strict=True)  # every key placed: nothing dropped by shape
    x = torch.randint(
        0, cfg.vocab_size, (2, min(64, cfg.max_seq_len)), device=next(model.parameters()).device
    )
    diff = float((model.eval()(x)[0] - grown.eval()(x)[0]).abs().max())
    if diff > 1e-6:  # what a silent key drop or a scrambled copy would show
        raise AdambaError(f"the surgery changed the model's logits by {diff:.3g}; nothing written")
    record = {
        "surgery": "inject-mamba" if kind == "M" else f"deepen-{kind}",
        "after_blocks": after,
        "new_blocks": new_at,
        "old_block_moves": {str(i): j for i, j in enumerate(old_at)},
        "pattern": cfg.pattern,
        "params_before": model.num_params(),
        "params_after": grown.num_params(),
        "max_abs_logit_diff": diff,
    }
    return grown, record


def inject_checkpoint(
    ckpt_path: str, out: str, after: list[int] | None = None, overwrite: bool = False, kind: str = "M"
) -> Path:
    """Read a checkpoint (run directory or checkpoint folder), inject, and write the grown model
    as checkpoint step 0 of the run directory `out` (with the tokenizer and surgery.json), ready
    for `adamba train --set train.init_from=OUT` or `sample` / `eval`."""
    from adamba.checkpoint import fresh_out_dir, load_model, save_checkpoint

    model, _, ckpt = load_model(ckpt_path)
    grown, record = inject_mamba(model, after, kind=kind)
    dst = fresh_out_dir(out, overwrite)  # only now: a refused surgery leaves an old --out as it was
    cfg = dataclasses.replace(ckpt.cfg, model=grown.cfg)
    record["from"] = str(ckpt.path)
    path = save_checkpoint(dst, 0, grown, cfg, ckpt.tokenizer_path, state={"surgery": record})
    (dst / "surgery.json").write_text(json.dumps(record, indent=2))
    return path
