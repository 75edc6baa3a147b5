"""All-in-one FLUX.1 checkpoints -> (MODEL, CLIP, VAE) handles, as CheckpointLoaderSimple returns them.

A checkpoint is a single safetensors file with the transformer under `model.diffusion_model.` and,
usually, the text encoders under `text_encoders.clip_l.transformer.` / `text_encoders.t5xxl.transformer.`
and the autoencoder under `vae.` (ComfyUI's packaging; `first_stage_model.` is accepted too), or a diffusers
pipeline folder. A part the file does not hold comes back as None, as in ComfyUI, so the node that needs it
can say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from engine.models.common.detect import detect_components, require_component
from engine.models.flux1.transformer import build_flux_model, load_flux_transformer, transformer_state
from engine.models.common.handles import FluxModel, FluxTextEncoders, FluxVAE
from engine.models.common.safetensors_io import open_safetensors
from engine.models.flux1.text_encoders import encoders_handle, load_text_encoder_file, load_text_encoders_folder
from engine.models.flux1.vae import build_flux_vae, load_flux_vae, vae_state


def load_flux_checkpoint(path: str | Path, tokenizer_roots: Iterable[Path] = (), weight_dtype: str = "default",
                         compute_dtype: Any = None, encoder_dtype: Any = None, vae_dtype: Any = None,
                         ) -> tuple[FluxModel, FluxTextEncoders | None, FluxVAE | None]:
    """(FluxModel, FluxTextEncoders or None, FluxVAE or None) from an all-in-one file or a pipeline folder."""
    path = Path(path)
    roots = list(tokenizer_roots)
    if path.is_dir():
        model = load_flux_transformer(path, weight_dtype, compute_dtype)
        encoders = load_text_encoders_folder(path, encoder_dtype, roots) if (path / "text_encoder").is_dir() \
            else None
        vae = load_flux_vae(path, vae_dtype) if (path / "vae").is_dir() else None
        return model, encoders, vae
    sf = open_safetensors(path)
    contents = detect_components(sf)
    comp = require_component(contents, "transformer")
    model = build_flux_model(transformer_state(sf, comp), source=path, name_hint=path.name, metadata=sf.metadata,
                             weight_dtype=weight_dtype, compute_dtype=compute_dtype)
    encoders = None
    if {"clip_l", "t5xxl"} & set(contents.components):
        encoders = encoders_handle(load_text_encoder_file(path, encoder_dtype), roots, str(path))
    vae = None
    if "vae" in contents.components:
        vae = build_flux_vae(vae_state(sf, contents.components["vae"]), path, vae_dtype)
    return model, encoders, vae
