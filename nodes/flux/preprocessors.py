"""Control-image preprocessors: Canny (ComfyUI's node, on kornia) and DepthAnythingV2Preprocessor (the
comfyui_controlnet_aux node's name and inputs, on transformers' Depth Anything V2 from models/depth/).
The maths lives in engine/sampling/preprocess.py, loading in engine/models/control/depth_anything.py."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Float, Int, Socket, node
from engine.core.types import IMAGE

from .common import MAX_RESOLUTION, memory
from .loaders import _folders, _lister


@node("Canny", category="image/preprocessors",
      inputs=[Socket("image", IMAGE), Float("low_threshold", 0.4, min=0.01, max=0.99, step=0.01),
              Float("high_threshold", 0.8, min=0.01, max=0.99, step=0.01)],
      outputs=[IMAGE], description="Canny edges of the image (white edges on black), for Canny models and "
                                   "ControlNets.")
def canny(ctx: Any, image: Any, low_threshold: float, high_threshold: float):
    from engine.sampling.preprocess import canny_edges  # noqa: PLC0415 - loads torch and kornia

    return (canny_edges(image, float(low_threshold), float(high_threshold)),)


@node("DepthAnythingV2Preprocessor", category="ControlNet Preprocessors/Normal and Depth Estimators",
      inputs=[Socket("image", IMAGE), Combo("ckpt_name", _lister("depth", include_dirs=True)),
              Int("resolution", 512, min=64, max=MAX_RESOLUTION, step=64, optional=True)],
      outputs=[IMAGE], description="A depth map of the image (near is bright) by Depth Anything V2 from "
                                   "models/depth (a transformers folder or a single file); the model sees the "
                                   "image with its short side at `resolution` (rounded to a multiple of 14).")
def depth_anything_v2(ctx: Any, image: Any, ckpt_name: str, resolution: int = 512):
    from engine.models.control.depth_anything import load_depth_model  # noqa: PLC0415 - loads transformers
    from engine.sampling.preprocess import estimate_depth  # noqa: PLC0415 - loads torch

    model = load_depth_model(_folders(ctx).model_path("depth", ckpt_name))
    return (estimate_depth(model, image, int(resolution), memory(ctx)),)


NODES = [canny, depth_anything_v2]
