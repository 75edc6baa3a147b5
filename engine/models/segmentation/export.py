"""Export a Mask2Former segmenter to ONNX, TorchScript or `torch.export` (pt2), in fp32, fp16 or int8.

One file per input size: the deformable-attention pixel decoder bakes its feature-map sizes into any traced
or exported graph (declaring height and width dynamic either fails at other sizes or silently gives wrong
masks), so only the batch dimension is dynamic and each file records the one size it accepts; the loader
refuses others with a clear error. Every file carries what running it needs: the label names, the
preprocessing settings, its input size, its format and dtype (ONNX metadata_props key `fluxgraph`; an extra
file `fluxgraph.json` in TorchScript and pt2 archives).

The graph's input is the normalised `pixel_values` (B×3×H×W float32) and its outputs are the class and mask
logits (float32) — the same tensors the PyTorch model gives the inference pipeline, so pre- and
post-processing stay shared. fp16 files keep float32 inputs and outputs.

- ONNX: the TorchScript-based exporter by default (seconds; exact, batch dynamic), or torch's dynamo exporter
  (`exporter="dynamo"`: minutes; needs eager attention, which is switched on for the export copy).
  fp16 by onnxruntime's `convert_float_to_float16(keep_io_types=True)` (the recipe whose files load in ONNX
  Runtime on the CPU); int8 by ONNX Runtime dynamic quantization of the MatMul weights of the backbone and
  pixel decoder (where the time goes; see `int8_nodes`), Conv, attention products and the heads staying float.
- TorchScript: `torch.jit.trace` (scripting fails on this model). pt2: `torch.export` with a dynamic batch.
  Both in fp32 or fp16 (weights cast); int8 is ONNX Runtime's and refused for them.

Each export is verified against the PyTorch model on a test input at its size: fp32 files must match the
logits to 2e-3 relative (else ExportError, nothing is left behind); fp16/int8 report their deviation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from engine.models.segmentation.exported import load_exported_file

FORMATS = ("onnx", "torchscript", "pt2")
DTYPES = ("fp32", "fp16", "int8")
ONNX_EXPORTERS = ("torchscript", "dynamo")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
METADATA_KEY = "fluxgraph"
EXTRA_FILE = "fluxgraph.json"
INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("class_queries_logits", "masks_queries_logits")
FP32_TOLERANCE = 2e-3  # relative to the largest logit
INT8_OPS = ("MatMul",)
INT8_SCOPE = "pixel_level_module"  # int8 where the time is (see int8_nodes)
MAX_BATCH = 1024
EXAMPLE_BATCH = 2  # a batch of 1 would let tracers specialise the batch dimension


class ExportError(ValueError):
    """An export that cannot be made or did not reproduce the model: what, which setting, what to do."""


@dataclass(frozen=True)
class ExportRequest:
    format: str = "onnx"
    dtypes: tuple[str, ...] = ("fp32",)  # one file per size and dtype; ONNX exports the float graph once per size
    sizes: tuple[tuple[int, int], ...] = ((512, 512),)
    exporter: str = "torchscript"  # ONNX only
    device: str = ""  # torch formats: where the graph is traced and runs ("" = CUDA when available)
    verify: bool = True

    def check(self, size_divisor: int = 32) -> "ExportRequest":
        if self.format not in FORMATS:
            raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not self.dtypes or any(dtype not in DTYPES for dtype in self.dtypes):
            raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {', '.join(self.dtypes) or 'none'}")
        if "int8" in self.dtypes and self.format != "onnx":
            raise ExportError("int8 is made by ONNX Runtime dynamic quantization: use format onnx (TorchScript and "
                              "pt2 export fp32 or fp16)")
        if self.exporter not in ONNX_EXPORTERS:
            raise ExportError(f"exporter must be one of {', '.join(ONNX_EXPORTERS)}, got {self.exporter!r}")
        if not self.sizes:
            raise ExportError("no input size given (e.g. 512x512)")
        for height, width in self.sizes:
            if height <= 0 or width <= 0 or height % size_divisor or width % size_divisor:
                raise ExportError(f"size {height}x{width}: height and width must be positive multiples of "
                                  f"{size_divisor} (the model's stride)")
        return self


@dataclass
class ExportedFile:
    path: Path
    size: tuple[int, int]
    dtype: str
    max_relative_error: float | None = None  # logits vs the PyTorch model on the check input
    label_agreement: float | None = None  # share of equal argmax labels on the check input


def parse_size(text: str) -> tuple[int, int]:
    """'512x640' (height x width) or '512' (square) -> (512, 640)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", str(text))
    if not match:
        raise ExportError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 512x512) or a single number")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def parse_sizes(text: str | Sequence[str]) -> tuple[tuple[int, int], ...]:
    parts = re.split(r"[\s,;]+", text) if isinstance(text, str) else list(text)
    sizes = tuple(dict.fromkeys(parse_size(part) for part in parts if str(part).strip()))
    if not sizes:
        raise ExportError("no input size given (e.g. 512x512)")
    return sizes


