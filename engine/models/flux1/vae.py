"""Load the FLUX.1 VAE into diffusers' AutoencoderKL: BFL `ae.safetensors`, prefixed inside checkpoints
(`vae.` / `first_stage_model.`), diffusers-keyed files, and diffusers folders (`vae/`). A folder is built
from its own config.json (GroupNorm groups, scaling and shift factors included); for files the config is
inferred from the shapes.

FLUX.1 latents have 16 channels, scaled by 0.3611 after shifting by 0.1159; an autoencoder with another
latent width (SD1.x/SDXL: 4) is refused with a message saying so instead of failing later in sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.common.build import instantiate, load_folder_weights, model_subfolder, read_folder_config
from engine.models.common.configs import load_config
from engine.models.common.detect import Component, detect_components, require_component
from engine.models.common.handles import FluxVAE
from engine.models.common.safetensors_io import ModelFileError, SafetensorsFile, open_safetensors
from engine.models.common.vae_keys import VaeKeyError, bfl_vae_to_diffusers, infer_vae_config

FLUX_LATENT_CHANNELS = 16
FLUX_SCALING_FACTOR = 0.3611
FLUX_SHIFT_FACTOR = 0.1159
_SHAPE_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
                 "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")


def load_flux_vae(path: str | Path, dtype: Any = None) -> FluxVAE:
    """The VAE handle for a file or diffusers folder. `dtype`: None keeps the stored float dtype."""
    path = Path(path)
    if path.is_dir():
        folder = model_subfolder(path, "vae")
        config = read_folder_config(folder)
        if config.get("_class_name") not in (None, "AutoencoderKL"):
            raise ModelFileError(folder, f"holds a {config.get('_class_name')}, expected an AutoencoderKL")
        return build_flux_vae(load_folder_weights(folder), folder, dtype, config=config)
    sf = open_safetensors(path)
    comp = require_component(detect_components(sf), "vae")
    return build_flux_vae(vae_state(sf, comp), path, dtype)


def vae_state(sf: SafetensorsFile, comp: Component) -> dict[str, Any]:
    """The diffusers-keyed VAE tensors of component `comp` of file `sf`."""
    parts = tuple(comp.prefix + part for part in ("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))
    state = sf.load(comp.prefix, keys=[k for k in sf.keys() if k.startswith(parts)])
    if comp.layout == "bfl":
        try:
            state = bfl_vae_to_diffusers(state)
        except VaeKeyError as exc:
            raise ModelFileError(sf.path, f"unknown autoencoder tensor {exc.args[0]!r}") from None
    return state


def build_flux_vae(state: dict[str, Any], source: str | Path, dtype: Any = None,
                   config: dict[str, Any] | None = None) -> FluxVAE:
    """FluxVAE from a diffusers-keyed AutoencoderKL state dict. `config`: a folder's own config.json, used as
    it is (FLUX's scaling and shift factors only where it states none); None infers it from the shapes."""
    from diffusers import AutoencoderKL

    if config is None:
        config = _inferred_config(state, source)
    config = dict(config)
    for key, flux_value in (("scaling_factor", FLUX_SCALING_FACTOR), ("shift_factor", FLUX_SHIFT_FACTOR)):
        if config.get(key) is None:
            config[key] = flux_value
    vae = instantiate(lambda: AutoencoderKL.from_config(config), state, source, dtype=dtype)
    if vae.config.latent_channels != FLUX_LATENT_CHANNELS:
        raise ModelFileError(source, f"a VAE with {vae.config.latent_channels} latent channels; FLUX.1 needs "
                                     f"{FLUX_LATENT_CHANNELS} (is this an SD1.x/SDXL VAE?)")
    return FluxVAE(vae=vae, scaling_factor=float(vae.config.scaling_factor),
                   shift_factor=float(vae.config.shift_factor), source=str(source))


def _inferred_config(state: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """A single file's config from its shapes (the shipped `ae` config when they agree with it)."""
    try:
        config = infer_vae_config({k: tuple(v.shape) for k, v in state.items()})
    except VaeKeyError as exc:
        raise ModelFileError(source, f"not an autoencoder: tensor {exc.args[0]!r} is missing") from None
    if config["latent_channels"] != FLUX_LATENT_CHANNELS:
        raise ModelFileError(source, f"a VAE with {config['latent_channels']} latent channels; FLUX.1 needs "
                                     f"{FLUX_LATENT_CHANNELS} (is this an SD1.x/SDXL VAE?)")
    shipped = load_config("ae")
    if all(shipped[f] == config[f] for f in _SHAPE_FIELDS):
        config = dict(shipped)
    return dict(config, scaling_factor=FLUX_SCALING_FACTOR, shift_factor=FLUX_SHIFT_FACTOR)
