"""The denoiser a sampler calls: FLUX transformer + conditioning + CFG -> x0 estimate.

`FluxDenoiser(x, sigma)` takes latents in model space [B, C, H, W] (H, W even), packs them into 2x2-patch
tokens, runs the transformer once per active conditioning entry (twice per entry set when cfg != 1: the
negative pass), and returns x0 = x - sigma * velocity. Inputs are cast to the transformer's dtype and the
result back to float32, so sampling state stays in float32 whatever the weights are.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from engine.sampling.conditioning import FluxCond, fit_batch, parse_flux_conditioning
from engine.sampling.latents import image_ids, pack_latents, text_ids, unpack_latents
from engine.sampling.schedules import FlowSchedule


def transformer_widths(transformer: Any) -> tuple[int, int]:
    """(joint_attention_dim, pooled_projection_dim) of a FluxTransformer2DModel."""
    config = transformer.config
    return int(config.joint_attention_dim), int(config.pooled_projection_dim)


def module_dtype(module: Any) -> torch.dtype:
    """The dtype a module computes in: fp8-stored weights (upcast per layer) do not count."""
    dtype = getattr(module, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype.itemsize >= 2:
        return dtype
    for param in module.parameters():
        if param.is_floating_point() and param.dtype.itemsize >= 2:
            return param.dtype
    return torch.float32


class FluxDenoiser:
    def __init__(self, model: Any, positive: list, negative: list | None, cfg: float, schedule: FlowSchedule,
                 device: torch.device, batch: int) -> None:
        self.model = model
        self.transformer = model.transformer
        joint_dim, pooled_dim = transformer_widths(self.transformer)
        self.positive = parse_flux_conditioning(positive, "positive", joint_dim, pooled_dim)
        self.cfg = float(cfg)
        self.use_cfg = self.cfg != 1.0
        if self.use_cfg and negative is None:
            raise ValueError(f"cfg is {self.cfg} but no negative conditioning was given (cfg 1.0 needs none)")
        self.negative = parse_flux_conditioning(negative, "negative", joint_dim, pooled_dim) if self.use_cfg else []
        self.schedule = schedule
        self.device = device
        self.batch = batch
        self.dtype = module_dtype(self.transformer)
        self.guidance_embeds = bool(getattr(self.transformer.config, "guidance_embeds", model.guidance_embeds))
        self._ids_cache: dict[tuple[int, int], torch.Tensor] = {}
        # Model-level hooks other packs attach (e.g. reference latents), called as hook(cond, kwargs, x).
        self.input_hooks: list[Callable[[FluxCond, dict, torch.Tensor], None]] = []

    def _image_ids(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._ids_cache:
            self._ids_cache[key] = image_ids(height, width, device=self.device, dtype=self.dtype)
        return self._ids_cache[key]

    def _active(self, conds: list[FluxCond], sigma: float) -> list[FluxCond]:
        active = [c for c in conds
                  if self.schedule.percent_to_sigma(c.end_percent) <= sigma
                  <= self.schedule.percent_to_sigma(c.start_percent)]
        return active or conds[:1]  # outside every range: fall back to the first entry rather than nothing

    def velocity(self, cond: FluxCond, tokens: torch.Tensor, timestep: torch.Tensor,
                 img_ids: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        embeds = fit_batch(cond.embeds, b, "text embedding").to(self.device, self.dtype)
        pooled = fit_batch(cond.pooled, b, "pooled embedding").to(self.device, self.dtype)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full([b], cond.guidance, device=self.device, dtype=torch.float32)
        kwargs = dict(hidden_states=tokens, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                      encoder_hidden_states=embeds, txt_ids=text_ids(embeds.shape[1], self.device, self.dtype),
                      img_ids=img_ids, return_dict=False)
        for hook in self.input_hooks:
            hook(cond, kwargs, tokens)
        out = self.transformer(**kwargs)[0]
        return out[:, : tokens.shape[1]].float()

    def _combined_velocity(self, conds: list[FluxCond], tokens, timestep, img_ids, sigma: float) -> torch.Tensor:
        active = self._active(conds, sigma)
        if len(active) == 1:
            return self.velocity(active[0], tokens, timestep, img_ids)
        total = sum(c.strength for c in active)
        mixed = sum(c.strength * self.velocity(c, tokens, timestep, img_ids) for c in active)
        return mixed / total

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = pack_latents(x).to(self.dtype)
        # FluxPipeline passes (sigma * 1000) / 1000 in the latents' dtype; doing the same keeps parity exact.
        sigma_t = sigma.reshape(1).to(device=self.device, dtype=torch.float32)
        timestep = ((sigma_t * 1000).expand(b).to(self.dtype)) / 1000
        img_ids = self._image_ids(h, w)
        s = float(sigma)
        velocity = self._combined_velocity(self.positive, tokens, timestep, img_ids, s)
        if self.use_cfg:
            negative = self._combined_velocity(self.negative, tokens, timestep, img_ids, s)
            velocity = negative + self.cfg * (velocity - negative)
        velocity = unpack_latents(velocity, h, w)
        return x - sigma_t.reshape(1, 1, 1, 1) * velocity
