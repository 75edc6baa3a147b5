"""`fp8_e4m3fn_fast`: an fp8 Linear as one fp8 matrix product (torch._scaled_mm) on GPUs that have it
(compute capability 8.9 and later: Ada, Hopper, Blackwell). The activations are cast to e4m3fn with one
dynamic per-tensor scale (their absolute maximum over 448, e4m3fn's largest value); the weight is used as
stored, with its `scale_weight` when the file has one. Elsewhere the layer upcasts its weight instead
(engine/models/quant/layers.py), which gives the same result up to the activations' fp8 rounding.
"""

from __future__ import annotations

from typing import Any

E4M3_MAX = 448.0


def scaled_mm_linear(layer: Any, x: Any) -> Any:
    """`layer(x)` through torch._scaled_mm; None when the shapes do not suit it (the caller upcasts)."""
    import torch
    import torch.nn.functional as F

    weight = layer.weight
    if weight.dtype != torch.float8_e4m3fn or weight.shape[0] % 16 or weight.shape[1] % 16:
        return None
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    pad = -rows.shape[0] % 16
    if pad:
        rows = F.pad(rows, (0, 0, 0, pad))
    amax = rows.abs().amax().float().clamp(min=1e-12)
    scale_a = (amax / E4M3_MAX).reshape(())
    xq = (rows.float() / scale_a).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    scale_w = getattr(layer, "scale_weight", None)
    scale_b = (scale_w.float() if scale_w is not None else torch.ones((), device=x.device)).reshape(())
    out = torch._scaled_mm(xq, weight.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=x.dtype)
    if pad:
        out = out[: out.shape[0] - pad]
    if layer.bias is not None:
        out = out + layer.bias.to(x.dtype)
    return out.reshape(*lead, weight.shape[0])
