"""Hugging Face checkpoints in and out: `import_hf` (a transformers model folder -> an adamba run
directory) and `export_hf` (an adamba checkpoint -> a folder `AutoModelForCausalLM` loads).

Each architecture module maps names and refuses what adamba does not compute; this file reads and
writes the files and makes the two promises a conversion needs: every weight of the source is
used (a key left over would be a silently dropped weight), and an export computes the same
logits as the adamba model (checked with transformers before the folder is kept).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from adamba.config import Config
from adamba.data.tokenizer import CONFIG_FILE, Tokenizer
from adamba.errors import AdambaError
from adamba.model.lm import LM

REFUSED = {
    "gpt2": "GPT-2 is not supported: its learned position embeddings, LayerNorm with biases and GELU MLP "
    "are not adamba layers (Llama, Mistral, Qwen3, Mamba2, Bamba and GPT-OSS are)",
}


def _module(model_type: str):
    from adamba.hf import bamba, llama, mamba2

    if model_type == "gpt_oss":
        from adamba.hf import gpt_oss

        return gpt_oss
    for mod in (llama, mamba2, bamba):
        if model_type in mod.MODEL_TYPES:
            return mod
    if model_type in REFUSED:
        raise AdambaError(REFUSED[model_type])
    raise AdambaError(
        f"model_type {model_type!r} is not supported; import takes llama, mistral, qwen3, mamba2, bamba, gpt_oss"
    )


class _Tracked(dict):
    """A state dict that remembers which keys were read, so unused source weights are caught."""

    def __init__(self, *a):
        super().__init__(*a)
        self.read: set[str] = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)


def read_weights(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers model folder: model.safetensors, a sharded
    model.safetensors.index.json, or pytorch_model.bin."""
    from safetensors.torch import load_file

    index = src / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out = {}
        for s in shards:
            out.update(load_file(src / s))
        return out
    if (src / "model.safetensors").is_file():
        return load_file(src / "model.safetensors")
    if (src / "pytorch_model.bin").is_file():
        return torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise AdambaError(f"{src} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def hf_to_lm(hf_cfg: dict, sd: dict[str, torch.Tensor]) -> LM:
    """The adamba LM computing what the transformers model of (config.json, weights) computes."""
    mod = _module(hf_cfg.get("model_type", ""))
    tracked = _Tracked(sd)
    cfg, mapped = mod.to_adamba(hf_cfg, tracked)
    left = sorted(k for k in set(sd) - tracked.read if not k.endswith("rotary_emb.inv_freq"))
    if left:
        more = f" (+{len(left) - 3} more)" if len(left) > 3 else ""
        raise AdambaError(
            f"weights the {hf_cfg['model_type']} mapping does not use: {', '.join(left[:3])}{more}"
        )
    model = LM(cfg)
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    return model.eval()


def import_hf(
    src: str | Path, out: str | Path, overwrite: bool = False, tokenizer: str | Path | None = None
) -> Path:
    """A transformers model folder (config.json, weights, tokenizer.json + tokenizer_config.json)
    -> checkpoint step 0 of the run directory `out` (weights, config, tokenizer, import.json),
    ready for `adamba sample / eval / chat` or `train.init_from`."""
    from adamba.checkpoint import fresh_out_dir, save_checkpoint

    src = Path(src)
    if not (src / "config.json").is_file():
        raise AdambaError(f"{src} is not a transformers model folder (no config.json)")
    tok_src = Path(tokenizer) if tokenizer else src
    tok_file = tok_src / "tokenizer.json" if tok_src.is_dir() else tok_src
    if not tok_file.is_file():
        raise AdambaError(
            f"{tok_src} has no tokenizer.json; save one with transformers "
            "(AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)) or pass --tokenizer PATH"
        )
    tok = Tokenizer.load(tok_file)
    hf_cfg = json.loads((src / "config.json").read_text())
    model = hf_to_lm(hf_cfg, read_weights(src))
    if tok.vocab_size > model.cfg.vocab_size:
        raise AdambaError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.cfg.vocab_size}"
        )
    dst = fresh_out_dir(out, overwrite)  # only now: a failed import leaves an old --out as it was
    tmp = dst / ".tokenizer"
    tok.save(tmp / "tokenizer.json")
    record = {
        "import": hf_cfg["model_type"],
        "from": str(src.resolve()),
        "architectures": hf_cfg.get("architectures"),
        "params": model.num_params(),
        "pattern": model.cfg.pattern,
        "tokenizer_vocab": tok.vocab_size,
    }
    path = save_checkpoint(
        dst, 0, model, Config(model=model.cfg), tmp / "tokenizer.json", state={"import": record}
    )
    shutil.rmtree(tmp)
    (dst / "import.json").write_text(json.dumps(record, indent=2))
    return path


def lm_to_hf(model: LM) -> tuple[object, dict[str, torch.Tensor]]:
    """(transformers config, state dict) of the architecture computing what `model` computes."""
    from adamba.hf import bamba, llama, mamba2

    kinds = set(model.cfg.layer_types())
    if hasattr(model, "elastic"):
        raise AdambaError(
            "export takes a model without elastic heads (transformers has no Matryoshka widths)"
        )
    if "K" in kinds:
        raise AdambaError(
            "KDA layers have no transformers twin to export to: Kimi Linear pairs KDA with MLA attention and "
            "MoE, not adamba's GQA attention and MLP"
        )
    if "moe" in model.cfg.layer_ffns():  # GPT-OSS; it refuses what is not all attention + MoE
        from adamba.hf import gpt_oss

        return gpt_oss.from_adamba(model)
    if kinds == {"A"}:
        return llama.from_adamba(model)
    if kinds == {"M"} and set(model.cfg.layer_ffns()) == {"none"}:
        return mamba2.from_adamba(model)
    return bamba.from_adamba(model)


def export_hf(ckpt: str | Path, out: str | Path, overwrite: bool = False, check: bool = True) -> Path:
    """An adamba checkpoint -> a transformers model folder (config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json). With `check`, the folder is loaded back with
    AutoModelForCausalLM and its logits compared with adamba's (1e-4) before it is kept."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise AdambaError("export needs transformers: pip install 'adamba[hf]'") from None
    from safetensors.torch import save_file

    from adamba.checkpoint import fresh_out_dir, load_model

    model, tok, ck = load_model(ckpt)
    hc, sd = lm_to_hf(model)
    dst = fresh_out_dir(out, overwrite)
    hc.bos_token_id, hc.eos_token_id, hc.pad_token_id = tok.bos_id, tok.eos_id, tok.pad_id
    dst.mkdir(parents=True, exist_ok=True)
    hc.save_pretrained(dst)
    save_file(
        {k: v.detach().contiguous().clone() for k, v in sd.items()},
        dst / "model.safetensors",
        {"format": "pt"},
    )
    tok.hf.save(str(dst / "tokenizer.json"))
    (dst / CONFIG_FILE).write_text(json.dumps(tok.hf_config(), indent=2))
    record = {"export": hc.model_type, "from": str(ck.path), "params": model.num_params()}
    if check:
        record["max_abs_logit_diff"] = _check_export(model, dst)
    (dst / "adamba_export.json").write_text(json.dumps(record, indent=2))
    return dst


def _check_export(model: LM, dst: Path) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (2, min(48, model.cfg.max_seq_len)), generator=g)
    with torch.no_grad():
        diff = float((hf(x).logits - model(x)[0]).abs().max())
    if not diff <= 1e-4:
        shutil.rmtree(dst)
        raise AdambaError(
            f"the exported {type(hf).__name__} differs from the adamba model by {diff:.3g}; nothing kept"
        )
    return diff
