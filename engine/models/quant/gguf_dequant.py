"""GGUF block formats dequantized with torch, on whatever device the raw bytes are (per layer, per forward).

Layouts follow ggml (`ggml-quants.c`): a row of `n` weights is `n / block` blocks of `type_size` bytes. All
arithmetic is float32 (diffusers and the ComfyUI GGUF nodes multiply in float16, which is off by up to one
float16 rounding per weight; docs/models.md), and the result is cast to the compute dtype once. Checked
against gguf-py's own numpy dequantizer (`gguf.quants.dequantize`) in tests/models/test_quantized_models.py.
"""

from __future__ import annotations

from typing import Any, Callable

# ggml type id -> (name, weights per block, bytes per block)
QTYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 8: ("Q8_0", 32, 34), 2: ("Q4_0", 32, 18),
          3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 12: ("Q4_K", 256, 144),
          13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210)}
FLOAT_QTYPES = (0, 1, 30)


def qtype_name(qtype: int) -> str:
    return QTYPES[qtype][0] if qtype in QTYPES else f"ggml type {qtype}"


def row_bytes(qtype: int, row: int) -> int:
    _, block, size = QTYPES[qtype]
    return row // block * size


def _f16(raw: Any) -> Any:
    import torch

    return raw.contiguous().view(torch.float16).float()


def _u32(raw: Any) -> Any:
    import torch

    raw = raw.to(torch.int64)
    return raw[:, 0] | raw[:, 1] << 8 | raw[:, 2] << 16 | raw[:, 3] << 24


def _nibbles(qs: Any) -> Any:
    """[n, k] packed bytes -> [n, 2k]: the low nibbles of all bytes, then the high ones (ggml's order)."""
    import torch

    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _q8_0(b: Any) -> Any:
    import torch

    return b[:, 2:].contiguous().view(torch.int8).float().mul_(_f16(b[:, :2]))


def _q4_0(b: Any) -> Any:
    return _nibbles(b[:, 2:]).float().sub_(8).mul_(_f16(b[:, :2]))


def _q4_1(b: Any) -> Any:
    return _nibbles(b[:, 4:]).float().mul_(_f16(b[:, :2])).add_(_f16(b[:, 2:4]))


def _high_bits(qh: Any) -> Any:
    """Q5's 32 fifth bits (one uint32 per block) as [n, 32] values 0 or 16, element order."""
    import torch

    shifts = torch.arange(32, device=qh.device)
    return ((_u32(qh)[:, None] >> shifts) & 1) << 4


def _q5_0(b: Any) -> Any:
    q = _nibbles(b[:, 6:]).to(b.device).long() | _high_bits(b[:, 2:6])
    return _f16(b[:, :2]) * (q.float() - 16)


def _q5_1(b: Any) -> Any:
    q = _nibbles(b[:, 8:]).long() | _high_bits(b[:, 4:8])
    return _f16(b[:, :2]) * q.float() + _f16(b[:, 2:4])


def _k_scales(scales: Any) -> tuple[Any, Any]:
    """Q4_K / Q5_K: the 12 packed bytes -> 8 six-bit scales and 8 six-bit mins per block."""
    import torch

    s = scales.long()
    low_sc, low_m, tail = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([low_sc & 63, (tail & 0x0F) | ((low_sc >> 6) << 4)], dim=1)
    mn = torch.cat([low_m & 63, (tail >> 4) | ((low_m >> 6) << 4)], dim=1)
    return sc.float(), mn.float()


def _q4_k(b: Any) -> Any:
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    qs = b[:, 16:144].reshape(n, 4, 32)
    q = _nibbles(qs).reshape(n, 8, 32).float()  # chunk c: low nibbles = sub-block 2c, high = 2c + 1
    return q.mul_((d * sc)[:, :, None]).sub_((dmin * mn)[:, :, None])


def _q5_k(b: Any) -> Any:
    import torch

    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    qh = b[:, 16:48].long()  # bit j of qh[l] is the fifth bit of element l of sub-block j
    qs = b[:, 48:176].reshape(n, 4, 32)
    low = _nibbles(qs).reshape(n, 8, 32).long()
    high = ((qh[:, None, :] >> torch.arange(8, device=b.device)[None, :, None]) & 1) << 4
    return (d * sc)[:, :, None] * (low | high).float() - (dmin * mn)[:, :, None]


def _q6_k(b: Any) -> Any:
    import torch

    n = b.shape[0]
    ql = b[:, 0:128].long().reshape(n, 2, 64)
    qh = b[:, 128:192].long().reshape(n, 2, 32)
    scales = b[:, 192:208].contiguous().view(torch.int8).float().reshape(n, 16)
    d = _f16(b[:, 208:210])
    low = torch.cat([ql[:, :, :32] & 0x0F, ql[:, :, 32:] & 0x0F, ql[:, :, :32] >> 4, ql[:, :, 32:] >> 4], dim=2)
    shifts = torch.tensor([0, 2, 4, 6], device=b.device).repeat_interleave(32)
    high = ((qh.repeat(1, 1, 4) >> shifts) & 3) << 4
    q = (low | high).float() - 32  # [n, 2 halves, 128]
    return d[:, :, None] * scales.reshape(n, 2, 8).repeat_interleave(16, dim=2) * q


_BLOCK_FNS: dict[int, Callable[[Any], Any]] = {8: _q8_0, 2: _q4_0, 3: _q4_1, 6: _q5_0, 7: _q5_1, 12: _q4_k,
                                               13: _q5_k, 14: _q6_k}


def dequantize(raw: Any, qtype: int, shape: tuple[int, ...], dtype: Any) -> Any:
    """The weights of `shape` stored as `raw` uint8 bytes of ggml type `qtype`, as a `dtype` tensor."""
    import torch

    if qtype == 0:
        return raw.contiguous().view(torch.float32).reshape(shape).to(dtype)
    if qtype == 1:
        return raw.contiguous().view(torch.float16).reshape(shape).to(dtype)
    if qtype == 30:
        return raw.contiguous().view(torch.bfloat16).reshape(shape).to(dtype)
    if qtype not in _BLOCK_FNS:
        raise ValueError(f"GGUF {qtype_name(qtype)} tensors are not supported (supported: "
                         f"{', '.join(name for name, _, _ in QTYPES.values())})")
    # One pass over the whole weight: decoding it in row chunks to bound the float32 temporary (one layer's
    # weights, freed at once) measured twice as slow on the CPU.
    blocks = raw.reshape(-1, QTYPES[qtype][2])
    return _BLOCK_FNS[qtype](blocks).reshape(shape).to(dtype)
