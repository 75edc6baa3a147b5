"""The denoiser a sampler calls: FLUX transformer + conditioning + CFG -> x0 estimate.

`FluxDenoiser(x, sigma)` takes latents in model space [B, C, H, W] (H, W even), packs them into 2x2-patch
tokens, runs the transformer once per active conditioning entry (twice per entry set when cfg != 1: the
negative pass), and returns x0 = x - sigma * velocity. Inputs are cast to the transformer's dtype and the
result back to float32, so sampling state stays in float32 whatever the weights are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from engine.models.common.dtypes import module_dtype
from engine.sampling.conditioning import FluxCond, fit_batch, parse_flux_conditioning
from engine.sampling.latents import image_ids, pack_latents, text_ids, unpack_latents
from engine.sampling.schedules import FlowSchedule


def transformer_widths(transformer: Any) -> tuple[int, int]:
    """(joint_attention_dim, pooled_projection_dim) of a FluxTransformer2DModel."""
    config = transformer.config
    return int(config.joint_attention_dim), int(config.pooled_projection_dim)


@dataclass
class _DeviceCond:
    """A conditioning entry's transformer inputs, moved to the device once (no copies inside the loop)."""

    cond: FluxCond
    embeds: torch.Tensor
    pooled: torch.Tensor
    guidance: torch.Tensor | None
    txt_ids: torch.Tensor


class FluxDenoiser:
    """FLUX.1's denoiser; FLUX.2's (engine/sampling/flux2_denoiser.py) changes only the family's parts: how
    conditioning is read (`_prepare`), how latents become tokens (`pack`, `unpack`) and their position ids
    (`image_ids`), and what one transformer call takes (`velocity`)."""

    def __init__(self, model: Any, positive: list, negative: list | None, cfg: float, schedule: FlowSchedule,
                 device: torch.device, batch: int) -> None:
        self.model = model
        self.transformer = model.transformer
        self.cfg = float(cfg)
        self.use_cfg = self.cfg != 1.0
        if self.use_cfg and negative is None:
            raise ValueError(f"cfg is {self.cfg} but no negative conditioning was given (cfg 1.0 needs none)")
        self.schedule = schedule
        self.device = device
        self.batch = batch
        self.dtype = module_dtype(self.transformer)
        self.guidance_embeds = bool(getattr(self.transformer.config, "guidance_embeds", model.guidance_embeds))
        self.positive = self._prepare(positive, "positive")
        self.negative = self._prepare(negative, "negative") if self.use_cfg else []
        self._ids_cache: dict[tuple[int, int], torch.Tensor] = {}
        # Model-level hooks other packs attach (e.g. reference latents), called as hook(cond, kwargs, tokens).
        self.input_hooks: list[Callable[[FluxCond, dict, torch.Tensor], None]] = []

    def _prepare(self, conditioning: Any, what: str) -> list[_DeviceCond]:
        """The entries of a CONDITIONING input, checked against this transformer and moved to the device."""
        joint_dim, pooled_dim = transformer_widths(self.transformer)
        return [self._to_device(c) for c in parse_flux_conditioning(conditioning, what, joint_dim, pooled_dim)]

    def _to_device(self, cond: FluxCond) -> _DeviceCond:
        embeds = fit_batch(cond.embeds, self.batch, "text embedding").to(self.device, self.dtype)
        pooled = fit_batch(cond.pooled, self.batch, "pooled embedding").to(self.device, self.dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([self.batch], cond.guidance, device=self.device, dtype=torch.float32)
        return _DeviceCond(cond, embeds, pooled, guidance, text_ids(embeds.shape[1], self.device, self.dtype))

    def _image_ids(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._ids_cache:
            self._ids_cache[key] = self.image_ids(height, width, device=self.device, dtype=self.dtype)
        return self._ids_cache[key]

    def _active(self, conds: list[_DeviceCond], sigma: float) -> list[_DeviceCond]:
        active = [c for c in conds
                  if self.schedule.percent_to_sigma(c.cond.end_percent) <= sigma
                  <= self.schedule.percent_to_sigma(c.cond.start_percent)]
        return active or conds[:1]  # outside every range: fall back to the first entry rather than nothing

    def velocity(self, entry: _DeviceCond, tokens: torch.Tensor, timestep: torch.Tensor,
                 img_ids: torch.Tensor) -> torch.Tensor:
        kwargs = dict(hidden_states=tokens, timestep=timestep, guidance=entry.guidance,
                      pooled_projections=entry.pooled, encoder_hidden_states=entry.embeds, txt_ids=entry.txt_ids,
                      img_ids=img_ids, return_dict=False)
        for hook in self.input_hooks:
            hook(entry.cond, kwargs, tokens)
        out = self.transformer(**kwargs)[0]
        return out[:, : tokens.shape[1]].float()

    # The token layout of the family's latents and the tokens' position ids (FLUX.2 overrides all three).
    pack = staticmethod(pack_latents)
    unpack = staticmethod(unpack_latents)
    image_ids = staticmethod(image_ids)

    def _combined_velocity(self, conds: list[_DeviceCond], tokens, timestep, img_ids, sigma: float) -> torch.Tensor:
        active = self._active(conds, sigma)
        if len(active) == 1:
            return self.velocity(active[0], tokens, timestep, img_ids)
        total = sum(c.cond.strength for c in active)
        mixed = sum(c.cond.strength * self.velocity(c, tokens, timestep, img_ids) for c in active)
        return mixed / total

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # Through the instance: a step cache (engine/sampling/step_cache/) may wrap `denoise` and `velocity`
        # of this one denoiser for its run.
        return self.denoise(x, sigma)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 estimate for latents `x` at noise level `sigma` (a CPU scalar: reading it never syncs a GPU)."""
        b, _, h, w = x.shape
        if b != self.batch:
            raise ValueError(f"denoiser prepared for batch {self.batch}, called with {b}")
        tokens = self.pack(x).to(self.dtype)
        s = float(sigma)
        # FluxPipeline passes (sigma * 1000) / 1000 in the latents' dtype; the same float steps keep parity
        # exact. The value is formed on the CPU and filled on the device: no host-device copy, no sync.
        t_scaled = float((torch.tensor(s, dtype=torch.float32) * 1000).to(self.dtype))
        timestep = torch.full([b], t_scaled, device=self.device, dtype=self.dtype) / 1000
        img_ids = self._image_ids(h, w)
        velocity = self._combined_velocity(self.positive, tokens, timestep, img_ids, s)
        if self.use_cfg:
            negative = self._combined_velocity(self.negative, tokens, timestep, img_ids, s)
            velocity = negative + self.cfg * (velocity - negative)
        return x - s * self.unpack(velocity, h, w)
