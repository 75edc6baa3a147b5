"""Tiny zoo, structural control part: FLUX.1 Depth and Canny transformers, a control LoRA, a union ControlNet,
a plain ControlNet and a tiny Depth Anything V2.

Written by `write_control_zoo` (called from `engine.zoo.writer.write_tiny_zoo`):

    diffusion_models/flux1-{depth,canny}-dev-tiny.safetensors   128-input-channel transformers, BFL keys
    diffusers/flux1-{depth,canny}-tiny-transformer/              the same as diffusers transformer folders

The control columns of `img_in` (the control latent's 64 packed channels) are scaled up so that a changed
control image clearly moves the image (tests/parity/test_flux_control_parity.py checks >= 0.01).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.common.safetensors_io import save_safetensors
from engine.models.flux1.keys import diffusers_to_bfl
from engine.zoo.conditioning import _config, _plain_config, _save_json
from engine.zoo.flux1_tiny import make_sensitive_, seeded_init_

CONTROL_KINDS = ("depth", "canny")
CONTROL_INPUT_GAIN = 4.0  # control-latent columns of img_in, so the control image matters on random weights


def tiny_control_transformer(kind: str = "depth", seed: int = 0) -> Any:
    """FLUX.1 Depth or Canny dev, tiny: 64 latent + 64 control-latent input channels."""
    import torch
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**_config(in_channels=128, out_channels=64))
    model = make_sensitive_(seeded_init_(model, seed * 1000 + 40 + CONTROL_KINDS.index(kind)))
    with torch.no_grad():
        model.x_embedder.weight[:, 64:].mul_(CONTROL_INPUT_GAIN)
    return model.eval()


def write_control_zoo(models_dir: str | Path, seed: int = 0, metadata: dict[str, str] | None = None) -> list[Path]:
    """Write this module's part of the tiny zoo; returns the files written."""
    models_dir = Path(models_dir)
    meta = dict(metadata or {})
    written: list[Path] = []
    for kind in CONTROL_KINDS:
        model = tiny_control_transformer(kind, seed)
        state = model.state_dict()
        written.append(save_safetensors(diffusers_to_bfl(state),
                                        models_dir / f"diffusion_models/flux1-{kind}-dev-tiny.safetensors",
                                        dict(meta, **{"fluxgraph.variant": kind})))
        folder = models_dir / f"diffusers/flux1-{kind}-tiny-transformer"
        written.append(_save_json({**_plain_config(model.config), "_class_name": "FluxTransformer2DModel"},
                                  folder / "config.json"))
        written.append(save_safetensors(state, folder / "diffusion_pytorch_model.safetensors"))
    return written
