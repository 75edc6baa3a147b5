"""What a model file holds, from its tensor names and shapes alone (no tensor data is read).

Recognised single-file layouts (see docs/models.md):
- transformer, BFL keys (`double_blocks.*`, `single_blocks.*`), bare or under `model.diffusion_model.`
  (ComfyUI's packaging) or `diffusion_model.`; or diffusers keys (`transformer_blocks.*`);
- clip_l (transformers CLIPTextModel keys, with or without `text_model.`), bare or under
  `text_encoders.clip_l.transformer.` (ComfyUI all-in-one) or `cond_stage_model.clip_l.transformer.`;
- t5xxl (transformers T5 encoder keys `encoder.block.*`, `shared.weight`), bare or under
  `text_encoders.t5xxl.transformer.` or `cond_stage_model.t5xxl.transformer.`;
- vae, BFL/LDM keys (`encoder.down.*`) or diffusers keys (`encoder.down_blocks.*`), bare or under `vae.`
  (ComfyUI all-in-one FLUX checkpoints) or `first_stage_model.` (SD-style checkpoints).

FLUX.1 variant rules (from the transformer weights): no guidance embedder -> schnell; 384 input channels
(64 latent + 320 conditioning) -> fill; 128 (64 latent + 64 control-image latent) -> "depth" or "canny" when
the file name or metadata says so, else "control" (both have the same shapes); otherwise dev, unless the
file name or the safetensors metadata mentions "kontext": Kontext has exactly dev's shapes, so only such a
hint can tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.models.common.safetensors_io import ModelFileError, SafetensorsFile

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
CLIP_PREFIXES = ("text_encoders.clip_l.transformer.", "text_encoders.clip_l.", "cond_stage_model.clip_l.transformer.",
                 "")
T5_PREFIXES = ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl.", "cond_stage_model.t5xxl.transformer.", "")
VAE_PREFIXES = ("vae.", "first_stage_model.", "")

_MARKERS = {
    "transformer": (TRANSFORMER_PREFIXES, {"bfl": "double_blocks.0.img_attn.qkv.weight",
                                           "diffusers": "transformer_blocks.0.attn.to_q.weight"}),
    "clip_l": (CLIP_PREFIXES, {"transformers": "text_model.encoder.layers.0.self_attn.q_proj.weight",
                               "transformers-bare": "encoder.layers.0.self_attn.q_proj.weight"}),
    "t5xxl": (T5_PREFIXES, {"transformers": "encoder.block.0.layer.0.SelfAttention.q.weight"}),
    "vae": (VAE_PREFIXES, {"bfl": "encoder.down.0.block.0.conv1.weight",
                           "diffusers": "encoder.down_blocks.0.resnets.0.conv1.weight"}),
}
_DESCRIPTIONS = {"transformer": "a FLUX diffusion transformer", "clip_l": "a CLIP-L text encoder",
                 "t5xxl": "a T5-XXL text encoder", "vae": "a VAE (autoencoder)"}
_LOADERS = {"transformer": "UNETLoader (models/diffusion_models)", "clip_l": "CLIPLoader / DualCLIPLoader "
            "(models/text_encoders)", "t5xxl": "CLIPLoader / DualCLIPLoader (models/text_encoders)",
            "vae": "VAELoader (models/vae)"}
FLUX_FILL_IN_CHANNELS = 384
FLUX_CONTROL_IN_CHANNELS = 128


@dataclass(frozen=True)
class Component:
    kind: str  # "transformer" | "clip_l" | "t5xxl" | "vae"
    prefix: str  # key prefix inside the file ("" when bare)
    layout: str  # "bfl" | "diffusers" | "transformers" | "transformers-bare"


@dataclass
class FileContents:
    path: Path
    components: dict[str, Component] = field(default_factory=dict)

    @property
    def format(self) -> str:
        """"bfl" / "comfyui" / "diffusers" single transformer file, "checkpoint" (all-in-one), or the part."""
        kinds = set(self.components)
        if len(kinds) > 1:
            return "checkpoint"
        if kinds == {"transformer"}:
            comp = self.components["transformer"]
            return "comfyui" if comp.prefix else comp.layout
        return next(iter(kinds), "unknown")

    def describe(self) -> str:
        if not self.components:
            return "no FLUX.1 component (transformer, clip_l, t5xxl or VAE) recognised"
        return ", ".join(_DESCRIPTIONS[k] for k in self.components)


def detect_components(sf: SafetensorsFile) -> FileContents:
    """Find each FLUX.1 component in `sf` by its marker key under each known prefix."""
    keys = set(sf.tensors)
    found: dict[str, Component] = {}
    for kind, (prefixes, markers) in _MARKERS.items():
        for prefix in prefixes:
            hit = next((layout for layout, marker in markers.items() if prefix + marker in keys), None)
            if hit is not None:
                found[kind] = Component(kind, prefix, hit)
                break
    return FileContents(path=sf.path, components=found)


def require_component(contents: FileContents, kind: str) -> Component:
    """The `kind` component of a file, or an error that says what the file holds and which loader wants it."""
    comp = contents.components.get(kind)
    if comp is not None:
        return comp
    if contents.components:
        others = list(contents.components)
        hint = f"; load it with {_LOADERS[others[0]]}" if len(others) == 1 else ""
        raise ModelFileError(contents.path, f"expected {_DESCRIPTIONS[kind]}, but the file holds "
                                            f"{contents.describe()}{hint}")
    raise ModelFileError(contents.path, f"expected {_DESCRIPTIONS[kind]}, but no FLUX.1 component was recognised "
                                        "in its tensor names (a model of another architecture?)")


def detect_flux_variant(diffusers_shapes: dict[str, tuple[int, ...]], name_hint: str = "",
                        metadata: dict[str, str] | None = None, source: str | Path = "") -> str:
    """"dev" | "schnell" | "fill" | "kontext" | "depth" | "canny" | "control" from diffusers-keyed shapes (rules
    in the module docstring)."""
    x_embedder = diffusers_shapes.get("x_embedder.weight")
    if x_embedder is None:
        raise ModelFileError(source, "not a FLUX.1 transformer: no input projection (img_in / x_embedder)")
    in_channels = x_embedder[1]
    has_guidance = "time_text_embed.guidance_embedder.linear_1.weight" in diffusers_shapes
    if not has_guidance:
        return "schnell"
    if in_channels == FLUX_FILL_IN_CHANNELS:
        return "fill"
    hints = [name_hint.lower()] + [f"{k} {v}".lower() for k, v in (metadata or {}).items()]
    if in_channels == FLUX_CONTROL_IN_CHANNELS:  # Depth and Canny have the same shapes: only a hint tells them apart
        return next((kind for kind in ("depth", "canny") if any(kind in hint for hint in hints)), "control")
    if in_channels != 64:
        raise ModelFileError(source, f"unexpected FLUX.1 input width {in_channels} (expected 64, 128 for Depth/"
                                     "Canny, or 384 for fill)")
    if any("kontext" in hint for hint in hints):
        return "kontext"
    return "dev"
