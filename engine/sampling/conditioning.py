"""CONDITIONING values for FLUX, in ComfyUI's shape: a list of [tensor, options] pairs.

The tensor is the T5 sequence embedding [B, seq, dim]; the options dict holds at least `pooled_output`
(CLIP-L pooled embedding [B, dim]) and may hold `guidance` (FluxGuidance, distilled guidance of FLUX.1 dev),
`strength`, `start_percent`/`end_percent` (ConditioningSetTimestepRange). Nodes never change a conditioning
in place: they return new lists with copied option dicts, so cached upstream values stay intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_GUIDANCE = 3.5  # what FLUX.1 dev gets when no FluxGuidance node set it (ComfyUI's default too)


@dataclass(frozen=True)
class FluxCond:
    """One conditioning entry, checked and ready for the transformer."""

    embeds: torch.Tensor  # [b, seq, dim]
    pooled: torch.Tensor  # [b, pooled_dim]
    guidance: float
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    extra: dict[str, Any] | None = None  # the entry's other options (for model extensions)


def make_conditioning(embeds: torch.Tensor, pooled: torch.Tensor, **options: Any) -> list[list[Any]]:
    return [[embeds, {"pooled_output": pooled, **options}]]


def map_options(conditioning: list, **changes: Any) -> list[list[Any]]:
    """A copy of `conditioning` with `changes` set on every entry's options."""
    return [[tensor, {**options, **changes}] for tensor, options in _entries(conditioning, "conditioning")]


def zero_out(conditioning: list) -> list[list[Any]]:
    """ConditioningZeroOut: zero tensors, including the pooled output."""
    out = []
    for tensor, options in _entries(conditioning, "conditioning"):
        options = dict(options)
        if isinstance(options.get("pooled_output"), torch.Tensor):
            options["pooled_output"] = torch.zeros_like(options["pooled_output"])
        out.append([torch.zeros_like(tensor), options])
    return out


def _entries(conditioning: Any, what: str) -> list[tuple[torch.Tensor, dict]]:
    if not isinstance(conditioning, (list, tuple)):
        raise TypeError(f"{what} must be a CONDITIONING list of [tensor, options] pairs, got "
                        f"{type(conditioning).__name__}")
    entries = []
    for index, entry in enumerate(conditioning):
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], torch.Tensor)
                or not isinstance(entry[1], dict)):
            raise TypeError(f"{what} entry {index} is not a [tensor, options] pair")
        entries.append((entry[0], entry[1]))
    return entries


def parse_flux_conditioning(conditioning: Any, what: str, joint_dim: int, pooled_dim: int) -> list[FluxCond]:
    """Check every entry against the transformer's widths and return them as `FluxCond`s."""
    parsed = []
    entries = _entries(conditioning, what)
    if not entries:
        raise ValueError(f"{what} conditioning is empty")
    for index, (tensor, options) in enumerate(entries):
        pooled = options.get("pooled_output")
        if not isinstance(pooled, torch.Tensor):
            raise ValueError(f"{what} entry {index} has no pooled_output: FLUX needs CLIP-L's pooled embedding "
                             "(encode the prompt with a FLUX CLIP, e.g. DualCLIPLoader type 'flux')")
        if tensor.ndim != 3 or tensor.shape[-1] != joint_dim:
            raise ValueError(f"{what} entry {index}: text embedding of shape {tuple(tensor.shape)} does not fit "
                             f"this FLUX model (expects [batch, tokens, {joint_dim}]); wrong text encoder?")
        if pooled.ndim != 2 or pooled.shape[-1] != pooled_dim:
            raise ValueError(f"{what} entry {index}: pooled embedding of shape {tuple(pooled.shape)} does not "
                             f"fit this FLUX model (expects [batch, {pooled_dim}]); wrong text encoder?")
        guidance = options.get("guidance")
        extra = {k: v for k, v in options.items()
                 if k not in ("pooled_output", "guidance", "strength", "start_percent", "end_percent")}
        parsed.append(FluxCond(
            embeds=tensor, pooled=pooled,
            guidance=DEFAULT_GUIDANCE if guidance is None else float(guidance),
            strength=float(options.get("strength", 1.0)),
            start_percent=float(options.get("start_percent", 0.0)),
            end_percent=float(options.get("end_percent", 1.0)), extra=extra))
    return parsed


def fit_batch(tensor: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Broadcast a conditioning tensor with batch 1 (or `batch`) to the latent batch."""
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    if batch % tensor.shape[0] == 0:
        return tensor.repeat(batch // tensor.shape[0], *([1] * (tensor.ndim - 1)))
    raise ValueError(f"{what} has batch {tensor.shape[0]}, which does not divide the latent batch {batch}")
