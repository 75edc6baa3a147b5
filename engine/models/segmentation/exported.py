"""Exported Mask2Former files (ONNX, TorchScript, pt2) loaded as a SEGMENTER.

An `ExportedSegmenter` stands in for `engine.models.segmentation.mask2former.Segmenter` in the inference
pipeline: it has the labels and preprocessing the file carries, and `module_for()` returns a callable that
takes the normalised `pixel_values` and returns the class and mask logits. ONNX files run in ONNX Runtime (no
torch model code is involved; torch only carries tensors), TorchScript and pt2 files with torch alone (no
transformers).

Sizes: each file accepts the one input size it was exported at (the graph bakes in its feature-map sizes).
Loading a file also loads the other sizes of the same export (files `NAME-HxW-DTYPE.EXT` beside it whose
metadata names the same group). The segmenter's default resolution is its largest size (its short side, the
long side capped at its long side), so images are resized to fit it; the pipeline's `resolution` picks a
smaller size. An image whose processed size equals a file's size runs exactly as the PyTorch model would; a
smaller one is zero-padded (as the image processor pads) into the smallest size that holds it and its mask
logits are cropped back to its region (approximate, like the pipeline's "pad" batching: the model ignores
pixel masks). One larger than every size is refused with an error naming the sizes available.
"""

from __future__ import annotations

import json
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models.segmentation.mask2former import Preprocessing

EXPORT_SUFFIXES = (".onnx", ".pt", ".pt2")
METADATA_KEY = "fluxgraph"
EXTRA_FILE = "fluxgraph.json"


class ExportedModelError(ValueError):
    """A file that is not a usable fluxgraph export (foreign, corrupt, or needing a missing runtime)."""


class InputSizeError(ValueError):
    """An input size the exported graph was not made for."""


def _sizes_text(sizes: list[tuple[int, int]]) -> str:
    return ", ".join(f"{h}x{w}" for h, w in sizes)


def read_torch_archive_metadata(path: Path) -> dict[str, Any]:
    """The `fluxgraph.json` extra file of a TorchScript or pt2 archive (both are zip files)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")]
            if not names:
                raise ExportedModelError(f"{path.name}: a torch archive without {EXTRA_FILE}: not exported by "
                                         "fluxgraph (export with 'fluxgraph export segmenter' or ExportSegmenter)")
            return _parse_metadata(archive.read(names[0]).decode(), path)
    except zipfile.BadZipFile as exc:
        raise ExportedModelError(f"{path.name}: not a TorchScript or pt2 archive (corrupt or truncated): {exc}") \
            from exc


def _parse_metadata(text: str, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportedModelError(f"{path.name}: unreadable export metadata: {exc}") from exc
    if not isinstance(data, dict) or data.get("architecture") != "mask2former" or "input_size" not in data:
        raise ExportedModelError(f"{path.name}: its metadata does not describe a fluxgraph Mask2Former export")
    return data


# ----- runners: one file, one size, strict

@dataclass(eq=False)
class ExportedRunner:
    path: Path
    meta: dict[str, Any]
    device: Any  # torch.device the graph runs on (ONNX Runtime: cpu unless its CUDA provider is used)
    _call: Any = field(repr=False, default=None)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.meta["input_size"][0]), int(self.meta["input_size"][1])

    def run(self, pixel_values: Any) -> tuple[Any, Any]:
        """B×3×H×W normalised values at exactly this file's size -> (class logits, mask logits), float32."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise InputSizeError(f"{self.path.name}: expected pixel_values B×3×H×W, got {tuple(pixel_values.shape)}")
        size = (int(pixel_values.shape[2]), int(pixel_values.shape[3]))
        if size != self.size:
            raise InputSizeError(f"{self.path.name} was exported for input size {self.size[0]}x{self.size[1]} only; "
                                 f"got {size[0]}x{size[1]} (export that size too: the graph bakes in its feature-map "
                                 "sizes, so no other size can run)")
        with self._lock:  # ONNX Runtime sessions and traced modules are not re-entrant across threads here
            return self._call(pixel_values)


