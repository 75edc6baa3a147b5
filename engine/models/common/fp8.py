"""fp8 storage of a transformer's block weights (UNETLoader's `weight_dtype`), shared by FLUX.1 and FLUX.2.

"default" keeps the file's dtype (fp8 files stay fp8); "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2" store the
Linear weights of the transformer blocks (nearly all the bytes) in that fp8 type. fp8 weights are upcast to
the compute dtype inside each Linear's forward, which works on any device including CPU; "_fast" is accepted
for compatibility and computes the same way (no fp8 matmul kernels are used). Embedders, norms and the output
layer stay in the compute dtype, so `transformer.dtype` reports the compute dtype.
"""

from __future__ import annotations

from typing import Any

from engine.memory.mapped import release_pages

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
BLOCK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.")


def check_weight_dtype(weight_dtype: str) -> None:
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {list(WEIGHT_DTYPES)}")


def fp8_types() -> tuple[Any, ...]:
    import torch

    return (torch.float8_e4m3fn, torch.float8_e5m2)


def fp8_dtype(weight_dtype: str, state: dict[str, Any]) -> Any:
    """The fp8 type to store block weights in: the one asked for, else the file's own (None: not fp8)."""
    import torch

    if weight_dtype.startswith("fp8_e4m3fn"):
        return torch.float8_e4m3fn
    if weight_dtype == "fp8_e5m2":
        return torch.float8_e5m2
    stored_fp8 = [v.dtype for v in state.values() if v.dtype in fp8_types()]
    return max(set(stored_fp8), key=stored_fp8.count) if stored_fp8 else None


class Fp8Linear:
    """Mixin forward for nn.Linear whose weight is stored in fp8: upcast to the input's dtype per call."""

    def forward(self, x: Any) -> Any:  # noqa: D401 - nn.Linear signature
        import torch.nn.functional as F

        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def store_blocks_in_fp8(model: Any, fp8: Any, compute: Any) -> None:
    """Block Linear weights -> fp8 (upcast on use); every other tensor -> compute dtype."""
    from torch import nn

    fp8_params: set[int] = set()
    fp8_linear_cls: dict[type, type] = {}
    for name, module in model.named_modules():
        if name.startswith(BLOCK_PREFIXES) and isinstance(module, nn.Linear):
            source = module.weight.data
            module.weight = nn.Parameter(module.weight.to(fp8), requires_grad=False)
            release_pages([source])  # a mapped source's pages go back at once (one tensor at a time)
            fp8_params.add(id(module.weight))
            cls = type(module)
            if cls not in fp8_linear_cls:
                fp8_linear_cls[cls] = type(f"Fp8{cls.__name__}", (Fp8Linear, cls), {})
            module.__class__ = fp8_linear_cls[cls]
    for param in model.parameters():
        if id(param) not in fp8_params and param.dtype != compute:
            source = param.data
            param.data = param.data.to(compute)
            release_pages([source])
