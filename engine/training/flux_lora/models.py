"""The models of a `fluxgraph train lora` config (the node gets them from its MODEL / CLIP / VAE inputs).

`unet`, `clip` (one or two names) and `vae` are names under models/diffusion_models, models/text_encoders and
models/vae (or paths), loaded as UNETLoader, CLIPLoader / DualCLIPLoader and VAELoader would: the
transformer's family decides the text encoder (FLUX.2: a Qwen3 / Mistral file; FLUX.1: clip_l + t5xxl).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.common.family import model_parts
from engine.models.flux1.text_encoders import load_flux_text_encoders, load_text_encoders_folder
from engine.models.flux1.vae import load_flux_vae
from engine.models.flux2.text_encoders import load_flux2_text_encoder
from engine.models.flux2.transformer import load_diffusion_model
from engine.models.flux2.vae import load_flux2_vae
from engine.training.flux_lora.config import LoraConfigError, LoraTrainConfig


def _path(folders: Any, key: str, name: str, setting: str) -> Path:
    if not name:
        raise LoraConfigError(f"{setting} is required: the name of a file under models/{key}/ (or a path)")
    if Path(name).is_absolute():
        return Path(name)
    try:
        return folders.model_path(key, name)
    except (FileNotFoundError, ValueError) as exc:
        raise LoraConfigError(f"{setting}: {exc}") from None


def load_training_models(config: LoraTrainConfig, folders: Any, dtype: Any = None) -> tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) handles of the config's `unet`, `clip` and `vae`."""
    model = load_diffusion_model(_path(folders, "diffusion_models", config.unet, "unet"),
                                 weight_dtype=config.weight_dtype, compute_dtype=dtype)
    names = list(config.clip)
    if not names or len(names) > 2:
        raise LoraConfigError("clip must name one text encoder (FLUX.2) or two (FLUX.1: clip_l and t5xxl)")
    paths = [_path(folders, "text_encoders", name, "clip") for name in names]
    roots = folders.model_dirs("tokenizers")
    if getattr(model, "family", "flux1") == "flux2":
        clip = load_flux2_text_encoder(paths[0], roots, dtype=dtype)
    elif len(paths) == 1 and paths[0].is_dir():
        clip = load_text_encoders_folder(paths[0], dtype, roots)
    else:
        clip = load_flux_text_encoders(paths, roots, dtype=dtype)
    vae_path = _path(folders, "vae", config.vae, "vae")
    vae = (load_flux2_vae if "flux2-vae" in model_parts(vae_path) else load_flux_vae)(vae_path)
    return model, clip, vae
