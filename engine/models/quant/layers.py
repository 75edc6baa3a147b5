"""Linear layers whose weight stays as stored (fp8, scaled fp8, GGUF blocks) and is dequantized per call.

A loaded module keeps nn.Linear's class (by subclassing it: `isinstance(m, nn.Linear)` still holds) and its
`weight` parameter, which simply holds the stored bytes: an fp8 tensor (with an optional per-layer
`scale_weight` buffer, ComfyUI's scaled fp8) or a uint8 tensor of GGUF blocks. The memory manager counts,
offloads and streams those bytes like any other weight, so a quantized model takes its file's size in
memory and its transfers are a half (fp8) or about a quarter (Q4) of bf16's.

`forward` dequantizes the weight to the input's dtype just for that call (one layer's worth of temporary
memory), then adds the LoRA deltas that `engine.models.lora.patch.apply_patches` set in `lora_deltas`
(low-rank, on the activations: the delta is applied after dequantization, never baked into requantized
weights, and removing it leaves the stored weight untouched).
"""

from __future__ import annotations

from typing import Any

from engine.models.quant.fp8_matmul import scaled_mm_linear
from engine.models.quant.gguf_dequant import dequantize
from engine.models.quant.tensors import GGUFWeight, ScaledFp8Weight, StoredWeight, pack_scaled_fp8


class QuantLinear:
    """Mixin placed before nn.Linear: weight dequantized per call, LoRA deltas added after."""

    lora_deltas: tuple = ()  # ((factor, up [out, r], down [r, in]), ...) set by apply_patches

    def dequantized_weight(self, dtype: Any) -> Any:
        raise NotImplementedError

    def forward(self, x: Any) -> Any:  # noqa: D401 - nn.Linear signature
        import torch.nn.functional as F

        out = self.fast_forward(x) if not self.lora_deltas else None
        if out is None:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            out = F.linear(x, self.dequantized_weight(x.dtype), bias)
        for factor, up, down in self.lora_deltas:
            low = F.linear(x, down.to(x.device, x.dtype))
            out = out + factor * F.linear(low, up.to(x.device, x.dtype))
        return out

    def fast_forward(self, x: Any) -> Any:
        return None


class Fp8Linear(QuantLinear):
    """fp8 weight (e4m3fn or e5m2), optionally times a per-layer `scale_weight`, computed as
    (fp8 -> float32) * scale -> compute dtype: the same numbers as dequantizing the file up front."""

    fp8_matmul = False  # weight_dtype "fp8_e4m3fn_fast": torch._scaled_mm where the GPU has fp8 matmul

    def dequantized_weight(self, dtype: Any) -> Any:
        scale = getattr(self, "scale_weight", None)
        if scale is None:
            return self.weight.to(dtype)
        return self.weight.float().mul_(scale.float()).to(dtype)

    def fast_forward(self, x: Any) -> Any:
        if not (self.fp8_matmul and x.is_cuda and fp8_matmul_available(x.device)):
            return None
        return scaled_mm_linear(self, x)


class GGUFLinear(QuantLinear):
    """uint8 GGUF blocks [out, row bytes] of ggml type `gguf_qtype`, dequantized per call (float32 math)."""

    gguf_qtype: int = 0

    def dequantized_weight(self, dtype: Any) -> Any:
        return dequantize(self.weight, self.gguf_qtype, (self.out_features, self.in_features), dtype)


def fp8_matmul_available(device: Any) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


_CLASSES: dict[tuple[type, type], type] = {}


def convert_linear(module: Any, mixin: type) -> None:
    """Give `module` (an nn.Linear or subclass) the quantized forward of `mixin`, in place."""
    cls = type(module)
    if isinstance(module, QuantLinear):
        cls = cls.__bases__[-1]  # already converted (mixin, original): rebuild from the original class
    key = (mixin, cls)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{mixin.__name__.removesuffix('Linear')}{cls.__name__}", (mixin, cls), {})
    module.__class__ = _CLASSES[key]


def _submodule(module: Any, name: str) -> Any:
    try:
        return module.get_submodule(name) if name else module
    except AttributeError:
        return None


def prepare_quantized(module: Any, state: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Before loading `state` into `module` (built on meta): every Linear whose weight is stored quantized
    becomes a quantized layer holding the stored tensor. Returns the state to load (stored tensors, scales
    as `<layer>.scale_weight` buffers) and the keys that must not be cast to the compute dtype. Quantized
    tensors of other layers (embedding tables, convolutions) are dequantized up front: a small share."""
    import torch
    from torch import nn

    state = pack_scaled_fp8(state)
    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    out: dict[str, Any] = {}
    keep: set[str] = set()
    for key, value in state.items():
        layer, _, param = key.rpartition(".")
        if not isinstance(value, StoredWeight) and value.dtype not in fp8:
            out[key] = value
            continue
        target = _submodule(module, layer)
        if not (param == "weight" and isinstance(target, nn.Linear) and len(value.shape) == 2):
            out[key] = value.dequantize(torch.float32) if isinstance(value, StoredWeight) else value.float()
            continue
        stored = value.raw if isinstance(value, StoredWeight) else value
        convert_linear(target, GGUFLinear if isinstance(value, GGUFWeight) else Fp8Linear)
        if isinstance(value, GGUFWeight):
            target.gguf_qtype = value.qtype
        target.weight = nn.Parameter(torch.empty(stored.shape, dtype=stored.dtype, device="meta"), requires_grad=False)
        out[key] = stored
        keep.add(key)
        if isinstance(value, ScaledFp8Weight):
            scale = value.scale.to(torch.float32)
            target.register_buffer("scale_weight", torch.empty(scale.shape, dtype=scale.dtype, device="meta"))
            out[f"{layer}.scale_weight"] = scale
            keep.add(f"{layer}.scale_weight")
    return out, keep


def quantized_layers(module: Any) -> dict[str, Any]:
    """name -> quantized Linear of `module`."""
    return {name: sub for name, sub in module.named_modules() if isinstance(sub, QuantLinear)}
