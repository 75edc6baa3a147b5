"""ExportSegmenter: a SEGMENTER to ONNX, TorchScript or pt2 files (fp32, fp16, int8) under
models/segmentation/, one file per input size, which Mask2FormerLoader then lists and runs."""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.core.folders import contained_path
from engine.core.schema import Combo, NodeResult, Output, Socket, String, node
from engine.core.types import SEGMENTER, STRING
from engine.models.segmentation.export import ExportError, ExportRequest, export_segmenter, parse_sizes
from engine.models.segmentation.exported import load_exported_segmenter

FORMATS = ["onnx", "torchscript", "pt2"]
DTYPES = ["fp32", "fp16", "int8"]
ONNX_EXPORTERS = ["torchscript", "dynamo"]


@node("ExportSegmenter", category="segmentation/training", display_name="Export Segmenter (ONNX / TorchScript)",
      inputs=[Socket("segmenter", SEGMENTER),
              Combo("format", FORMATS, default="onnx",
                    tooltip="onnx: runs in ONNX Runtime (no PyTorch model code); torchscript / pt2 (torch.export): run "
                            "with torch alone"),
              Combo("dtype", DTYPES, default="fp32",
                    tooltip="fp16 for GPU targets; int8 (ONNX only) by ONNX Runtime dynamic quantization, for CPUs"),
              String("sizes", "512x512",
                     tooltip="Input sizes HEIGHTxWIDTH (multiples of 32), separated by spaces or commas: one file "
                             "each; an exported graph runs at its own size only"),
              String("output_name", "exported-segmenter",
                     tooltip="File name stem under models/segmentation/ (a subfolder may be given: a/b)"),
              Combo("onnx_exporter", ONNX_EXPORTERS, default="torchscript", optional=True,
                    tooltip="torchscript: torch's TorchScript-based ONNX exporter (fast); dynamo: the torch.export-"
                            "based one (slow to export)")],
      outputs=[Output(SEGMENTER, name="segmenter"), Output(STRING, name="model_name")],
      output_node=True,
      description="Exports a Mask2Former segmenter for deployment. Each file carries its labels, preprocessing and "
                  "input size, and is checked against the PyTorch model after export.")
def export_segmenter_node(ctx: Any, segmenter: Any, format: str, dtype: str, sizes: str, output_name: str,
                          onnx_exporter: str = "torchscript"):
    if getattr(segmenter, "model", None) is None:
        raise ExportError("this segmenter is already an exported graph; export from a PyTorch Mask2Former "
                          "(Mask2FormerLoader on a folder or .safetensors file, or TrainSegmenter)")
    request = ExportRequest(format=format, dtypes=(dtype,), sizes=parse_sizes(sizes), exporter=onnx_exporter)
    request.check(segmenter.preprocessing.size_divisor)  # every size is checked before the first file is written
    root = ctx.folders.models_dir / "segmentation"
    root.mkdir(parents=True, exist_ok=True)
    target = contained_path(root, output_name.strip().strip("/") or "exported-segmenter")
    records = []
    for done, size in enumerate(request.sizes):
        records += export_segmenter(segmenter, target.parent, target.name,
                                    dataclasses.replace(request, sizes=(size,)))
        ctx.progress(done + 1, len(request.sizes))
    names = [r.path.relative_to(root).as_posix() for r in records]
    lines = [f"{name}: logits within {r.max_relative_error:.2e} of PyTorch, labels {100 * r.label_agreement:.2f}% "
             f"equal" for name, r in zip(names, records)]
    return NodeResult(outputs=(load_exported_segmenter(records[0].path), names[0]), ui={"text": lines})


NODES = [export_segmenter_node]