def _onnx_runner(path: Path, device: Any) -> ExportedRunner:
    import torch

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportedModelError(f"{path.name}: ONNX files run with onnxruntime, which is not installed "
                                 "(pip install onnxruntime)") from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if torch.device(device).type == "cuda" else []
    providers = [p for p in wanted if p in available] + ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ExportedModelError(f"{path.name}: ONNX Runtime cannot load it (corrupt or unsupported): {exc}") from exc
    meta = _parse_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "null"), path)
    runs_on = torch.device("cuda") if session.get_providers()[0] == "CUDAExecutionProvider" else torch.device("cpu")
    input_name = session.get_inputs()[0].name

    def call(pixel_values: Any) -> tuple[Any, Any]:
        array = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        classes, masks = session.run(None, {input_name: array})
        return torch.from_numpy(classes), torch.from_numpy(masks)

    return ExportedRunner(path, meta, runs_on, call)


def _torch_runner(path: Path, device: Any) -> ExportedRunner:
    import torch

    meta = read_torch_archive_metadata(path)
    exported_on = torch.device(meta.get("device") or "cpu")
    if exported_on.type == "cuda" and not torch.cuda.is_available():
        raise ExportedModelError(f"{path.name} was exported on a GPU (its graph holds CUDA tensors) and this machine "
                                 "has no CUDA device; export it again here (fluxgraph export segmenter ... on this "
                                 "machine)")
    try:
        if path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location=exported_on)
    except Exception as exc:  # torch raises many types for corrupt archives
        raise ExportedModelError(f"{path.name}: torch cannot load it (corrupt, or made by an incompatible torch "
                                 f"{meta.get('torch', '?')}): {exc}") from exc

    def call(pixel_values: Any) -> tuple[Any, Any]:
        with torch.inference_mode():
            classes, masks = module(pixel_values.detach().to(exported_on, torch.float32).contiguous())
        return classes, masks

    return ExportedRunner(path, meta, exported_on, call)


def load_exported_file(path: str | Path, device: Any = "cpu") -> ExportedRunner:
    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"exported segmenter not found: {path}")
    if path.suffix.lower() == ".onnx":
        return _onnx_runner(path, device)
    if path.suffix.lower() in (".pt", ".pt2"):
        return _torch_runner(path, device)
    raise ExportedModelError(f"{path.name}: expected an exported .onnx, .pt (TorchScript) or .pt2 file")


# ----- the SEGMENTER

@dataclass
class ExportedOutput:
    class_queries_logits: Any
    masks_queries_logits: Any


class ExportedModule:
    """What the pipeline calls as `module(pixel_values=...)`: picks the file for the batch's size, pads into the
    smallest larger size when there is no exact one, and returns logits on the input's device."""

    def __init__(self, segmenter: "ExportedSegmenter") -> None:
        self.segmenter = segmenter

    def __call__(self, pixel_values: Any) -> ExportedOutput:
        import torch

        height, width = int(pixel_values.shape[2]), int(pixel_values.shape[3])
        runner = self.segmenter.runner_for(height, width)
        values = pixel_values.float()
        if runner.size != (height, width):
            values = torch.nn.functional.pad(values, (0, runner.size[1] - width, 0, runner.size[0] - height))
        classes, masks = runner.run(values)
        if runner.size != (height, width):  # the mask grid is a fixed fraction of the input: crop to the image
            mask_h = masks.shape[-2] * height // runner.size[0]
            mask_w = masks.shape[-1] * width // runner.size[1]
            masks = masks[..., :mask_h, :mask_w]
        return ExportedOutput(classes.to(pixel_values.device), masks.to(pixel_values.device))


