"""Library code that looks at a Linear's weight dtype, adjusted for quantized layers.

transformers' T5 feed-forward casts its activations to `wo.weight.dtype` before `wo` (to keep fp16 runs
stable); with `wo` stored as fp8 or GGUF bytes that would cast the activations to fp8 / uint8. A T5 FFN
whose `wo` is quantized gets the same forward without that cast (the quantized layer dequantizes to the
activations' dtype itself).
"""

from __future__ import annotations

from typing import Any

from engine.models.quant.layers import QuantLinear

_T5_FFNS = ("T5DenseGatedActDense", "T5DenseActDense", "UMT5DenseGatedActDense", "UMT5DenseActDense")


class _NoCastT5FFN:
    def forward(self, hidden_states: Any) -> Any:  # noqa: D401 - the library's signature
        if hasattr(self, "wi_0"):
            hidden = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        else:
            hidden = self.act(self.wi(hidden_states))
        return self.wo(self.dropout(hidden))


_CLASSES: dict[type, type] = {}


def fit_quantized_layers(model: Any) -> Any:
    """Give the modules of `model` that would mis-cast around a quantized layer a forward that does not."""
    for module in model.modules():
        cls = type(module)
        if cls.__name__ in _T5_FFNS and isinstance(getattr(module, "wo", None), QuantLinear):
            if cls not in _CLASSES:
                _CLASSES[cls] = type(f"NoCast{cls.__name__}", (_NoCastT5FFN, cls), {})
            module.__class__ = _CLASSES[cls]
    return model
