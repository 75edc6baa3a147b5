"""The tiny zoo's quantized files, written by the project itself from the tiny FLUX.1 dev weights:

    diffusion_models/flux1-dev-tiny-fp8_e4m3fn.safetensors   block matrices in fp8 e4m3fn (as flux1-dev-fp8)
    diffusion_models/flux1-dev-tiny-fp8_scaled.safetensors   ComfyUI scaled fp8: `scaled_fp8` marker, one
                                                             `scale_weight` (and `scale_input`) per block
                                                             matrix; the other layers stay float ("fp8mixed")
    diffusion_models/flux1-dev-tiny-Q8_0.gguf                GGUF, BFL keys, Q8_0 (as the GGUF conversion
    diffusion_models/flux1-dev-tiny-Q4_K.gguf                tools write them; Q4_K where rows split into
                                                             256-weight blocks, Q8_0 / F16 elsewhere)
    text_encoders/t5xxl-tiny-Q8_0.gguf                       the tiny T5 encoder, llama.cpp names

The widths of the tiny models are small, so a Q4_K file holds Q4_K only in the matrices 256 wide (the MLP
outputs) and Q8_0 in the others: the same fall-back the real conversion tools apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.common.safetensors_io import save_safetensors
from engine.models.quant.gguf_quantize import Q4_K, Q8_0
from engine.models.quant.gguf_write import save_gguf, t5_to_llama_cpp

BLOCKS = ("double_blocks.", "single_blocks.")


def fp8_state(bfl: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {k: (v.to(torch.float8_e4m3fn) if k.startswith(BLOCKS) and v.ndim == 2 else v) for k, v in bfl.items()}


def scaled_fp8_state(bfl: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's scaled fp8 layout: weight / scale stored in e4m3fn, scale = |weight|max / 448 (float32)."""
    import torch

    out: dict[str, Any] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in bfl.items():
        if key.startswith(BLOCKS) and value.ndim == 2 and key.endswith(".weight"):
            scale = (value.float().abs().max() / 448.0).reshape(1)
            layer = key[: -len(".weight")]
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[f"{layer}.scale_weight"] = scale
            out[f"{layer}.scale_input"] = torch.ones(1)  # present in real files; only fp8 matmul reads it
        else:
            out[key] = value
    return out


def write_quantized_zoo(models_dir: Path, bfl_dev: dict[str, Any], t5_state: dict[str, Any],
                        meta: dict[str, str]) -> list[Path]:
    """Write the files listed in the module docstring from the dev transformer's BFL state and the T5's."""
    dev_meta = dict(meta, **{"fluxgraph.variant": "dev"})
    diffusion = models_dir / "diffusion_models"
    return [
        save_safetensors(fp8_state(bfl_dev), diffusion / "flux1-dev-tiny-fp8_e4m3fn.safetensors", dev_meta),
        save_safetensors(scaled_fp8_state(bfl_dev), diffusion / "flux1-dev-tiny-fp8_scaled.safetensors", dev_meta),
        save_gguf(bfl_dev, diffusion / "flux1-dev-tiny-Q8_0.gguf", "flux", Q8_0, dev_meta),
        save_gguf(bfl_dev, diffusion / "flux1-dev-tiny-Q4_K.gguf", "flux", Q4_K, dev_meta),
        save_gguf(t5_to_llama_cpp(t5_state), models_dir / "text_encoders/t5xxl-tiny-Q8_0.gguf", "t5encoder", Q8_0,
                  meta),
    ]
