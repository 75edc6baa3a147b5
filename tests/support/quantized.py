"""The reference the quantized loaders are compared with: a ComfyUI scaled-fp8 state dict dequantized up front."""

from __future__ import annotations

from typing import Any


def dequantize_scaled_fp8(state: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Undo ComfyUI's "scaled fp8" packing (`scaled_fp8` marker, per-layer `*.scale_weight`) into `dtype`.

    Files such as t5xxl_fp8_e4m3fn_scaled.safetensors store weight/scale in fp8 with one scale per layer;
    plain fp8 tensors elsewhere are simply upcast. The loaders keep such files fp8 (engine/models/quant/);
    this is the up-front reference the tests compare them with.
    """
    import torch

    out: dict[str, Any] = {}
    scales = {k[: -len(".scale_weight")]: v for k, v in state.items() if k.endswith(".scale_weight")}
    for key, value in state.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".scale_input")):
            continue
        if value.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            value = value.to(torch.float32)
            layer = key.rsplit(".", 1)[0]
            if key.endswith(".weight") and layer in scales:
                value = value * scales[layer].to(torch.float32)
        out[key] = value.to(dtype) if value.is_floating_point() else value
    return out
