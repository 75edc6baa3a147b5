"""Quantize float weights into GGUF blocks with numpy (the tiny zoo's GGUF files, tests, benchmarks).

gguf-py quantizes Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / F16 / BF16 but cannot write K-quants, so Q4_K is done
here following ggml's block layout (`block_q4_K`: f16 d, f16 dmin, 12 bytes of packed 6-bit sub-block scales
and mins, 128 bytes of 4-bit values; weight = d * scale * q - dmin * min). The scale search is a plain
min/max fit per 32-weight sub-block, not llama.cpp's iterative one: the bytes are a valid Q4_K that every
reader (gguf-py, ggml, diffusers) decodes to the same weights, only the rounding error is a little larger.
"""

from __future__ import annotations

from typing import Any

Q4_K = 12
Q8_0 = 8
F16 = 1
F32 = 0


def quantize_q4_k(weights: Any) -> Any:
    """[..., n] float array (n a multiple of 256) -> [..., n / 256 * 144] uint8 Q4_K bytes."""
    import numpy as np

    x = np.asarray(weights, dtype=np.float32)
    if x.shape[-1] % 256:
        raise ValueError(f"Q4_K needs rows that are a multiple of 256 weights, got {x.shape[-1]}")
    lead = x.shape[:-1]
    sub = x.reshape(-1, 8, 32)  # [blocks, sub-blocks, weights]
    low = np.minimum(sub.min(axis=2), 0.0)
    high = sub.max(axis=2)
    scale = (high - low) / 15.0
    mins = -low
    d = (scale.max(axis=1) / 63.0).astype(np.float16)
    dmin = (mins.max(axis=1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmin32 > 0, np.rint(mins / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[:, :, None]
        offset = (dmin32 * mn)[:, :, None]
        q = np.where(step > 0, np.rint((sub + offset) / step), 0).clip(0, 15).astype(np.uint8)
    packed = np.empty((sub.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    q = q.reshape(-1, 4, 2, 32)  # chunk of 64 weights: sub-block 2c in the low nibbles, 2c + 1 in the high
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs],
                            axis=1)
    return blocks.reshape(*lead, -1)


def quantize(weights: Any, qtype: int) -> Any:
    """float array -> the uint8 block bytes of ggml type `qtype` (Q4_K here, the others through gguf-py)."""
    import numpy as np

    if qtype == Q4_K:
        return quantize_q4_k(weights)
    import gguf

    data = gguf.quants.quantize(np.asarray(weights, dtype=np.float32), gguf.GGMLQuantizationType(qtype))
    return data.view(np.uint8) if qtype not in (F32, F16) else data


def choose_qtype(name: str, shape: tuple[int, ...], wanted: int) -> int:
    """The type a tensor gets in a file quantized to `wanted`, as GGUF converters do: vectors (biases, norms)
    stay F32; a matrix whose rows do not split into blocks falls back to Q8_0 and then to F16."""
    if len(shape) < 2:
        return F32
    if wanted in (F32, F16):
        return wanted
    row = shape[-1]
    for qtype, block in ((wanted, 256 if wanted == Q4_K else 32), (Q8_0, 32)):
        if row % block == 0:
            return qtype
    return F16
