"""FLUX.2 variants: how they are told apart and what each means for sampling.

From the transformer weights:
- a guidance embedder (`guidance_in.*` / `time_guidance_embed.guidance_embedder.*`) -> **flux2-dev**
  (distilled guidance, FluxGuidance; Mistral Small text encoder);
- none -> **klein** (Qwen3 text encoder, no guidance embedding). Its size class comes from a "4b"/"9b" in
  the file/folder name or metadata, else from the text width it expects (7680 = 3 x Qwen3-4B's 2560 -> 4b,
  12288 = 3 x Qwen3-8B's 4096 -> 9b); a klein of another size is plain "flux2-klein".
  The step-distilled klein and the base klein have the same shapes: "base" in the name or metadata, or
  `is_distilled: false` in a diffusers `model_index.json`, marks the base model (sampled with CFG).

Defaults (the reference pipelines' and BFL's recommendations) are what `GET /api/variants` reports and what
the shipped workflows use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KLEIN_TEXT_WIDTHS = {7680: "4b", 12288: "9b"}
_SIZE_HINT = re.compile(r"(?<![0-9a-z])([49])b(?![a-z0-9])")


@dataclass(frozen=True)
class Flux2VariantInfo:
    name: str
    distilled: bool  # step-distilled: few steps, no CFG
    guidance_embeds: bool
    steps: int
    cfg: float  # CFGGuider's scale (1 = no negative pass)
    guidance: float | None  # FluxGuidance (dev's embedded guidance); None when the model has none


FLUX2_VARIANTS: dict[str, Flux2VariantInfo] = {
    "flux2-dev": Flux2VariantInfo("flux2-dev", False, True, 50, 1.0, 4.0),
    "flux2-klein-4b": Flux2VariantInfo("flux2-klein-4b", True, False, 4, 1.0, None),
    "flux2-klein-9b": Flux2VariantInfo("flux2-klein-9b", True, False, 4, 1.0, None),
    "flux2-klein": Flux2VariantInfo("flux2-klein", True, False, 4, 1.0, None),
    "flux2-klein-base-4b": Flux2VariantInfo("flux2-klein-base-4b", False, False, 50, 4.0, None),
    "flux2-klein-base-9b": Flux2VariantInfo("flux2-klein-base-9b", False, False, 50, 4.0, None),
    "flux2-klein-base": Flux2VariantInfo("flux2-klein-base", False, False, 50, 4.0, None),
}
DEFAULT_DEV_GUIDANCE = 4.0  # Flux2Pipeline's guidance_scale default, used when no FluxGuidance set one


def flux2_variant_info(variant: str) -> Flux2VariantInfo:
    try:
        return FLUX2_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown FLUX.2 variant {variant!r}; expected one of {sorted(FLUX2_VARIANTS)}") from None


def _hints(name_hint: str, metadata: dict[str, str] | None) -> str:
    return " ".join([name_hint] + [f"{k} {v}" for k, v in (metadata or {}).items()]).lower()


def detect_flux2_variant(config: dict[str, Any], name_hint: str = "", metadata: dict[str, str] | None = None,
                         distilled: bool | None = None) -> str:
    """The variant name of a FLUX.2 transformer from its inferred config and hints (module docstring)."""
    if config.get("guidance_embeds"):
        return "flux2-dev"
    hints = _hints(name_hint, metadata)
    found = _SIZE_HINT.search(hints)
    size = found.group(1) + "b" if found else KLEIN_TEXT_WIDTHS.get(int(config.get("joint_attention_dim", 0)))
    base = distilled is False or (distilled is None and "base" in hints)
    name = "flux2-klein-base" if base else "flux2-klein"
    return f"{name}-{size}" if size else name


def folder_is_distilled(pipeline_folder: Path) -> bool | None:
    """`is_distilled` from a diffusers Flux2KleinPipeline's model_index.json (None when not stated)."""
    index = pipeline_folder / "model_index.json"
    if not index.is_file():
        return None
    try:
        value = json.loads(index.read_text(encoding="utf-8")).get("is_distilled")
    except (OSError, json.JSONDecodeError):
        return None
    return bool(value) if isinstance(value, bool) else None
