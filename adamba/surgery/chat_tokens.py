"""Give an imported checkpoint adamba's chat tokens: `adamba surgery chat-tokens`.

A model imported from Hugging Face keeps its own tokenizer, which has no <|user|>, <|end|>,
<|tool_call|> ...; chat, SFT data, GRPO and the tools loop render conversations with them. This
appends the missing ones to the tokenizer as special tokens (`Tokenizer.with_chat_tokens`: every
old id and every encoding of ordinary text unchanged) and gives the model rows for them:

- ids inside the model's padded vocabulary (Hugging Face pads embeddings to a round size) reuse
  those rows: the input row is set (no old input can reach it), the output row is kept, so the
  model computes exactly what it did;
- ids past it grow the embedding and the head. Input rows start at the mean of the old rows
  (the usual choice: a new token reads as an average one). A bias-free head cannot give a new
  token zero probability, so the old tokens' logits stay bit for bit but their probabilities
  shrink by the new tokens' share; new output rows start at the mean of the old ones, whose
  logit is the mean logit, far below the likely tokens' (Hewitt, "Initializing New Word
  Embeddings for Pretrained Language Models", 2021). The largest change of an old token's log
  probability on a check batch is measured and recorded (surgery.json), as the other surgeries
  record theirs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model.lm import LM


@torch.no_grad()
def add_chat_tokens(model: LM, tok: Tokenizer, check_len: int = 32) -> tuple[LM, Tokenizer, dict]:
    """(the model with rows for the new tokens, the extended tokenizer, a record); refused in
    one line when the tokenizer already has them."""
    if tok.has_chat:
        raise AdambaError("this checkpoint's tokenizer already has adamba's chat tokens: nothing to add")
    new_tok = tok.with_chat_tokens()
    old_v, n_model = tok.vocab_size, model.cfg.vocab_size
    new_ids = list(range(old_v, new_tok.vocab_size))
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, old_v, (2, check_len), generator=g)
    before = model(probe)[0].float()
    grown = max(n_model, new_tok.vocab_size)
    out = copy.deepcopy(model)  # elastic heads and all; only the vocabulary rows change
    out.cfg = dataclasses.replace(model.cfg, vocab_size=grown)
    emb = model.embed.weight
    mean_in = emb[:old_v].mean(0)
    new_emb = torch.cat([emb, mean_in.expand(grown - n_model, -1)]) if grown > n_model else emb.clone()
    new_emb[new_ids] = mean_in  # padded rows in range are taken over: no old input reaches them
    out.embed = nn.Embedding(grown, emb.shape[1], _weight=new_emb)
    if out.cfg.tie_embeddings:
        out.head = nn.Linear(emb.shape[1], grown, bias=False)
        out.head.weight = out.embed.weight
    elif grown > n_model:
        head = model.head.weight
        out.head = nn.Linear(emb.shape[1], grown, bias=False)
        out.head.weight = nn.Parameter(torch.cat([head, head[:old_v].mean(0).expand(grown - n_model, -1)]))
    out.eval()
    after = out(probe)[0].float()
    if not torch.equal(after[..., :old_v], before[..., :old_v]):
        raise RuntimeError("chat-tokens surgery changed the old tokens' logits (a bug); nothing written")
    dlogp = (after.log_softmax(-1)[..., :old_v] - before.log_softmax(-1)[..., :old_v]).abs().max()
    record = {
        "surgery": "chat-tokens",
        "added": {t: new_tok.special_id(t) for t in new_tok.specials if t not in tok.specials},
        "vocab_size": [n_model, grown],
        "rows": "reused padding" if grown == n_model else f"grew by {grown - n_model}",
        "old_logits_identical": True,
        "max_abs_logprob_change": float(dlogp),
    }
    return out, new_tok, record


def chat_tokens_checkpoint(ckpt_path: str, out: str, overwrite: bool = False) -> Path:
    """Read a checkpoint, add the chat tokens, write checkpoint step 0 of run directory `out`
    (with the extended tokenizer and surgery.json), ready for `adamba data chat --tokenizer
    OUT/checkpoints/step_000000` and `adamba train --set train.init_from=OUT`."""
    from adamba.checkpoint import fresh_out_dir, load_model, save_checkpoint

    model, tok, ckpt = load_model(ckpt_path)
    grown, new_tok, record = add_chat_tokens(model, tok)
    dst = fresh_out_dir(out, overwrite)
    cfg = dataclasses.replace(ckpt.cfg, model=grown.cfg)
    record["from"] = str(ckpt.path)
    with tempfile.TemporaryDirectory() as tmp:  # save_checkpoint copies it (and its sidecar) in
        tok_file = new_tok.save(Path(tmp) / "tokenizer.json")
        path = save_checkpoint(dst, 0, grown, cfg, tok_file, state={"surgery": record})
    (dst / "surgery.json").write_text(json.dumps(record, indent=2))
    return path
