"""Quantized weights on their way from a file into a module: stored bytes plus what decoding them needs.

State dicts carry them where a tensor would be. The key converters (BFL -> diffusers) split fused tensors by
rows (`chunk`, `split` on dim 0) and reorder halves (`torch.cat`): rows are whole blocks (GGUF) or share the
layer's one scale (scaled fp8), so those work on the stored bytes without dequantizing. `shape` is the
logical shape, so config inference from shapes works.
"""

from __future__ import annotations

import json
from typing import Any

from engine.models.quant.gguf_dequant import dequantize, qtype_name

# per-layer scale and marker tensors: ComfyUI's scaled fp8 (`scale_weight`, `scale_input`, a `scaled_fp8` key)
# and its newer mixed-precision layout (`weight_scale`, `input_scale`, `comfy_quant`: the layer's JSON format)
WEIGHT_SCALES = (".scale_weight", ".weight_scale")
SCALE_KEYS = (*WEIGHT_SCALES, ".scale_input", ".input_scale", ".comfy_quant")
FP8_FORMATS = ("float8_e4m3fn", "float8_e5m2")


class StoredWeight:
    """Row operations shared by the quantized weight kinds; `raw` is the stored tensor (rows first)."""

    raw: Any

    @property
    def shape(self) -> Any:
        import torch

        return torch.Size(self.logical_shape)

    @property
    def dtype(self) -> Any:
        return self.raw.dtype

    @property
    def ndim(self) -> int:
        return len(self.logical_shape)

    @property
    def logical_shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape)

    @property
    def nbytes(self) -> int:
        return self.raw.numel() * self.raw.element_size()

    def is_floating_point(self) -> bool:
        return False  # never cast to the compute dtype, never counted when guessing it

    def numel(self) -> int:
        count = 1
        for dim in self.logical_shape:
            count *= dim
        return count

    def _rows(self, raw: Any) -> "StoredWeight":
        raise NotImplementedError

    def chunk(self, chunks: int, dim: int = 0) -> tuple["StoredWeight", ...]:
        self._rows_only(dim)
        return tuple(self._rows(part) for part in self.raw.chunk(chunks, dim=0))

    def split(self, sizes: Any, dim: int = 0) -> tuple["StoredWeight", ...]:
        self._rows_only(dim)
        return tuple(self._rows(part) for part in self.raw.split(sizes, dim=0))

    def _rows_only(self, dim: int) -> None:
        if dim != 0:
            raise ValueError("a quantized weight can only be split along its rows (dim 0)")

    def _same_kind(self, other: Any) -> bool:
        return type(other) is type(self)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        import torch

        kwargs = kwargs or {}
        if func is torch.cat:
            parts = list(args[0])
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if dim == 0 and all(isinstance(p, StoredWeight) and parts[0]._same_kind(p) for p in parts):
                return parts[0]._rows(torch.cat([p.raw for p in parts], dim=0))
        raise TypeError(f"{getattr(func, '__name__', func)} is not supported on a quantized weight")


class GGUFWeight(StoredWeight):
    """`raw`: uint8 tensor [*shape[:-1], row bytes]; `qtype`: ggml type id; `shape`: the weights' shape."""

    def __init__(self, raw: Any, qtype: int, shape: tuple[int, ...]):
        self.raw = raw
        self.qtype = int(qtype)
        self._shape = tuple(int(d) for d in shape)

    @property
    def logical_shape(self) -> tuple[int, ...]:
        return self._shape

    def dequantize(self, dtype: Any) -> Any:
        return dequantize(self.raw, self.qtype, self._shape, dtype)

    def _rows(self, raw: Any) -> "GGUFWeight":
        return GGUFWeight(raw, self.qtype, (raw.shape[0], *self._shape[1:]))

    def _same_kind(self, other: Any) -> bool:
        return isinstance(other, GGUFWeight) and other.qtype == self.qtype

    def __repr__(self) -> str:
        return f"GGUFWeight({qtype_name(self.qtype)}, {list(self._shape)})"


class ScaledFp8Weight(StoredWeight):
    """ComfyUI's scaled fp8: an fp8 weight and its layer's `scale_weight` (weight = fp8 * scale)."""

    def __init__(self, raw: Any, scale: Any):
        self.raw = raw
        self.scale = scale

    def dequantize(self, dtype: Any) -> Any:
        import torch

        return (self.raw.to(torch.float32) * self.scale.to(torch.float32)).to(dtype)

    def _rows(self, raw: Any) -> "ScaledFp8Weight":
        return ScaledFp8Weight(raw, self.scale)

    def _same_kind(self, other: Any) -> bool:
        return isinstance(other, ScaledFp8Weight) and bool((other.scale == self.scale).all())


def pack_scaled_fp8(state: dict[str, Any]) -> dict[str, Any]:
    """A ComfyUI scaled-fp8 state dict (`scaled_fp8` marker, `*.scale_weight`, `*.scale_input`; or the mixed
    precision layout's `*.weight_scale`, `*.input_scale`, `*.comfy_quant`) with each scaled weight as one
    ScaledFp8Weight and the markers dropped; other tensors (the bf16 layers of `fp8mixed` files, unscaled
    fp8) unchanged. A state without scales is returned as it is. A layer in a format other than fp8 (int8,
    nvfp4 mixed-precision files) is refused with its name."""
    scales = {k[: -len(suffix)]: v for k, v in state.items() for suffix in WEIGHT_SCALES if k.endswith(suffix)}
    if not scales and "scaled_fp8" not in state and not any(k.endswith(".comfy_quant") for k in state):
        return state
    for key, value in state.items():
        if key.endswith(".comfy_quant"):
            _check_format(key[: -len(".comfy_quant")], value)
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == "scaled_fp8" or key.endswith(SCALE_KEYS):
            continue
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        out[key] = ScaledFp8Weight(value, scales[layer]) if layer in scales else value
    return out


def _check_format(layer: str, marker: Any) -> None:
    try:
        fmt = json.loads(bytes(marker.reshape(-1).tolist()).decode("utf-8")).get("format")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return  # unreadable marker: the tensors decide (fp8 with a scale loads, anything else fails by shape)
    if fmt not in FP8_FORMATS:
        raise ValueError(f"layer {layer!r} is stored in the quantized format {fmt!r}; only fp8 "
                         f"({', '.join(FP8_FORMATS)}), scaled fp8 and GGUF files are supported")


def is_quantized_state(state: dict[str, Any]) -> bool:
    """Whether `state` holds GGUF, scaled-fp8 or fp8 weights (kept as stored by the quantized layers)."""
    import torch

    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    return any(isinstance(v, StoredWeight) or getattr(v, "dtype", None) in fp8 for v in state.values())
