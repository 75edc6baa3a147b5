"""SemanticSegment: IMAGE (or a list of IMAGEs of different sizes) -> SEGMENTATION, one per input IMAGE."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Int, Output, Socket, node
from engine.core.types import IMAGE, SEGMENTATION, SEGMENTER
from engine.memory.manager import default_device

PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
BATCHING = ["group", "pad"]


def _single(value: Any, name: str) -> Any:
    """Widgets arrive as lists on an input-list node; a request has one value per option."""
    if isinstance(value, list):
        if any(v is not value[0] and v != value[0] for v in value):
            raise ValueError(f"{name}: one value expected for the whole request, got {value}")
        return value[0]
    return value


def resolve_precision(precision: str, device: Any) -> Any:
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision in ("fp16", "bf16") and device.type != "cuda":
        raise ValueError(f"precision {precision} needs a CUDA device; this run is on {device.type} (use fp32 or "
                         "auto)")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@node("SemanticSegment", category="segmentation", display_name="Semantic Segment (Mask2Former)",
      inputs=[Socket("segmenter", SEGMENTER), Socket("image", IMAGE),
              Int("resolution", 0, min=0, max=4096, step=32,
                  tooltip="Short side the images are resized to before the model (0: the model's own setting, "
                          "640 for Swin-L ADE20K); the long side is capped in proportion"),
              Combo("precision", PRECISIONS, default="auto",
                    tooltip="auto: fp16 on a GPU, fp32 on the CPU; fp16/bf16 need a GPU"),
              Int("batch_size", 8, min=1, max=64, tooltip="Images per forward pass"),
              Combo("batching", BATCHING, default="group",
                    tooltip="group: images of different sizes run in separate batches (exact); pad: pad a mixed "
                            "batch to its largest size and crop each result (faster, approximate)")],
      outputs=[Output(SEGMENTATION, is_list=True)],
      is_input_list=True,
      description="Mask2Former semantic segmentation: a label map at each image's own resolution, per-class "
                  "scores and the class names. Images of different sizes (an IMAGE list) are segmented in one "
                  "request and give one SEGMENTATION each.")
def semantic_segment(ctx: Any, segmenter: Any, image: list, resolution: Any = 0, precision: Any = "auto",
                     batch_size: Any = 8, batching: Any = "group"):
    from engine.models.segmentation.pipeline import segment  # noqa: PLC0415 - loads numpy

    segmenter = _single(segmenter, "segmenter")
    images = image if isinstance(image, list) else [image]
    device = default_device()
    dtype = resolve_precision(_single(precision, "precision"), device)
    results = segment(segmenter, images, resolution=int(_single(resolution, "resolution")),
                      batch_size=int(_single(batch_size, "batch_size")), mode=_single(batching, "batching"),
                      device=device, dtype=dtype, channels_last=device.type == "cuda",
                      progress=lambda done, total: ctx.progress(done, total))
    return (results,)


NODES = [semantic_segment]
