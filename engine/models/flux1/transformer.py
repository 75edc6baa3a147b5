"""Load a FLUX.1 transformer into diffusers' FluxTransformer2DModel, from any supported layout.

Single files: BFL keys (bare or ComfyUI's `model.diffusion_model.` prefix, also inside all-in-one
checkpoints) are converted by `flux_keys`; diffusers-keyed files load directly. Folders: a diffusers
pipeline folder (its `transformer/`) or a transformer folder. The config is inferred from the shapes and
replaced by the shipped config of the detected variant when they agree.

Weight dtypes (UNETLoader's `weight_dtype`): "default" keeps the file's dtype (fp8 files stay fp8);
"fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2" store the Linear weights of the transformer blocks (nearly all
the bytes) in that fp8 type. fp8 weights are upcast to the compute dtype inside each Linear's forward, which
works on any device including CPU; "_fast" is accepted for compatibility and computes the same way (no
fp8 matmul kernels are used). Embedders, norms and the output layer stay in the compute dtype, so
`transformer.dtype` reports the compute dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.common.build import instantiate, load_folder_weights, model_subfolder, read_folder_config
from engine.models.common.configs import load_config
from engine.models.common.detect import Component, detect_components, detect_flux_variant, require_component
from engine.models.flux1.keys import FluxKeyError, bfl_to_diffusers, infer_diffusers_config
from engine.models.common.handles import FluxModel
from engine.models.common.safetensors_io import ModelFileError, SafetensorsFile, dequantize_scaled_fp8, open_safetensors
from engine.models.flux1.variants import flux_model_handle, variant_info

_NOT_TRANSFORMER = ("text_encoders.", "vae.", "first_stage_model.", "cond_stage_model.")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
_SHAPE_FIELDS = ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                 "joint_attention_dim", "pooled_projection_dim", "guidance_embeds")


def load_flux_transformer(path: str | Path, weight_dtype: str = "default", compute_dtype: Any = None,
                          variant: str | None = None) -> FluxModel:
    """A MODEL handle for the FLUX.1 transformer in `path` (file or diffusers folder).

    `compute_dtype`: torch dtype to run in; None keeps the file's float dtype (bfloat16 for fp8 files).
    `variant`: override detection ("dev", "schnell", "fill", "kontext").
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {list(WEIGHT_DTYPES)}")
    path = Path(path)
    if path.is_dir():
        state, name_hint, metadata, source = _read_folder(path)
    else:
        state, name_hint, metadata, source = _read_file(path)
    return build_flux_model(state, source=source, name_hint=name_hint, metadata=metadata,
                            weight_dtype=weight_dtype, compute_dtype=compute_dtype, variant=variant)


def _read_file(path: Path) -> tuple[dict[str, Any], str, dict[str, str], Path]:
    sf = open_safetensors(path)
    comp = require_component(detect_components(sf), "transformer")
    return transformer_state(sf, comp), path.name, sf.metadata, path


def transformer_state(sf: SafetensorsFile, comp: Component) -> dict[str, Any]:
    """The diffusers-keyed transformer tensors of component `comp` of file `sf`."""
    if comp.prefix:
        state = sf.load(comp.prefix)
    else:  # a bare file: everything except known non-transformer entries
        state = sf.load(keys=[k for k in sf.keys() if not k.startswith(_NOT_TRANSFORMER)])
    if "scaled_fp8" in state or any(k.endswith(".scale_weight") for k in state):
        # ComfyUI "fp8_scaled" files: fold the per-layer scales in (weight_dtype may re-quantise afterwards).
        state = dequantize_scaled_fp8(state, _default_compute_dtype(state))
    if comp.layout != "bfl":
        return state
    try:
        return bfl_to_diffusers(state)
    except FluxKeyError as exc:
        raise ModelFileError(sf.path, f"unknown FLUX transformer tensor {comp.prefix}{exc.args[0]} "
                                      "(not a FLUX.1 layout this loader knows)") from None


def _read_folder(path: Path) -> tuple[dict[str, Any], str, dict[str, str], Path]:
    folder = model_subfolder(path, "transformer")
    config = read_folder_config(folder)
    if config.get("_class_name") not in (None, "FluxTransformer2DModel"):
        raise ModelFileError(folder, f"holds a {config.get('_class_name')}, expected a FluxTransformer2DModel")
    hints = [path.name]
    index = path / "model_index.json"
    if index.is_file():
        hints.append(index.read_text(encoding="utf-8"))  # e.g. FluxKontextPipeline
    return load_folder_weights(folder), " ".join(hints), {}, folder


