"""StyleModelApply for FLUX Redux: image tokens appended to the text tokens, and their attention bias.

The Redux embedder maps SigLIP's last hidden state [N, 729, 1152] to T5-width tokens [N, 729, 4096]; the
tokens of all N images are appended, in order, to every conditioning entry's text embedding (ComfyUI's
behaviour; chain several StyleModelApply nodes for several images). `strength_type`:
- multiply: the image tokens are multiplied by `strength`;
- attn_bias: the tokens are kept and log(strength) is added to the attention logits of every query except
  the Redux tokens themselves (and tokens appended after them) towards them, so 0 hides the image and
  values above 1 strengthen it. Stored as option `redux_attention_bias`: a list of (start, stop, bias)
  ranges in the text sequence, turned into an additive attention mask over the final token layout.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engine.sampling.conditioning import _entries, fit_batch

ATTENTION_BIAS = "redux_attention_bias"
STRENGTH_TYPES = ("multiply", "attn_bias")


def apply_style_tokens(conditioning: list, tokens: torch.Tensor, strength: float, strength_type: str) -> list:
    """StyleModelApply: append `tokens` [N, T, D] (all N images in one row) to every entry."""
    if strength_type not in STRENGTH_TYPES:
        raise ValueError(f"strength_type {strength_type!r} is not one of {list(STRENGTH_TYPES)}")
    if tokens.ndim != 3:
        raise ValueError(f"style model tokens must be [images, tokens, width], got {tuple(tokens.shape)}")
    row = tokens.reshape(1, -1, tokens.shape[-1]).float()
    if strength_type == "multiply":
        row = row * float(strength)
    out = []
    for embeds, options in _entries(conditioning, "conditioning"):
        if embeds.shape[-1] != row.shape[-1]:
            raise ValueError(f"the style model gives tokens {row.shape[-1]} wide but the text embedding is "
                             f"{embeds.shape[-1]} wide: the Redux model does not fit this text encoder")
        options = dict(options)
        if strength_type == "attn_bias" and float(strength) != 1.0:
            bias = math.log(strength) if strength > 0 else float("-inf")
            start = embeds.shape[1]
            options[ATTENTION_BIAS] = [*(options.get(ATTENTION_BIAS) or []), (start, start + row.shape[1], bias)]
        joined = torch.cat([embeds, fit_batch(row.to(embeds.dtype), embeds.shape[0], "style tokens")], dim=1)
        out.append([joined, options])
    return out


def attention_bias_mask(ranges: list[tuple[int, int, float]], text_len: int, total_len: int) -> torch.Tensor:
    """Additive attention mask [1, 1, total, total] over the joint sequence (text tokens first): queries
    before a range and all image queries get its bias towards the range's keys."""
    mask = torch.zeros(1, 1, total_len, total_len)
    for start, stop, bias in ranges:
        if not 0 <= start <= stop <= text_len:
            raise ValueError(f"redux attention range {start}..{stop} lies outside the {text_len} text tokens")
        mask[..., :start, start:stop] = bias
        mask[..., text_len:, start:stop] = bias
    return mask


class ReduxAttentionBias:
    """Transformer input hook: the attn_bias mask of an entry, over the tokens the transformer will see."""

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, cond: Any, kwargs: dict, tokens: torch.Tensor) -> None:
        ranges = (cond.extra or {}).get(ATTENTION_BIAS)
        if not ranges:
            return
        hidden, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        key = (id(cond), text.shape[1], hidden.shape[1], hidden.device, hidden.dtype)
        if key not in self._cache:
            mask = attention_bias_mask(list(ranges), text.shape[1], text.shape[1] + hidden.shape[1])
            self._cache[key] = mask.to(hidden.device, hidden.dtype)
        extra = dict(kwargs.get("joint_attention_kwargs") or {})
        extra["attention_mask"] = self._cache[key]
        kwargs["joint_attention_kwargs"] = extra