def file_name(name: str, fmt: str, size: tuple[int, int], dtype: str) -> str:
    return f"{name}-{size[0]}x{size[1]}-{dtype}{SUFFIXES[fmt]}"


def metadata(segmenter: Any, request: ExportRequest, size: tuple[int, int], dtype: str, name: str,
             device: str) -> dict:
    import torch

    prep = segmenter.preprocessing
    return {"fluxgraph_export": 1, "architecture": "mask2former", "format": request.format, "dtype": dtype,
            "input_size": list(size), "input": INPUT_NAME, "outputs": list(OUTPUT_NAMES), "batch": "dynamic",
            "labels": list(segmenter.labels), "name": name,
            "group": f"{name}-{request.format}-{dtype}", "source": segmenter.config_name, "device": device,
            "exporter": request.exporter if request.format == "onnx" else request.format,
            "preprocessing": {"shortest_edge": prep.shortest_edge, "longest_edge": prep.longest_edge,
                              "size_divisor": prep.size_divisor, "image_mean": list(prep.image_mean),
                              "image_std": list(prep.image_std)},
            "torch": torch.__version__}


class SegmenterGraph:
    """Factory of the exported module: pixel_values -> (class logits, mask logits), float32 in and out."""

    @staticmethod
    def build(model: Any, dtype: Any) -> Any:
        import torch

        class _Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model
                self.compute_dtype = dtype

            def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                output = self.model(pixel_values=pixel_values.to(self.compute_dtype))
                return output.class_queries_logits.float(), output.masks_queries_logits.float()

        return _Graph().eval()


def example_input(size: tuple[int, int], batch: int = EXAMPLE_BATCH, device: Any = "cpu", seed: int = 0) -> Any:
    """A smooth random normalised image batch (noise alone would test nothing the masks react to)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn((batch, 3, size[0] // 16 + 1, size[1] // 16 + 1), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (smooth + 0.1 * torch.randn((batch, 3, *size), generator=generator)).to(device)


def export_segmenter(segmenter: Any, out_dir: str | Path, name: str, request: ExportRequest) -> list[ExportedFile]:
    """Write one file per size and dtype under out_dir; returns them with their verification figures. A file
    that fails is removed (the ones written before it stay)."""
    request.check(segmenter.preprocessing.size_divisor)
    if getattr(segmenter, "model", None) is None:
        raise ExportError(f"{segmenter.config_name} is already an exported graph; export from a PyTorch Mask2Former")
    if not re.fullmatch(r"[\w.\-]+", name):
        raise ExportError(f"export name {name!r} may hold letters, digits, '.', '-' and '_' only")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[ExportedFile] = []
    for size in request.sizes:
        if request.format == "onnx":
            written += _export_onnx_size(segmenter, out_dir, name, request, size)
        else:
            for dtype in request.dtypes:
                written.append(_export_torch_size(segmenter, out_dir, name, request, size, dtype))
    return written


def _graph(segmenter: Any, device: str, dtype_name: str, eager_attention: bool) -> Any:
    import torch

    dtype = torch.float16 if dtype_name == "fp16" else torch.float32
    model = copy.deepcopy(segmenter.model).eval().to(device=device, dtype=dtype)
    if eager_attention:
        model.set_attn_implementation("eager")  # SDPA does not go through the dynamo ONNX exporter
    return SegmenterGraph.build(model, dtype)


def _finish(segmenter: Any, record: ExportedFile, request: ExportRequest) -> ExportedFile:
    try:
        if request.verify:
            _verify(segmenter, record)
    except BaseException:
        record.path.unlink(missing_ok=True)
        raise
    return record


def _export_torch_size(segmenter: Any, out_dir: Path, name: str, request: ExportRequest, size: tuple[int, int],
                       dtype: str) -> ExportedFile:
    import torch

    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = out_dir / file_name(name, request.format, size, dtype)
    info = json.dumps(metadata(segmenter, request, size, dtype, name, device))
    graph = _graph(segmenter, device, dtype, eager_attention=False)
    example = example_input(size, device=device)
    try:
        with torch.no_grad():
            if request.format == "torchscript":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    traced = torch.jit.trace(graph, (example,), check_trace=False)
                traced.save(str(path), _extra_files={EXTRA_FILE: info})
            else:
                batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
                program = torch.export.export(graph, (example,), dynamic_shapes={"pixel_values": {0: batch}})
                torch.export.save(program, str(path), extra_files={EXTRA_FILE: info})
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return _finish(segmenter, ExportedFile(path, size, dtype), request)


def _export_onnx_size(segmenter: Any, out_dir: Path, name: str, request: ExportRequest,
                      size: tuple[int, int]) -> list[ExportedFile]:
    """The float graph is exported once; each dtype's file is derived from it."""
    import onnx
    import torch

    float_path = out_dir / f".{name}-{size[0]}x{size[1]}.float.onnx.tmp"
    graph = _graph(segmenter, "cpu", "fp32", eager_attention=request.exporter == "dynamo")
    example = example_input(size)
    records = []
    try:
        with torch.no_grad():
            if request.exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
                program = torch.onnx.export(graph, (example,), dynamo=True,
                                            dynamic_shapes={"pixel_values": {0: batch}}, input_names=[INPUT_NAME],
                                            output_names=list(OUTPUT_NAMES), external_data=False, verbose=False)
                program.save(str(float_path))
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
                    torch.onnx.export(graph, (example,), str(float_path), dynamo=False, input_names=[INPUT_NAME],
                                      output_names=list(OUTPUT_NAMES), opset_version=17,
                                      dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)})
        for dtype in request.dtypes:
            path = out_dir / file_name(name, "onnx", size, dtype)
            try:
                if dtype == "int8":
                    _quantize_int8(float_path, path)
                    model = onnx.load(str(path))
                else:
                    model = onnx.load(str(float_path))
                    if dtype == "fp16":
                        from onnxruntime.transformers.float16 import convert_float_to_float16

                        model = convert_float_to_float16(model, keep_io_types=True)
                del model.metadata_props[:]
                entry = model.metadata_props.add()
                entry.key = METADATA_KEY
                entry.value = json.dumps(metadata(segmenter, request, size, dtype, name, "cpu"))
                onnx.save(model, str(path))
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            records.append(_finish(segmenter, ExportedFile(path, size, dtype), request))
    finally:
        float_path.unlink(missing_ok=True)
    return records