def build_flux_model(state: dict[str, Any], source: str | Path, name_hint: str = "",
                     metadata: dict[str, str] | None = None, weight_dtype: str = "default",
                     compute_dtype: Any = None, variant: str | None = None) -> FluxModel:
    """FluxModel from a diffusers-keyed state dict (shared by the file, folder and checkpoint loaders)."""
    from diffusers import FluxTransformer2DModel

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        config = infer_diffusers_config(shapes)
    except FluxKeyError as exc:
        raise ModelFileError(source, f"not a FLUX.1 transformer: tensor {exc.args[0]!r} is missing") from None
    except ValueError as exc:
        raise ModelFileError(source, str(exc)) from None
    if variant is None:
        variant = detect_flux_variant(shapes, name_hint, metadata, source)
    else:
        variant_info(variant)
    config = shipped_config_if_matching(config, variant)
    compute = compute_dtype if compute_dtype is not None else _default_compute_dtype(state)
    init = {k: v for k, v in config.items() if not k.startswith("_")}
    fp8 = _fp8_dtype(weight_dtype, state)
    model = instantiate(lambda: FluxTransformer2DModel(**init), state, source, dtype=compute if fp8 is None else None)
    if fp8 is not None:
        _store_blocks_in_fp8(model, fp8, compute)
    return flux_model_handle(model, variant, source=str(source))


def shipped_config_if_matching(inferred: dict[str, Any], variant: str) -> dict[str, Any]:
    """The shipped config of `variant` when every shape-derived field agrees; otherwise the inferred one."""
    shipped = load_config(variant_info(variant).config)
    if all(shipped.get(f) == inferred.get(f) for f in _SHAPE_FIELDS) and \
            (shipped.get("out_channels") or shipped["in_channels"]) == inferred["out_channels"]:
        return shipped
    return inferred


def _default_compute_dtype(state: dict[str, Any]) -> Any:
    import torch

    floats = [v.dtype for v in state.values() if v.is_floating_point() and v.dtype not in _fp8_torch_types()]
    if not floats:
        return torch.bfloat16
    return max(set(floats), key=floats.count)


def _fp8_torch_types() -> tuple[Any, ...]:
    import torch

    return (torch.float8_e4m3fn, torch.float8_e5m2)


def _fp8_dtype(weight_dtype: str, state: dict[str, Any]) -> Any:
    import torch

    if weight_dtype.startswith("fp8_e4m3fn"):
        return torch.float8_e4m3fn
    if weight_dtype == "fp8_e5m2":
        return torch.float8_e5m2
    stored_fp8 = [v.dtype for v in state.values() if v.dtype in _fp8_torch_types()]
    return max(set(stored_fp8), key=stored_fp8.count) if stored_fp8 else None


class Fp8Linear:
    """Mixin forward for nn.Linear whose weight is stored in fp8: upcast to the input's dtype per call."""

    def forward(self, x: Any) -> Any:  # noqa: D401 - nn.Linear signature
        import torch.nn.functional as F

        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def _store_blocks_in_fp8(model: Any, fp8: Any, compute: Any) -> None:
    """Block Linear weights -> fp8 (upcast on use); every other tensor -> compute dtype."""
    from torch import nn

    from engine.memory.mapped import release_pages

    fp8_params: set[int] = set()
    fp8_linear_cls: dict[type, type] = {}
    for name, module in model.named_modules():
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and isinstance(module, nn.Linear):
            source = module.weight.data
            module.weight = nn.Parameter(module.weight.to(fp8), requires_grad=False)
            release_pages([source])  # a mapped source's pages go back at once (one tensor at a time)
            fp8_params.add(id(module.weight))
            cls = type(module)
            if cls not in fp8_linear_cls:
                fp8_linear_cls[cls] = type(f"Fp8{cls.__name__}", (Fp8Linear, cls), {})
            module.__class__ = fp8_linear_cls[cls]
    for param in model.parameters():
        if id(param) not in fp8_params and param.dtype != compute:
            source = param.data
            param.data = param.data.to(compute)
            release_pages([source])


__all__ = ["WEIGHT_DTYPES", "load_flux_transformer", "build_flux_model", "shipped_config_if_matching",
           "transformer_state"]
