"""What each FLUX.1 variant means for sampling: guidance embedding, time shift, T5 length, shipped configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.models.common.handles import FluxModel, FluxSampling


@dataclass(frozen=True)
class VariantInfo:
    name: str
    config: str  # shipped transformer config (engine/models/common/configs/<config>.json)
    guidance_embeds: bool
    sampling: FluxSampling
    t5_max_length: int


_DYNAMIC = FluxSampling()  # resolution-dependent shift (mu), as FLUX.1 dev and ComfyUI's ModelSamplingFlux
_FIXED = FluxSampling(use_dynamic_shifting=False, shift=1.0)  # schnell: no shift

VARIANTS: dict[str, VariantInfo] = {
    "dev": VariantInfo("dev", "flux1-dev", True, _DYNAMIC, 512),
    "schnell": VariantInfo("schnell", "flux1-schnell", False, _FIXED, 256),
    "fill": VariantInfo("fill", "flux1-fill", True, _DYNAMIC, 512),
    "kontext": VariantInfo("kontext", "flux1-kontext", True, _DYNAMIC, 512),
    # FLUX.1 Depth / Canny dev: 128 input channels (latent + control-image latent), dev's sampling
    "depth": VariantInfo("depth", "flux1-control", True, _DYNAMIC, 512),
    "canny": VariantInfo("canny", "flux1-control", True, _DYNAMIC, 512),
    "control": VariantInfo("control", "flux1-control", True, _DYNAMIC, 512),
}
CONTROL_VARIANTS = ("depth", "canny", "control")


def variant_info(variant: str) -> VariantInfo:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown FLUX.1 variant {variant!r}; expected one of {sorted(VARIANTS)}") from None


def flux_model_handle(transformer: Any, variant: str, source: str = "") -> FluxModel:
    """The MODEL handle for a loaded FluxTransformer2DModel of `variant`."""
    info = variant_info(variant)
    guidance = bool(getattr(transformer.config, "guidance_embeds", info.guidance_embeds))
    return FluxModel(transformer=transformer, variant=variant, family="flux1", guidance_embeds=guidance,
                     sampling=info.sampling, source=source)
