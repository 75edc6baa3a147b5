"""The dtype a loaded module computes in, for callers that cast their inputs to it (samplers, encoders)."""

from __future__ import annotations

from typing import Any


def module_dtype(module: Any) -> Any:
    """The dtype a module computes in: fp8-stored weights (upcast per layer) do not count."""
    import torch  # noqa: PLC0415 - torch stays out of the light import paths (model listing, validation)

    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype.itemsize >= 2:
        return dtype
    for param in module.parameters():
        if param.is_floating_point() and param.dtype.itemsize >= 2:
            return param.dtype
    return torch.float32