def int8_nodes(model: Any) -> list[str]:
    """The MatMuls to quantize: those of the pixel-level module (Swin backbone and pixel decoder), where the
    time goes. The transformer decoder and the class / mask heads work on a hundred queries (little time) and
    decide the labels: kept float, they keep int8's labels close to fp32's. Names come from the node or, for
    the dynamo exporter, its module-scope metadata; with no match, every MatMul is quantized."""
    chosen, every = [], []
    for node in model.graph.node:
        if node.op_type not in INT8_OPS:
            continue
        every.append(node.name)
        scopes = " ".join([node.name, *(entry.value for entry in node.metadata_props)])
        if INT8_SCOPE in scopes:
            chosen.append(node.name)
    return chosen or every


def _quantize_int8(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = int8_nodes(onnx.load(str(source)))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing suggestion on the root logger
    try:
        quantize_dynamic(str(source), str(target), op_types_to_quantize=list(INT8_OPS), nodes_to_quantize=nodes,
                         weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _verify(segmenter: Any, record: ExportedFile) -> None:
    """Run the written file through the loader and compare with the fp32 PyTorch model."""
    import torch

    from engine.models.segmentation.pipeline import semantic_scores  # noqa: PLC0415 - it loads numpy; only checks need it

    runner = load_exported_file(record.path)
    example = example_input(record.size, seed=1)
    with torch.inference_mode():
        reference = segmenter.model(pixel_values=example)
    classes, masks = runner.run(example)
    errors = []
    for got, want in ((classes, reference.class_queries_logits), (masks, reference.masks_queries_logits)):
        errors.append(float((got.float().cpu() - want).abs().max() / want.abs().max().clamp_min(1e-6)))
    record.max_relative_error = max(errors)
    agree = [float((semantic_scores(classes[i].cpu(), masks[i].cpu()).argmax(0) ==
                    semantic_scores(reference.class_queries_logits[i], reference.masks_queries_logits[i]).argmax(0))
                   .float().mean()) for i in range(example.shape[0])]
    record.label_agreement = sum(agree) / len(agree)
    if record.dtype == "fp32" and record.max_relative_error > FP32_TOLERANCE:
        raise ExportError(f"{record.path.name}: the exported graph does not reproduce the model (logits differ by "
                          f"{record.max_relative_error:.2e} relative, tolerance {FP32_TOLERANCE:.0e}); the file was "
                          "not kept")


def describe(records: Sequence[ExportedFile]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in dataclasses.asdict(r).items() if k != "path"}, "path": os.fspath(r.path)}
            for r in records]
