"""The FLUX.2 denoiser: Flux2Transformer2DModel + conditioning (+ reference images) + CFG -> x0 estimate.

Latents are FLUX.2's model space [B, 128, H/16, W/16] (the VAE wrapper patchifies and normalises), so one
latent pixel is one token: packing is a reshape, no padding. Position ids have four axes (t, h, w, l), as
the reference pipelines build them:
- image tokens (0, row, column, 0);
- text tokens (0, 0, 0, index);
- reference latent i (ReferenceLatent's `reference_latents`, in order) gets t = 10 (i + 1) and its own
  (row, column) grid; its tokens follow the image's, and only the image's part of the output is kept.
Each conditioning entry carries its own references (ComfyUI's semantics): for CFG with references, give the
negative the same references (chain ReferenceLatent on it too), which is what the reference pipeline does.
FLUX.2 dev's embedded guidance comes from FluxGuidance (4.0 when unset, Flux2Pipeline's default); klein has
no guidance embedding and ignores it. Reference images must be at least 64 pixels a side (4 latent pixels),
as the reference pipeline requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from engine.sampling.conditioning import FluxCond, _entries, fit_batch
from engine.sampling.guidance import FluxDenoiser
from engine.sampling.reference import reference_latents
from engine.sampling.schedules import FlowSchedule

REFERENCE_TIME_SCALE = 10
MIN_REFERENCE_LATENT_SIDE = 4  # 64 pixels at 1/16
DEFAULT_DEV_GUIDANCE = 4.0


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C], row-major tokens (Flux2 pipelines' `_pack_latents`)."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h * w).permute(0, 2, 1)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.permute(0, 2, 1).reshape(b, c, height, width)


def grid_ids(height: int, width: int, t: float = 0.0, device: Any = None, dtype: torch.dtype = torch.float32
             ) -> torch.Tensor:
    """Ids [H*W, 4] = (t, row, column, 0) in row-major order."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    ids = torch.stack([torch.full_like(rows, 0), rows, cols, torch.zeros_like(rows)], dim=-1).to(dtype)
    ids[:, 0] = t
    return ids.to(device)


def text_ids(length: int, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    ids = torch.zeros(length, 4, dtype=dtype)
    ids[:, 3] = torch.arange(length, dtype=dtype)
    return ids.to(device)


@dataclass
class _Flux2DeviceCond:
    cond: FluxCond
    embeds: torch.Tensor  # [B, L, D]
    guidance: torch.Tensor | None
    txt_ids: torch.Tensor
    ref_tokens: torch.Tensor | None  # [B, N_ref, C]
    ref_ids: torch.Tensor | None  # [N_ref, 4]
    joined_ids: dict[int, torch.Tensor] = field(default_factory=dict)  # image + reference ids, per image size


def parse_flux2_conditioning(conditioning: Any, what: str, joint_dim: int, guidance_embeds: bool) -> list[FluxCond]:
    entries = _entries(conditioning, what)
    if not entries:
        raise ValueError(f"{what} conditioning is empty")
    parsed = []
    for index, (tensor, options) in enumerate(entries):
        if tensor.ndim != 3 or tensor.shape[-1] != joint_dim:
            raise ValueError(f"{what} entry {index}: text embedding of shape {tuple(tensor.shape)} does not fit this "
                             f"FLUX.2 model (expects [batch, tokens, {joint_dim}]); encode the prompt with this "
                             "model's text encoder (klein: its Qwen3, dev: Mistral; CLIPLoader type 'flux2')")
        guidance = options.get("guidance")
        extra = {k: v for k, v in options.items() if k not in ("guidance", "strength", "start_percent", "end_percent")}
        parsed.append(FluxCond(
            embeds=tensor, pooled=torch.zeros(0),
            guidance=DEFAULT_DEV_GUIDANCE if guidance is None else float(guidance),
            strength=float(options.get("strength", 1.0)), start_percent=float(options.get("start_percent", 0.0)),
            end_percent=float(options.get("end_percent", 1.0)), extra=extra))
    return parsed


class Flux2Denoiser(FluxDenoiser):
    """FluxDenoiser's conditioning selection and CFG, with FLUX.2's tokens, ids and reference images."""

    def __init__(self, model: Any, positive: list, negative: list | None, cfg: float, schedule: FlowSchedule,
                 device: torch.device, batch: int) -> None:
        self.in_channels = int(model.transformer.config.in_channels)  # reference latents must match it
        super().__init__(model, positive, negative, cfg, schedule, device, batch)

    def _prepare(self, conditioning: Any, what: str) -> list[_Flux2DeviceCond]:  # type: ignore[override]
        joint = int(self.transformer.config.joint_attention_dim)
        return [self._to_device(c, what)
                for c in parse_flux2_conditioning(conditioning, what, joint, self.guidance_embeds)]

    def _references(self, cond: FluxCond, what: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        refs = reference_latents(cond.extra or {})
        if not refs:
            return None, None
        tokens, ids = [], []
        for index, ref in enumerate(refs):
            _, channels, h, w = ref.shape
            if channels != self.in_channels:
                raise ValueError(f"{what} reference image {index + 1} is a latent with {channels} channels; this "
                                 f"FLUX.2 model takes {self.in_channels}: encode the image with the FLUX.2 VAE")
            if min(h, w) < MIN_REFERENCE_LATENT_SIDE:
                raise ValueError(f"{what} reference image {index + 1} is {w * 16}x{h * 16} pixels; FLUX.2 "
                                 "reference images must be at least 64 pixels on each side")
            ref = fit_batch(ref.float(), self.batch, f"reference image {index + 1}")
            tokens.append(pack(ref))
            ids.append(grid_ids(h, w, t=REFERENCE_TIME_SCALE * (index + 1)))
        return (torch.cat(tokens, dim=1).to(self.device, self.dtype),
                torch.cat(ids, dim=0).to(self.device, self.dtype))

    def _to_device(self, cond: FluxCond, what: str = "positive") -> _Flux2DeviceCond:  # type: ignore[override]
        embeds = fit_batch(cond.embeds, self.batch, "text embedding").to(self.device, self.dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([self.batch], cond.guidance, device=self.device, dtype=torch.float32)
        ref_tokens, ref_ids = self._references(cond, what)
        return _Flux2DeviceCond(cond, embeds, guidance, text_ids(embeds.shape[1], self.device, self.dtype),
                                ref_tokens, ref_ids)

    def velocity(self, entry: _Flux2DeviceCond, tokens: torch.Tensor, timestep: torch.Tensor,  # type: ignore[override]
                 img_ids: torch.Tensor) -> torch.Tensor:
        hidden, ids = tokens, img_ids
        if entry.ref_tokens is not None:
            hidden = torch.cat([tokens, entry.ref_tokens], dim=1)
            ids = entry.joined_ids.get(tokens.shape[1])
            if ids is None:  # built once per image size, not at every step
                ids = entry.joined_ids[tokens.shape[1]] = torch.cat([img_ids, entry.ref_ids], dim=0)
        out = self.transformer(hidden_states=hidden, encoder_hidden_states=entry.embeds, timestep=timestep,
                               img_ids=ids, txt_ids=entry.txt_ids, guidance=entry.guidance, return_dict=False)[0]
        return out[:, : tokens.shape[1]].float()

    # FLUX.2 latents are already patchified: packing is a plain reshape (the base class's __call__ uses these)
    pack = staticmethod(pack)
    unpack = staticmethod(unpack)
    image_ids = staticmethod(grid_ids)
