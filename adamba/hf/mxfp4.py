"""MXFP4 (OCP microscaling FP4) dequantisation, as GPT-OSS's released checkpoints store their
expert weights: `<name>_blocks` uint8 [..., G, 16], two FP4 E2M1 values per byte (low nibble first),
32 values per block, and `<name>_scales` uint8 [..., G], each block's shared power of two as a
biased exponent (2^(scale - 127), E8M0).

E2M1: a sign bit, two exponent bits, one mantissa bit, so the 16 codes are +-{0, 0.5, 1, 1.5, 2,
3, 4, 6}. Every product value x 2^e is exact in float32 (the multiply happens there, as
torch.ldexp does), then rounds once to the target dtype; tests/hf/test_gpt_oss.py checks equality
with transformers' own dequantisation bit for bit.
"""

from __future__ import annotations

import torch

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantize(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16, chunk: int = 1 << 22
) -> torch.Tensor:
    """blocks uint8 [..., G, B] and scales uint8 [..., G] -> values [..., G * 2B] in `dtype`, in
    the checkpoint's own layout (for GPT-OSS experts: [experts, out features, in features]).
    Works `chunk` blocks at a time, so a float32 copy of a whole layer never exists at once."""
    if blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    *lead, B = blocks.shape
    flat_b = blocks.reshape(-1, B).to(torch.uint8)
    flat_s = scales.reshape(-1, 1).to(torch.int32) - 127
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    out = torch.empty(flat_b.shape[0], 2 * B, dtype=dtype, device=blocks.device)
    for lo in range(0, flat_b.shape[0], chunk):
        b = flat_b[lo : lo + chunk]
        vals = torch.empty(b.shape[0], 2 * B, dtype=torch.float32, device=blocks.device)
        vals[:, 0::2] = lut[(b & 0x0F).long()]  # the low nibble is the first of the pair
        vals[:, 1::2] = lut[(b >> 4).long()]
        out[lo : lo + chunk] = torch.ldexp(vals, flat_s[lo : lo + chunk]).to(dtype)
    return out.reshape(*lead[:-1], lead[-1] * 2 * B) if lead else out.reshape(2 * B)
