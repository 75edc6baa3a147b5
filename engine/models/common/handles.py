"""The light objects passed on MODEL / CLIP / VAE edges.

A handle holds the module and what the sampler needs to know about it. Handles are immutable: a node that
changes sampling parameters or adds a patch (ModelSamplingFlux, LoRA) returns a new handle sharing the same
weights, so cached upstream outputs are never mutated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FluxSampling:
    """Flow-matching time shift, as FLUX uses it (resolution-dependent `mu` unless `shift` is fixed)."""

    base_shift: float = 0.5
    max_shift: float = 1.15
    base_seq_len: int = 256
    max_seq_len: int = 4096
    use_dynamic_shifting: bool = True
    shift: float = 1.0  # used when use_dynamic_shifting is False (schnell)
    # Fixed resolution for the mu computation, set by ModelSamplingFlux(width, height); None = from latent.
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class FluxModel:
    transformer: Any  # diffusers FluxTransformer2DModel (or Flux2Transformer2DModel)
    variant: str  # "dev", "schnell", "fill", "kontext", "flux2-dev", "flux2-klein-4b", ...
    family: str = "flux1"  # "flux1" or "flux2"
    guidance_embeds: bool = True
    sampling: FluxSampling = field(default_factory=FluxSampling)
    patches: tuple[Any, ...] = ()  # LoRA patches, applied for a run by engine.models.lora.patch
    # Model-level options set by nodes (e.g. DifferentialDiffusion); kept as a sorted tuple for hashing.
    options: tuple[tuple[str, Any], ...] = ()
    source: str = ""  # file or folder it was loaded from, for error messages

    def with_sampling(self, **changes: Any) -> "FluxModel":
        return dataclasses.replace(self, sampling=dataclasses.replace(self.sampling, **changes))

    def with_patch(self, patch: Any) -> "FluxModel":
        return dataclasses.replace(self, patches=self.patches + (patch,))

    def with_option(self, key: str, value: Any) -> "FluxModel":
        opts = dict(self.options)
        opts[key] = value
        return dataclasses.replace(self, options=tuple(sorted(opts.items())))

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass(frozen=True)
class FluxTextEncoders:
    """CLIP-L (pooled) and T5-XXL (sequence) encoders of FLUX.1, with their tokenizers."""

    clip: Any = None  # transformers CLIPTextModel
    clip_tokenizer: Any = None
    t5: Any = None  # transformers T5EncoderModel
    t5_tokenizer: Any = None
    t5_max_length: int = 512
    kind: str = "flux"  # "flux" (clip_l + t5xxl), "flux2" (Qwen3 / Mistral), ...
    extra: tuple[tuple[str, Any], ...] = ()
    source: str = ""
    patches: tuple[Any, ...] = ()  # LoRA patches of the text encoders (engine.models.lora.patch)


@dataclass(frozen=True)
class FluxVAE:
    vae: Any  # diffusers AutoencoderKL (or AutoencoderKLFlux2)
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159
    source: str = ""
