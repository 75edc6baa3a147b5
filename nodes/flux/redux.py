"""FLUX Redux: CLIPVisionLoader, CLIPVisionEncode, StyleModelLoader, StyleModelApply.

An image is encoded by a SigLIP vision tower; the Redux embedder turns its features into tokens appended to
the prompt's T5 tokens (engine/models/redux/siglip.py, engine/models/redux/embedder.py, engine/sampling/redux.py).
Chain several StyleModelApply nodes to combine several images.
"""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Float, Socket, node
from engine.core.types import CLIP_VISION, CLIP_VISION_OUTPUT, CONDITIONING, IMAGE, STYLE_MODEL
from engine.models.redux.embedder import load_style_model, style_tokens
from engine.models.redux.siglip import encode_images, load_clip_vision

from .common import memory
from .loaders import _folders, _lister


@node("CLIPVisionLoader", category="loaders", display_name="Load CLIP Vision",
      inputs=[Combo("clip_name", _lister("clip_vision", include_dirs=True))], outputs=[CLIP_VISION],
      description="Loads a SigLIP vision model (single file or transformers folder) for Redux.")
def clip_vision_loader(ctx: Any, clip_name: str):
    return (load_clip_vision(_folders(ctx).model_path("clip_vision", clip_name)),)


@node("CLIPVisionEncode", category="conditioning", display_name="CLIP Vision Encode",
      inputs=[Socket("clip_vision", CLIP_VISION), Socket("image", IMAGE), Combo("crop", ("center", "none"))],
      outputs=[CLIP_VISION_OUTPUT],
      description="Encodes images with the vision model (center: crop to a square first; none: stretch).")
def clip_vision_encode(ctx: Any, clip_vision: Any, image: Any, crop: str):
    return (encode_images(clip_vision, image, crop, memory(ctx)),)


@node("StyleModelLoader", category="loaders", display_name="Load Style Model",
      inputs=[Combo("style_model_name", _lister("style_models", include_dirs=True))], outputs=[STYLE_MODEL],
      description="Loads a FLUX Redux image embedder.")
def style_model_loader(ctx: Any, style_model_name: str):
    return (load_style_model(_folders(ctx).model_path("style_models", style_model_name)),)


@node("StyleModelApply", category="conditioning/style_model", display_name="Apply Style Model",
      inputs=[Socket("conditioning", CONDITIONING), Socket("style_model", STYLE_MODEL),
              Socket("clip_vision_output", CLIP_VISION_OUTPUT),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.001),
              Combo("strength_type", ("multiply", "attn_bias"))],
      outputs=[CONDITIONING],
      description="Appends the image's Redux tokens to the prompt; strength scales them (multiply) or biases "
                  "attention towards them (attn_bias).")
def style_model_apply(ctx: Any, conditioning: list, style_model: Any, clip_vision_output: Any, strength: float,
                      strength_type: str):
    from engine.sampling.redux import apply_style_tokens  # noqa: PLC0415 - redux loads torch on first use

    tokens = style_tokens(style_model, clip_vision_output, memory(ctx))
    return (apply_style_tokens(conditioning, tokens, float(strength), strength_type),)


NODES = [clip_vision_loader, clip_vision_encode, style_model_loader, style_model_apply]