@dataclass(frozen=True, eq=False)
class ExportedSegmenter:
    runners: tuple[ExportedRunner, ...]  # smallest area first
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    config_name: str
    source: str
    format: str
    dtype: str

    model = None  # no PyTorch module: an exported graph cannot be trained or exported again

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [runner.size for runner in self.runners]

    def runner_for(self, height: int, width: int) -> ExportedRunner:
        for runner in self.runners:
            if runner.size == (height, width):
                return runner
        for runner in self.runners:
            if runner.size[0] >= height and runner.size[1] >= width:
                return runner
        raise InputSizeError(f"{self.config_name} ({self.format} {self.dtype}) was exported for input size(s) "
                             f"{_sizes_text(self.sizes)}; an image processed to {height}x{width} fits none (lower "
                             f"SemanticSegment's resolution, or export a {height}x{width} file too)")

    def module_for(self, device: Any = "cpu", dtype: Any = None, channels_last: bool = False) -> ExportedModule:
        return ExportedModule(self)  # the file fixes its own device and precision

    def run(self, pixel_values: Any) -> tuple[Any, Any]:
        """Strict: the batch's size must be one of the exported sizes."""
        height, width = int(pixel_values.shape[2]), int(pixel_values.shape[3])
        exact = [r for r in self.runners if r.size == (height, width)]
        if not exact:
            raise InputSizeError(f"{self.config_name} was exported for input size(s) {_sizes_text(self.sizes)}; got "
                                 f"{height}x{width}")
        return exact[0].run(pixel_values)


def _group_files(path: Path, meta: dict[str, Any]) -> list[Path]:
    name, dtype = meta.get("name"), meta.get("dtype")
    if not name or not dtype:
        return [path]
    pattern = re.compile(rf"{re.escape(name)}-\d+x\d+-{re.escape(dtype)}{re.escape(path.suffix)}")
    return sorted(p for p in path.parent.iterdir() if p.is_file() and pattern.fullmatch(p.name))


def load_exported_segmenter(path: str | Path, device: Any = "cpu") -> ExportedSegmenter:
    """The exported file and the other sizes of the same export beside it."""
    path = Path(path)
    first = load_exported_file(path, device)
    runners = {first.size: first}
    for sibling in _group_files(path, first.meta):
        if sibling == path:
            continue
        try:
            runner = load_exported_file(sibling, device)
        except ExportedModelError:
            continue  # a broken sibling does not stop the chosen file from loading
        if runner.meta.get("group") == first.meta.get("group") and runner.size not in runners:
            runners[runner.size] = runner
    ordered = tuple(sorted(runners.values(), key=lambda r: (r.size[0] * r.size[1], r.size)))
    largest = max(ordered, key=lambda r: r.size[0] * r.size[1]).size
    prep_data = first.meta.get("preprocessing") or {}
    preprocessing = Preprocessing(shortest_edge=min(largest), longest_edge=max(largest),
                                  size_divisor=int(prep_data.get("size_divisor", 32)),
                                  image_mean=tuple(prep_data.get("image_mean", Preprocessing.image_mean)),
                                  image_std=tuple(prep_data.get("image_std", Preprocessing.image_std)))
    labels = tuple(str(name) for name in first.meta.get("labels") or [])
    if not labels:
        raise ExportedModelError(f"{path.name}: its metadata lists no labels")
    return ExportedSegmenter(runners=ordered, labels=labels, preprocessing=preprocessing,
                             config_name=first.meta.get("name") or path.stem, source=str(path),
                             format=first.meta.get("format", path.suffix.lstrip(".")),
                             dtype=first.meta.get("dtype", "fp32"))


def list_exported_segmenters(folders: Any) -> list[str]:
    """Exported files under models/segmentation/ (not the files inside transformers folders, such as a training
    run's last/training_state.pt)."""
    names = folders.list_models("segmentation", extensions=EXPORT_SUFFIXES, include_dirs=True)
    return [name for name in names if name.lower().endswith(EXPORT_SUFFIXES)]
