"""Mask2FormerLoader: a transformers folder or a single safetensors file from models/segmentation/ -> SEGMENTER."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Output, node
from engine.core.types import SEGMENTER
from engine.memory.manager import default_device
from engine.models.segmentation.exported import EXPORT_SUFFIXES, list_exported_segmenters, load_exported_segmenter
from engine.models.segmentation.mask2former import list_segmenters, load_segmenter


def _segmenter_choices(folders: Any) -> list[str]:
    if folders is None:
        return []
    return sorted(set(list_segmenters(folders)) | set(list_exported_segmenters(folders)))


@node("Mask2FormerLoader", category="segmentation", display_name="Load Mask2Former",
      inputs=[Combo("model_name", _segmenter_choices,
                    tooltip="A transformers folder (config.json + model.safetensors), a single .safetensors "
                            "file, or an exported .onnx / .pt / .pt2 file under models/segmentation/")],
      outputs=[Output(SEGMENTER)],
      description="Loads a Mask2Former semantic segmenter (Swin backbone) with its class names.")
def load_mask2former(ctx: Any, model_name: str):
    path = ctx.folders.model_path("segmentation", model_name)
    if path.is_file() and path.suffix.lower() in EXPORT_SUFFIXES:  # ONNX Runtime / TorchScript / pt2 graph
        return (load_exported_segmenter(path, default_device()),)
    return (load_segmenter(path),)


NODES = [load_mask2former]
