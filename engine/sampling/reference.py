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

from engine.sampling.conditioning import _entries, fit_batch
from engine.sampling.latents import FLUX1_LATENT, image_ids, pack_latents, pad_to_patch

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


def reference_positions(main_size: tuple[int, int], ref_sizes: list[tuple[int, int]], method: str,
                        ) -> list[tuple[int, int, int]]:
    """(index, row offset, column offset) in tokens of each reference, for a sampled latent of `main_size`
    and references of `ref_sizes` (latent pixels, height x width), as ComfyUI places them:
    - offset (FLUX.1 Kontext): all at index 1; the first at (0, 0), each next one beside the others (to the
      right when that keeps the canvas squarer, else below);
    - index: at (0, 0) with index 1, 2, 3...;
    - uxo (UNO / USO): index 0, placed diagonally after the sampled image and each other.
    Offsets in latent pixels round up to whole tokens."""
    method = normalize_method(method)
    if method == "index_timestep_zero":
        raise ValueError("reference_latents_method 'index_timestep_zero' needs a FLUX.2 model (it gives the "
                         "reference tokens their own timestep); FLUX.1 supports offset, index and uxo/uno")
    main_rows, main_cols = _tokens(main_size[0]), _tokens(main_size[1])
    placed: list[tuple[int, int, int]] = []
    acc_h = acc_w = 0  # latent pixels covered so far
    for position, (height, width) in enumerate(ref_sizes):
        if method == "index":
            index, off_h, off_w = position + 1, 0, 0
        elif method == "uxo":
            index, off_h, off_w = 0, main_rows * 2 + acc_h, main_cols * 2 + acc_w
            acc_h, acc_w = acc_h + height, acc_w + width
        else:
            index, off_h, off_w = 1, 0, 0
            if height + acc_h > width + acc_w:
                off_w = acc_w
            else:
                off_h = acc_h
            acc_h, acc_w = max(acc_h, height + off_h), max(acc_w, width + off_w)
        placed.append((index, _tokens(off_h), _tokens(off_w)))
    return placed


def _tokens(latent_pixels: int) -> int:
    return (latent_pixels + 1) // 2


def reference_ids(height: int, width: int, index: int, row: int, col: int) -> torch.Tensor:
    """Position ids [(h/2)*(w/2), 3] of a reference latent of height x width at (index, row, col)."""
    ids = image_ids(height, width, index=float(index))
    ids[:, 1] += row
    ids[:, 2] += col
    return ids


def reference_tokens(latents: list[torch.Tensor], main_size: tuple[int, int], method: str, batch: int,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed model-space tokens [batch, n, 64] and position ids [n, 3] of all references, in order."""
    padded = []
    for number, latent in enumerate(latents):
        if latent.ndim != 4 or latent.shape[1] != FLUX1_LATENT.channels:
            raise ValueError(f"reference latent {number + 1} has shape {tuple(latent.shape)}; FLUX.1 needs "
                             f"[batch, {FLUX1_LATENT.channels}, h, w] (encode it with the FLUX VAE)")
        latent = fit_batch(latent.detach().float().cpu(), batch, f"reference latent {number + 1}")
        padded.append(pad_to_patch(FLUX1_LATENT.process_in(latent))[0])
    sizes = [tuple(latent.shape[-2:]) for latent in padded]
    positions = reference_positions(main_size, sizes, method)
    tokens = torch.cat([pack_latents(latent) for latent in padded], dim=1)
    ids = torch.cat([reference_ids(h, w, *pos) for (h, w), pos in zip(sizes, positions)], dim=0)
    return tokens, ids


class ReferenceInputs:
    """Transformer input hook: each conditioning entry's references become extra image tokens after the
    sampled ones, with their position ids (the denoiser keeps only the sampled tokens' output)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, cond: Any, kwargs: dict, tokens: torch.Tensor) -> None:
        options = cond.extra or {}
        refs = reference_latents(options)
        if not refs:
            return
        hidden, img_ids = kwargs["hidden_states"], kwargs["img_ids"]
        if hidden.shape[-1] != 64:
            raise ValueError(f"reference latents need a FLUX model whose image tokens are latents (64 channels); "
                             f"this one takes {hidden.shape[-1]} (FLUX Fill?)")
        key = (id(cond), tuple(img_ids.shape), hidden.shape[0], hidden.device, hidden.dtype)
        if key not in self._cache:  # (reading the ids syncs a GPU: only once per entry and size)
            main_ids = img_ids[: tokens.shape[1]]
            main_size = (int(main_ids[:, 1].max()) * 2 + 2, int(main_ids[:, 2].max()) * 2 + 2)
            ref_tokens, ref_ids = reference_tokens(refs, main_size, reference_method(options), hidden.shape[0])
            self._cache[key] = (ref_tokens.to(hidden.device, hidden.dtype), ref_ids.to(img_ids.device, img_ids.dtype))
        ref_tokens, ref_ids = self._cache[key]
        kwargs["hidden_states"] = torch.cat([hidden, ref_tokens], dim=1)
        kwargs["img_ids"] = torch.cat([img_ids, ref_ids], dim=0)
