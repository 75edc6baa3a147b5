"""Mask2FormerLoader: a transformers folder or a single safetensors file from models/segmentation/ -> SEGMENTER."""

from __future__ import annotations

from typing import Any

from engine.schema import Combo, Output, node
from engine.types import SEGMENTER


def _segmenter_choices(folders: Any) -> list[str]:
    if folders is None:
        return []
    from engine.models.mask2former import list_segmenters  # stdlib-only module: /object_info stays fast

    return list_segmenters(folders)


@node("Mask2FormerLoader", category="segmentation", display_name="Load Mask2Former",
      inputs=[Combo("model_name", _segmenter_choices,
                    tooltip="A transformers folder (config.json + model.safetensors) or a single .safetensors "
                            "file under models/segmentation/")],
      outputs=[Output(SEGMENTER)],
      description="Loads a Mask2Former semantic segmenter (Swin backbone) with its class names.")
def load_mask2former(ctx: Any, model_name: str):
    from engine.models.mask2former import load_segmenter

    return (load_segmenter(ctx.folders.model_path("segmentation", model_name)),)


NODES = [load_mask2former]
