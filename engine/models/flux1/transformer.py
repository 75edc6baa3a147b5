"""Load a FLUX.1 transformer into diffusers' FluxTransformer2DModel, from any supported layout.

GGUF files (UnetLoaderGGUF) hold BFL or diffusers keys; their quantized weights stay GGUF blocks.
Single files: BFL keys (bare or ComfyUI's `model.diffusion_model.` prefix, also inside all-in-one
checkpoints) are converted by `flux_keys`; diffusers-keyed files load directly. Folders: a diffusers
pipeline folder (its `transformer/`) or a transformer folder, built from the folder's own config.json. For
single files the config is inferred from the shapes and replaced by the shipped config of the detected
variant when they agree. Weight dtypes (UNETLoader's `weight_dtype`): engine/models/common/fp8.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.common.build import load_folder_weights, model_subfolder
from engine.models.common.configs import load_config
from engine.models.common.detect import Component, detect_components, detect_flux_variant, require_component
from engine.models.common.fp8 import WEIGHT_DTYPES, check_weight_dtype
from engine.models.common.handles import FluxModel
from engine.models.common.safetensors_io import ModelFileError, SafetensorsFile, open_safetensors
from engine.models.common.transformer_family import build_transformer, folder_transformer_config, transformer_config
from engine.models.flux1.keys import FLUX1, FluxKeyError, bfl_to_diffusers
from engine.models.flux1.variants import flux_model_handle, variant_info
from engine.models.quant.gguf_file import is_gguf, open_gguf, text_metadata
from engine.models.quant.gguf_file import transformer_state as gguf_transformer_state
from engine.models.quant.tensors import pack_scaled_fp8

_NOT_TRANSFORMER = ("text_encoders.", "vae.", "first_stage_model.", "cond_stage_model.")
_SHAPE_FIELDS = ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                 "joint_attention_dim", "pooled_projection_dim", "guidance_embeds")


def load_flux_transformer(path: str | Path, weight_dtype: str = "default", compute_dtype: Any = None,
                          variant: str | None = None) -> FluxModel:
    """A MODEL handle for the FLUX.1 transformer in `path` (file or diffusers folder).

    `compute_dtype`: torch dtype to run in; None keeps the file's float dtype (bfloat16 for fp8 files).
    `variant`: override detection ("dev", "schnell", "fill", "kontext").
    """
    check_weight_dtype(weight_dtype)
    path = Path(path)
    config = None
    if path.is_dir():
        state, name_hint, metadata, source, config = _read_folder(path)
    elif is_gguf(path):
        state, name_hint, metadata, source = _read_gguf(path)
    else:
        state, name_hint, metadata, source = _read_file(path)
    return build_flux_model(state, source=source, name_hint=name_hint, metadata=metadata,
                            weight_dtype=weight_dtype, compute_dtype=compute_dtype, variant=variant, config=config)


def _read_file(path: Path) -> tuple[dict[str, Any], str, dict[str, str], Path]:
    sf = open_safetensors(path)
    comp = require_component(detect_components(sf), "transformer")
    return transformer_state(sf, comp), path.name, sf.metadata, path


def _read_gguf(path: Path) -> tuple[dict[str, Any], str, dict[str, str], Path]:
    """A GGUF transformer (UnetLoaderGGUF): its quantized weights stay as GGUF blocks (engine/models/quant)."""
    gf = open_gguf(path)
    state, layout = gguf_transformer_state(gf, "flux1")
    return (_to_diffusers(state, path, "") if layout == "bfl" else state), path.name, text_metadata(gf), path


def transformer_state(sf: SafetensorsFile, comp: Component) -> dict[str, Any]:
    """The diffusers-keyed transformer tensors of component `comp` of file `sf`."""
    if comp.prefix:
        state = sf.load(comp.prefix)
    else:  # a bare file: everything except known non-transformer entries
        state = sf.load(keys=[k for k in sf.keys() if not k.startswith(_NOT_TRANSFORMER)])
    # ComfyUI "fp8_scaled" files: each weight travels with its layer's scale (kept fp8, scaled per layer)
    state = pack_scaled_fp8(state)
    return state if comp.layout != "bfl" else _to_diffusers(state, sf.path, comp.prefix)


def _to_diffusers(state: dict[str, Any], source: Path, prefix: str) -> dict[str, Any]:
    try:
        return bfl_to_diffusers(state)
    except FluxKeyError as exc:
        raise ModelFileError(source, f"unknown FLUX transformer tensor {prefix}{exc.args[0]} "
                                     "(not a FLUX.1 layout this loader knows)") from None


def _read_folder(path: Path) -> tuple[dict[str, Any], str, dict[str, str], Path, dict[str, Any]]:
    folder = model_subfolder(path, "transformer")
    config = folder_transformer_config(FLUX1, folder)
    hints = [path.name]
    index = path / "model_index.json"
    if index.is_file():
        try:
            hints.append(index.read_text(encoding="utf-8"))  # e.g. FluxKontextPipeline
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFileError(index, f"cannot read it: {exc}") from None
    return load_folder_weights(folder), " ".join(hints), {}, folder, config


def build_flux_model(state: dict[str, Any], source: str | Path, name_hint: str = "",
                     metadata: dict[str, str] | None = None, weight_dtype: str = "default",
                     compute_dtype: Any = None, variant: str | None = None,
                     config: dict[str, Any] | None = None) -> FluxModel:
    """FluxModel from a diffusers-keyed state dict (shared by the file, folder and checkpoint loaders).

    `config`: a folder's own config.json, used as it is; None (single files) infers it from the shapes."""
    if variant is None:
        variant = detect_flux_variant({k: tuple(v.shape) for k, v in state.items()}, name_hint, metadata, source)
    else:
        variant_info(variant)
    if config is None:
        config = shipped_config_if_matching(transformer_config(FLUX1, state, source), variant)
    model = build_transformer(FLUX1, config, state, source, weight_dtype, compute_dtype)
    return flux_model_handle(model, variant, source=str(source))


def shipped_config_if_matching(inferred: dict[str, Any], variant: str) -> dict[str, Any]:
    """The shipped config of `variant` when every shape-derived field agrees; otherwise the inferred one."""
    shipped = load_config(variant_info(variant).config)
    if all(shipped.get(f) == inferred.get(f) for f in _SHAPE_FIELDS) and \
            (shipped.get("out_channels") or shipped["in_channels"]) == inferred["out_channels"]:
        return shipped
    return inferred


__all__ = ["WEIGHT_DTYPES", "load_flux_transformer", "build_flux_model", "shipped_config_if_matching",
           "transformer_state"]
