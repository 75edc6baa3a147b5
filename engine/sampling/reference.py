"""Reference latents on CONDITIONING: the options keys that edit models (FLUX Kontext, FLUX.2) read.

Keys (ComfyUI's names, shared with every pack that reads them):
- `reference_latents`: a list of raw VAE latents (`LATENT["samples"]`, [B, C, h, w]); ReferenceLatent
  appends one per node, so chained nodes give several references in order. Lists are never mutated: each
  node builds a new list in a copied options dict (cached upstream values stay intact).
- `reference_latents_method`: how the references get their position ids; one of REFERENCE_METHODS
  ("uxo/uno" is stored as "uxo", as ComfyUI stores it). Absent means "offset" for FLUX.1 Kontext.
"""

from __future__ import annotations

from typing import Any

import torch

from .conditioning import _entries

REFERENCE_LATENTS = "reference_latents"
REFERENCE_METHOD = "reference_latents_method"
REFERENCE_METHODS = ("offset", "index", "uxo", "index_timestep_zero")
METHOD_CHOICES = ("offset", "index", "uxo/uno", "index_timestep_zero")  # the node's combo, as ComfyUI


def add_reference_latent(conditioning: list, samples: torch.Tensor) -> list[list[Any]]:
    """A copy of `conditioning` whose every entry lists `samples` after its earlier references."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"ReferenceLatent: latent samples must be a [batch, channels, height, width] tensor, "
                         f"got {shape}")
    out = []
    for tensor, options in _entries(conditioning, "conditioning"):
        previous = options.get(REFERENCE_LATENTS) or []
        out.append([tensor, {**options, REFERENCE_LATENTS: [*previous, samples]}])
    return out


def normalize_method(method: str) -> str:
    """The stored form of a reference method name ("uxo/uno" -> "uxo"); ValueError on unknown names."""
    if "uxo" in method or "uso" in method:
        return "uxo"
    if method not in REFERENCE_METHODS:
        raise ValueError(f"unknown reference_latents_method {method!r}; expected one of {list(METHOD_CHOICES)}")
    return method


def set_reference_method(conditioning: list, method: str) -> list[list[Any]]:
    """A copy of `conditioning` with `reference_latents_method` set on every entry."""
    method = normalize_method(method)
    return [[tensor, {**options, REFERENCE_METHOD: method}] for tensor, options in _entries(conditioning,
                                                                                            "conditioning")]


def reference_latents(options: dict) -> list[torch.Tensor]:
    """The references an entry's options carry (empty when none)."""
    refs = options.get(REFERENCE_LATENTS) or []
    if not isinstance(refs, (list, tuple)) or not all(isinstance(r, torch.Tensor) for r in refs):
        raise ValueError(f"conditioning option {REFERENCE_LATENTS!r} must be a list of latent tensors")
    return list(refs)


def reference_method(options: dict, default: str = "offset") -> str:
    method = options.get(REFERENCE_METHOD)
    return default if method is None else normalize_method(str(method))
