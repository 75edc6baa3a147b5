"""The tiny FLUX.2 zoo: klein (step-distilled and base) and dev, in the layouts people download.

`write_flux2_zoo(models_dir, seed, meta)` (called by `zoo.write_tiny_zoo`) writes:

    diffusion_models/flux2-klein-4b-tiny.safetensors        klein, BFL keys under ComfyUI's model.diffusion_model.
    diffusion_models/flux2-klein-base-4b-tiny.safetensors   klein base, BFL keys (bare)
    diffusion_models/flux2-dev-tiny.safetensors             dev, BFL keys (bare)
    text_encoders/qwen3-4b-tiny.safetensors                 Qwen3ForCausalLM keys (`model.*`)
    text_encoders/mistral3-small-tiny.safetensors           Mistral3ForConditionalGeneration as transformers
                                                            saves it (`language_model.model.*`, vision tower)
    vae/flux2-vae-tiny.safetensors                          AutoencoderKLFlux2, BFL keys (+ bn statistics)
    tokenizers/qwen3-tiny/, tokenizers/mistral3-tiny/       tokenizer.json + chat template
    diffusers/flux2-klein-4b-tiny/                          Flux2KleinPipeline folder (is_distilled: true)
    diffusers/flux2-dev-tiny/                               Flux2Pipeline folder

The "4b" in the klein names is the variant they stand in for (`flux2-klein-4b` in /api/generate); the
models themselves are tiny (engine.zoo.flux2_tiny).
"""

from __future__ import annotations

from pathlib import Path

from engine.models.common.safetensors_io import open_safetensors, save_safetensors
from engine.models.flux2.keys import diffusers_to_bfl
from engine.models.flux2.vae_keys import diffusers_to_bfl_flux2_vae
from engine.zoo.files import save_pipeline, save_tokenizer
from engine.zoo.flux2_tiny import TinyFlux2, tiny_flux2, tiny_flux2_shared, tiny_flux2_transformer

TRANSFORMER_FILES = {"klein": "flux2-klein-4b-tiny.safetensors", "klein-base": "flux2-klein-base-4b-tiny.safetensors",
                     "dev": "flux2-dev-tiny.safetensors"}
QWEN3_FILE = "qwen3-4b-tiny.safetensors"
MISTRAL_FILE = "mistral3-small-tiny.safetensors"
VAE_FILE = "flux2-vae-tiny.safetensors"
PIPELINE_FOLDERS = {"klein": "flux2-klein-4b-tiny", "dev": "flux2-dev-tiny"}


def write_flux2_zoo(models_dir: str | Path, seed: int = 0, meta: dict[str, str] | None = None) -> list[Path]:
    """Write the tiny FLUX.2 files under `models_dir`; returns the paths written."""
    models_dir = Path(models_dir)
    meta = dict(meta or {})
    klein = tiny_flux2_shared(seed, "klein")
    dev = tiny_flux2_shared(seed, "dev")
    written = [
        save_safetensors(klein.text_encoder.state_dict(), models_dir / "text_encoders" / QWEN3_FILE, meta),
        save_safetensors(diffusers_to_bfl_flux2_vae(klein.vae.state_dict()), models_dir / "vae" / VAE_FILE, meta),
    ]
    written += save_tokenizer(klein.tokenizer, models_dir / "tokenizers" / "qwen3-tiny")
    written += save_tokenizer(dev.tokenizer, models_dir / "tokenizers" / "mistral3-tiny")
    for variant, filename in TRANSFORMER_FILES.items():
        transformer = tiny_flux2_transformer(variant, seed)
        state = diffusers_to_bfl(transformer.state_dict())
        if variant == "klein":  # ComfyUI's repackaged files carry the checkpoint prefix
            state = {"model.diffusion_model." + k: v for k, v in state.items()}
        variant_meta = dict(meta, **{"fluxgraph.variant": f"flux2-{variant}"})
        written.append(save_safetensors(state, models_dir / "diffusion_models" / filename, variant_meta))
        if variant in PIPELINE_FOLDERS:
            shared = dev if variant == "dev" else klein
            parts = TinyFlux2(variant=variant, transformer=transformer, vae=klein.vae,
                              text_encoder=shared.text_encoder, tokenizer=shared.tokenizer)
            written += save_pipeline(parts.pipeline, models_dir / "diffusers" / PIPELINE_FOLDERS[variant])
    # Mistral3 as transformers saves it (its checkpoint key names), taken from the dev pipeline folder just written
    saved = open_safetensors(models_dir / "diffusers" / PIPELINE_FOLDERS["dev"] / "text_encoder" / "model.safetensors")
    written.append(save_safetensors(saved.load(), models_dir / "text_encoders" / MISTRAL_FILE, meta))
    return written


__all__ = ["write_flux2_zoo", "tiny_flux2", "TRANSFORMER_FILES", "QWEN3_FILE", "MISTRAL_FILE", "VAE_FILE",
           "PIPELINE_FOLDERS"]
