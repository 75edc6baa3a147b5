"""Seeded noise, drawn on the CPU per batch item.

The rule: batch item i of a latent sampled with seed S gets its noise from `torch.Generator("cpu")` seeded
with (S + batch_index[i]) mod 2**64, where batch_index defaults to 0, 1, 2, ...; the noise is drawn in
float32 with the shape [1, C, H, W] and only then moved to the device and dtype. So:

- the same seed gives the same image on any device (CUDA's generator is never used);
- an image depends on its own seed only, not on the batch it was generated in: item 1 of a batch with
  seed S equals a single image with seed S + 1;
- it matches diffusers' FluxPipeline called with
  `generator=[torch.Generator("cpu").manual_seed(S + i) for i in range(batch)]` (the parity tests do this)
  and, for batch size 1, ComfyUI's CPU noise for the same seed.

Ancestral and SDE samplers need fresh noise at each step: it comes from a second per-item generator seeded
from the same item seed (offset by a constant), so their initial noise is identical to the ODE samplers'.
"""

from __future__ import annotations

from typing import Sequence

import torch

SEED_MODULUS = 2 ** 64
_STEP_NOISE_OFFSET = 0x9E3779B97F4A7C15  # golden-ratio constant: keeps step noise apart from initial noise


def item_seeds(seed: int, batch_size: int, batch_index: Sequence[int] | None = None) -> list[int]:
    """Seed of each batch item (see module docstring)."""
    if batch_index is not None:
        if len(batch_index) != batch_size:
            raise ValueError(f"batch_index has {len(batch_index)} entries for a batch of {batch_size}")
        offsets = [int(i) for i in batch_index]
    else:
        offsets = list(range(batch_size))
    return [(int(seed) + offset) % SEED_MODULUS for offset in offsets]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed % SEED_MODULUS)


def initial_noise(shape: Sequence[int], seeds: Sequence[int], device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Noise [B, *shape[1:]], item i drawn from its own CPU generator seeded with seeds[i]."""
    if len(seeds) != shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {shape[0]}")
    item_shape = (1, *shape[1:])
    items = [torch.randn(item_shape, generator=_generator(s), dtype=torch.float32) for s in seeds]
    return torch.cat(items, dim=0).to(device=device, dtype=dtype)


def diffusers_fill_noise(shape: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, eps) in FluxFillPipeline's generator order, item i from its own CPU generator seeded seeds[i].

    FluxFillPipeline first samples the input image's latent distribution (one draw of the latent's shape,
    unused at strength 1), then draws the starting noise, then samples the masked image's latent
    distribution (`eps`: masked latent = mean + std * eps). Both come back [B, *shape[1:]], float32 on the CPU.
    """
    if len(seeds) != shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {shape[0]}")
    item_shape = (1, *shape[1:])
    noises, samples = [], []
    for seed in seeds:
        generator = _generator(seed)
        torch.randn(item_shape, generator=generator, dtype=torch.float32)  # the image latent's sample
        noises.append(torch.randn(item_shape, generator=generator, dtype=torch.float32))
        samples.append(torch.randn(item_shape, generator=generator, dtype=torch.float32))
    return torch.cat(noises, dim=0), torch.cat(samples, dim=0)


class StepNoise:
    """Fresh per-item noise for ancestral/SDE steps; deterministic per seed and independent of batch position."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self._generators = [_generator(s + _STEP_NOISE_OFFSET) for s in seeds]

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        item_shape = (1, *like.shape[1:])
        items = [torch.randn(item_shape, generator=g, dtype=torch.float32) for g in self._generators]
        return torch.cat(items, dim=0).to(device=like.device, dtype=like.dtype)
