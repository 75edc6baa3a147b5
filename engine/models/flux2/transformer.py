"""Load a FLUX.2 transformer (dev, klein 4B / 9B, base or distilled) into diffusers' Flux2Transformer2DModel.

Sources: BFL / ComfyUI single files (`double_blocks.*`, `single_blocks.*`, the shared
`*_stream_modulation.lin` keys), bare or under `model.diffusion_model.` / `diffusion_model.`; diffusers-keyed
files; diffusers folders (a pipeline's `transformer/` or a transformer folder), built from the folder's own
config.json. For single files the config is inferred from the shapes (`engine.models.flux2.keys.FLUX2`), so
every FLUX.2 size loads without new code; the variant comes from `engine.models.flux2.variants`.

`load_diffusion_model` is UNETLoader's entry point: it sends FLUX.2 weights here and everything else to the
FLUX.1 loader. `weight_dtype` works as for FLUX.1 (fp8 storage of the block Linear weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.common.build import load_folder_weights, model_subfolder
from engine.models.common.family import model_parts, require_family_part
from engine.models.common.fp8 import check_weight_dtype
from engine.models.common.handles import FluxModel, FluxSampling
from engine.models.common.safetensors_io import ModelFileError, open_safetensors
from engine.models.common.transformer_family import build_transformer, folder_transformer_config, transformer_config
from engine.models.flux1.transformer import load_flux_transformer
from engine.models.flux2.keys import FLUX2, Flux2KeyError, bfl_to_diffusers
from engine.models.flux2.variants import detect_flux2_variant, flux2_variant_info, folder_is_distilled
from engine.models.quant.gguf_file import is_gguf, open_gguf, text_metadata, transformer_part
from engine.models.quant.gguf_file import transformer_state as gguf_transformer_state
from engine.models.quant.tensors import pack_scaled_fp8

FLUX2_SAMPLING = FluxSampling()  # the shift itself is FLUX.2's empirical rule (engine.sampling.flux2_schedule)


def is_flux2_model(path: str | Path) -> bool:
    """True when `path` (file or folder) holds a FLUX.2 transformer."""
    if is_gguf(path):
        found = transformer_part(open_gguf(path))
        return found is not None and found[0] == "flux2"
    return "flux2-transformer" in model_parts(path)


def load_diffusion_model(path: str | Path, weight_dtype: str = "default", compute_dtype: Any = None) -> FluxModel:
    """UNETLoader: a FLUX.2 or FLUX.1 transformer, whichever `path` holds."""
    if is_flux2_model(path):
        return load_flux2_transformer(path, weight_dtype, compute_dtype)
    return load_flux_transformer(path, weight_dtype=weight_dtype, compute_dtype=compute_dtype)


def load_flux2_transformer(path: str | Path, weight_dtype: str = "default", compute_dtype: Any = None,
                           variant: str | None = None) -> FluxModel:
    """A MODEL handle (family "flux2") for the FLUX.2 transformer in `path` (file or diffusers folder)."""
    check_weight_dtype(weight_dtype)
    path = Path(path)
    distilled = config = None
    if path.is_dir():
        folder = model_subfolder(path, "transformer")
        config = folder_transformer_config(FLUX2, folder)
        if config.get("_class_name") is None:
            raise ModelFileError(folder, "config.json names no _class_name, expected a Flux2Transformer2DModel "
                                         "(FLUX.2)")
        state, source, metadata = load_folder_weights(folder), folder, {}
        distilled = folder_is_distilled(path)
        hint = path.name
    elif is_gguf(path):
        gf = open_gguf(path)
        state, layout = gguf_transformer_state(gf, "flux2")
        if layout == "bfl":
            state = _to_diffusers(state, path, "")
        source, metadata, hint = path, text_metadata(gf), path.name
    else:
        part = require_family_part(path, ("flux2-transformer",), "a FLUX.2 diffusion transformer")
        sf = open_safetensors(path)
        state = sf.load(part.prefix) if part.prefix else sf.load(
            keys=[k for k in sf.keys() if not k.startswith(("text_encoders.", "vae.", "first_stage_model."))])
        state = pack_scaled_fp8(state)  # scaled fp8: weights stay fp8, each with its layer's scale
        if part.layout == "bfl":
            state = _to_diffusers(state, path, part.prefix)
        source, metadata, hint = path, sf.metadata, path.name
    return build_flux2_model(state, source, hint, metadata, weight_dtype, compute_dtype, variant, distilled, config)


def _to_diffusers(state: dict[str, Any], path: Path, prefix: str) -> dict[str, Any]:
    try:
        return bfl_to_diffusers(state)
    except Flux2KeyError as exc:
        raise ModelFileError(path, f"unknown FLUX.2 transformer tensor {prefix}{exc.args[0]}") from None


def build_flux2_model(state: dict[str, Any], source: str | Path, name_hint: str = "",
                      metadata: dict[str, str] | None = None, weight_dtype: str = "default",
                      compute_dtype: Any = None, variant: str | None = None,
                      distilled: bool | None = None, config: dict[str, Any] | None = None) -> FluxModel:
    """FluxModel (family "flux2") from a diffusers-keyed state dict. `config`: a folder's own config.json, used
    as it is; None (single files) infers it from the shapes."""
    if config is None:
        config = transformer_config(FLUX2, state, source)
    if variant is not None:
        flux2_variant_info(variant)
    model = build_transformer(FLUX2, config, state, source, weight_dtype, compute_dtype)
    built = dict(model.config)  # the folder's values, with the class defaults for what it leaves out
    info = flux2_variant_info(variant or detect_flux2_variant(built, name_hint, metadata, distilled))
    return FluxModel(transformer=model, variant=info.name, family="flux2",
                     guidance_embeds=bool(built["guidance_embeds"]), sampling=FLUX2_SAMPLING, source=str(source))
