"""fp8 storage of a transformer's block weights (UNETLoader's `weight_dtype`), shared by FLUX.1 and FLUX.2.

"default" keeps the file's storage: fp8, scaled-fp8 and GGUF layers stay quantized and are dequantized per
layer when they run (engine/models/quant/layers.py), plain layers take the compute dtype. "fp8_e4m3fn",
"fp8_e4m3fn_fast", "fp8_e5m2" also store the other Linear weights of the transformer blocks (nearly all the
bytes) in that fp8 type. "_fast" multiplies in fp8 with torch._scaled_mm on GPUs that have fp8 matmul
(compute capability 8.9+, engine/models/quant/fp8_matmul.py) and upcasts elsewhere. Embedders, norms and
the output layer keep the file's storage, so `module_dtype(transformer)` reports the compute dtype.
"""

from __future__ import annotations

from typing import Any

from engine.memory.mapped import release_pages
from engine.models.quant.layers import Fp8Linear, QuantLinear, convert_linear

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
BLOCK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.")

__all__ = ["WEIGHT_DTYPES", "Fp8Linear", "check_weight_dtype", "fp8_dtype", "store_blocks_in_fp8"]


def check_weight_dtype(weight_dtype: str) -> None:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {list(WEIGHT_DTYPES)}")


def fp8_types() -> tuple[Any, ...]:
    import torch

    return (torch.float8_e4m3fn, torch.float8_e5m2)


def fp8_dtype(weight_dtype: str) -> Any:
    """The fp8 type `weight_dtype` asks the block weights to be stored in (None: keep the file's storage)."""
    import torch

    if weight_dtype.startswith("fp8_e4m3fn"):
        return torch.float8_e4m3fn
    if weight_dtype == "fp8_e5m2":
        return torch.float8_e5m2
    return None


def store_blocks_in_fp8(model: Any, fp8: Any, fast: bool = False) -> None:
    """Block Linear weights -> fp8 (upcast on use, or fp8 matmul when `fast`). Layers the file already
    stores quantized keep their bytes, except plain fp8 of the other fp8 type, which is converted."""
    import torch
    from torch import nn

    for name, module in model.named_modules():
        if not (name.startswith(BLOCK_PREFIXES) and isinstance(module, nn.Linear)):
            continue
        if isinstance(module, QuantLinear) and not (isinstance(module, Fp8Linear)
                                                    and getattr(module, "scale_weight", None) is None):
            module.fp8_matmul = fast and isinstance(module, Fp8Linear)
            continue
        source = module.weight.data
        if source.dtype != fp8:
            module.weight = nn.Parameter(source.to(torch.float32).to(fp8) if source.dtype in fp8_types()
                                         else source.to(fp8), requires_grad=False)
            release_pages([source])  # a mapped source's pages go back at once (one tensor at a time)
        convert_linear(module, Fp8Linear)
        module.fp8_matmul = fast
