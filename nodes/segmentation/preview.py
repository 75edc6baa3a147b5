"""SegmentationPreview: the image with each class in its own colour, and a legend of the classes present."""

from __future__ import annotations

import colorsys
from typing import Any

from engine.core.schema import Boolean, Float, NodeResult, Output, Socket, node
from engine.core.types import IMAGE, SEGMENTATION

ROW_HEIGHT = 14
SWATCH = 10


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, well-spread colour per class id (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    lightness = 0.45 + 0.15 * ((class_id // 7) % 2)
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return int(r * 255), int(g * 255), int(b * 255)


def palette(count: int) -> Any:
    import torch

    return torch.tensor([class_colour(i) for i in range(count)], dtype=torch.float32) / 255.0


def overlay(images: Any, label_map: Any, count: int, opacity: float) -> Any:
    colours = palette(count)[label_map.long()]  # B×H×W×3
    return images[..., :3] * (1 - opacity) + colours * opacity


def legend_rows(names: list[str], width: int) -> tuple[int, int]:
    """(columns, rows) of a legend of these names in `width` pixels."""
    column_width = max(60, 8 + SWATCH + 6 * max((len(n) for n in names), default=4))
    columns = max(1, width // column_width)
    return columns, -(-len(names) // columns)


def draw_legend(entries: list[tuple[int, str]], width: int, rows: int) -> Any:
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    panel = Image.new("RGB", (width, rows * ROW_HEIGHT + 4), (24, 24, 24))
    draw = ImageDraw.Draw(panel)
    columns, _ = legend_rows([n for _, n in entries], width)
    column_width = width // columns
    for k, (class_id, name) in enumerate(entries):
        x = (k % columns) * column_width + 4
        y = (k // columns) * ROW_HEIGHT + 4
        draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=class_colour(class_id))
        draw.text((x + SWATCH + 4, y - 1), name, fill=(235, 235, 235))
    return torch.from_numpy(np.asarray(panel).astype("float32") / 255.0)


@node("SegmentationPreview", category="segmentation", display_name="Segmentation Preview",
      inputs=[Socket("image", IMAGE), Socket("segmentation", SEGMENTATION),
              Float("opacity", 0.5, min=0.0, max=1.0, step=0.05),
              Boolean("legend", True, tooltip="Add a legend of the classes present below the image")],
      outputs=[Output(IMAGE)],
      description="Colours each class over the image and lists the classes present.")
def segmentation_preview(ctx: Any, image: Any, segmentation: Any, opacity: float = 0.5, legend: bool = True):
    import torch

    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"SegmentationPreview: IMAGE must be B×H×W×C (C = 1, 3 or 4), got {tuple(image.shape)}")
    if tuple(image.shape[1:3]) != segmentation.size or image.shape[0] != segmentation.batch_size:
        raise ValueError(f"SegmentationPreview: image batch {image.shape[0]}×{tuple(image.shape[1:3])} does not "
                         f"match the segmentation {segmentation.batch_size}×{segmentation.size}")
    rgb = image.expand(*image.shape[:-1], 3) if image.shape[-1] == 1 else image[..., :3]
    out = overlay(rgb.float().cpu(), segmentation.label_map, len(segmentation.names), float(opacity))
    if not legend:
        return (out,)
    width = out.shape[2]
    per_image = [[(c, segmentation.names[c]) for c in segmentation.present_classes(i)]
                 for i in range(out.shape[0])]
    rows = max(legend_rows([n for _, n in entries], width)[1] for entries in per_image)
    panels = torch.stack([draw_legend(entries, width, rows) for entries in per_image])
    # The legend also goes to the editors as data (fluxgraph's extension lists it under the node).
    present = sorted({entry for entries in per_image for entry in entries})
    ui = {"legend": [{"label": name, "color": list(class_colour(c))} for c, name in present]}
    return NodeResult(outputs=(torch.cat([out, panels], dim=1),), ui=ui)


NODES = [segmentation_preview]
