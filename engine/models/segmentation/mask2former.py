"""Mask2Former segmenters (the SEGMENTER edge type): find a checkpoint's architecture, check it, load it offline.

Two layouts are accepted under `models/segmentation/`:
- a transformers folder: `config.json` + `model.safetensors` (optionally `preprocessor_config.json`);
- a single `.safetensors` file. Its config is, in order: a sidecar JSON of the same stem, a Mask2Former
  `config.json`-style JSON elsewhere in the same folder, or one of the configs shipped in
  `engine/models/common/configs/mask2former*.json` (Swin-L ADE20K semantic and friends). The first config whose
  parameter names and shapes match the file's tensors exactly wins, so a file is never loaded into the wrong
  architecture with silently missing weights.

Everything runs without a hub: configs ship with the project, weights come from the local file.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models.common.configs import CONFIG_DIR
ADE20K_LABELS_FILE = CONFIG_DIR / "ade20k_labels.json"
MODEL_TYPE = "mask2former"
WEIGHTS_NAME = "model.safetensors"
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")


class SegmenterLoadError(ValueError):
    """A segmentation checkpoint that cannot be loaded: what is wrong, where, and what was expected."""


@dataclass(frozen=True)
class Preprocessing:
    """How images are sized and normalised before the model (transformers' Mask2Former image processor)."""

    shortest_edge: int = 640  # ADE20K Swin-L evaluation setting (640 short side, at most 2560 long side)
    longest_edge: int = 2560
    size_divisor: int = 32
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_processor_config(cls, data: dict[str, Any]) -> "Preprocessing":
        size = data.get("size", {})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        shortest = int(size.get("shortest_edge", cls.shortest_edge))
        longest = int(size.get("longest_edge", data.get("max_size", cls.longest_edge)))
        return cls(shortest_edge=shortest, longest_edge=longest,
                   size_divisor=int(data.get("size_divisor", cls.size_divisor)),
                   image_mean=tuple(data.get("image_mean", cls.image_mean)),
                   image_std=tuple(data.get("image_std", cls.image_std)))

    def at_resolution(self, shortest_edge: int) -> "Preprocessing":
        """The same processing at another short side; the long-side cap scales along."""
        if shortest_edge <= 0 or shortest_edge == self.shortest_edge:
            return self
        longest = max(shortest_edge, round(shortest_edge * self.longest_edge / self.shortest_edge))
        return Preprocessing(shortest_edge, longest, self.size_divisor, self.image_mean, self.image_std)


@dataclass(frozen=True, eq=False)
class Segmenter:
    """A loaded Mask2Former with its label names. The fp32 CPU module is the master copy; device and precision
    variants are made on first use and kept, so that fp16 never overwrites the fp32 weights."""

    model: Any  # transformers Mask2FormerForUniversalSegmentation, eval mode, fp32, CPU
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    config_name: str
    source: str
    _variants: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def module_for(self, device: Any, dtype: Any, channels_last: bool = False) -> Any:
        import torch

        device = torch.device(device)
        if device.type == "cpu" and dtype == torch.float32 and not channels_last:
            return self.model
        key = (str(device), str(dtype), channels_last)
        with self._lock:
            if key not in self._variants:
                module = copy.deepcopy(self.model).to(device=device, dtype=dtype)
                if channels_last:
                    module = module.to(memory_format=torch.channels_last)
                self._variants[key] = module.eval()
            return self._variants[key]


def ade20k_labels() -> list[str]:
    return json.loads(ADE20K_LABELS_FILE.read_text())


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("mask2former*.json"))


def load_segmenter(path: str | Path) -> Segmenter:
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if not path.exists():
        raise SegmenterLoadError(f"segmentation model not found: {path}")
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return _load_single_file(path)
    raise SegmenterLoadError(f"{path.name}: expected a transformers folder (config.json + {WEIGHTS_NAME}) or a "
                             f"single {'/'.join(SINGLE_FILE_SUFFIXES)} file, got a '{path.suffix}' file")


# ----- configs

def read_config(path: Path, *, role: str = "config") -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegmenterLoadError(f"{role} {path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SegmenterLoadError(f"{role} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _check_architecture(config: dict[str, Any], where: Path) -> None:
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        archs = ", ".join(config.get("architectures") or []) or "none listed"
        raise SegmenterLoadError(f"{where}: wrong architecture: model_type is {model_type!r} (architectures: "
                                 f"{archs}); expected a '{MODEL_TYPE}' config")
    backbone = (config.get("backbone_config") or {}).get("model_type", "swin")
    if backbone != "swin":
        raise SegmenterLoadError(f"{where}: Mask2Former backbone {backbone!r} is not supported; expected 'swin'")


def _build_config(config: dict[str, Any], where: Path) -> Any:
    from transformers import Mask2FormerConfig

    data = {k: v for k, v in config.items() if not k.startswith("fluxgraph_")}
    try:
        return Mask2FormerConfig.from_dict(data)
    except Exception as exc:  # transformers raises several types for bad fields
        raise SegmenterLoadError(f"{where}: invalid Mask2Former config: {exc}") from exc


def _labels_from(config: Any) -> tuple[str, ...]:
    id2label = {int(k): str(v).strip() for k, v in (config.id2label or {}).items()}
    count = config.num_labels
    generic = all(name == f"LABEL_{i}" for i, name in id2label.items())
    if generic and count == 150:
        return tuple(ade20k_labels())  # a bare ADE20K checkpoint without names
    return tuple(id2label.get(i, f"class_{i}") for i in range(count))


# ----- shape checks (tensor headers only, nothing is loaded)
# transformers renames checkpoint keys on load (hub files use legacy Swin names), so files are compared with a
# config by the multiset of their tensor shapes; exact key checks happen when transformers loads the weights.

def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import Mask2FormerForUniversalSegmentation

    with torch.device("meta"):
        model = Mask2FormerForUniversalSegmentation(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise SegmenterLoadError(f"{path.name} is not a readable safetensors file (corrupt or truncated): "
                                 f"{exc}") from exc


def _is_loss_state(key: str) -> bool:
    return key.startswith("criterion.")  # the training loss's class weights: not needed for inference


def shape_differences(expected: dict[str, tuple], actual: dict[str, tuple], limit: int = 4) -> list[str]:
    """How the file's tensor shapes differ from what the config builds ([] when they agree)."""
    want = Counter(shape for key, shape in expected.items() if not _is_loss_state(key))
    have = Counter(shape for key, shape in actual.items() if not _is_loss_state(key))
    problems = [f"{count}x {list(shape)} expected by the config, not in the file"
                for shape, count in (want - have).items()]
    problems += [f"{count}x {list(shape)} in the file, not expected by the config"
                 for shape, count in (have - want).items()]
    return problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])


# ----- folder layout

def _load_folder(folder: Path) -> Segmenter:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SegmenterLoadError(f"{folder}: missing config.json (a transformers Mask2Former folder needs "
                                 f"config.json and {WEIGHTS_NAME})")
    raw = read_config(config_path)
    _check_architecture(raw, config_path)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise SegmenterLoadError(f"{folder}: missing {WEIGHTS_NAME}")
    config = _build_config(raw, config_path)
    problems = shape_differences(expected_shapes(config), file_shapes(weights))
    if problems:
        raise SegmenterLoadError(f"{weights}: weights do not match {config_path.name}: " + "; ".join(problems))
    preprocessing = Preprocessing()
    processor_path = folder / "preprocessor_config.json"
    if processor_path.is_file():
        preprocessing = Preprocessing.from_processor_config(read_config(processor_path, role="preprocessor config"))
    return _instantiate(config, weights, preprocessing, config_name=folder.name, source=str(folder))


# ----- single file layout

def candidate_configs(path: Path) -> list[Path]:
    """Configs to try for a single file: its sidecar, Mask2Former JSONs beside it, then the shipped ones."""
    sidecar = path.with_suffix(".json")
    found = [sidecar] if sidecar.is_file() else []
    for other in sorted(path.parent.glob("*.json")):
        if other != sidecar and not other.name.endswith("preprocessor_config.json"):
            try:
                if json.loads(other.read_text()).get("model_type") == MODEL_TYPE:
                    found.append(other)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                continue  # unrelated or broken JSON beside the weights: not a candidate
    return found + shipped_configs()


def _load_single_file(path: Path) -> Segmenter:
    actual = file_shapes(path)
    if not any(key.startswith("model.pixel_level_module.") for key in actual):
        sample = ", ".join(list(actual)[:3]) or "no tensors"
        raise SegmenterLoadError(f"{path.name}: wrong architecture: no Mask2Former weights "
                                 f"(model.pixel_level_module.*) in this file; it holds {sample}, ...")
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        _check_architecture(read_config(sidecar), sidecar)
    tried: list[str] = []
    for config_path in candidate_configs(path):
        config = _build_config(read_config(config_path), config_path)
        problems = shape_differences(expected_shapes(config), actual, limit=3)
        if not problems:
            return _instantiate(config, path, Preprocessing(), config_name=config_path.stem, source=str(path))
        tried.append(f"{config_path.name} ({'; '.join(problems)})")
    raise SegmenterLoadError(f"{path.name}: no Mask2Former config matches its tensors; tried " + " | ".join(tried)
                             + ". Put the model's config.json beside it as " + sidecar.name)


def _instantiate(config: Any, weights: Path, preprocessing: Preprocessing, *, config_name: str,
                 source: str) -> Segmenter:
    from safetensors.torch import load_file
    from transformers import Mask2FormerForUniversalSegmentation

    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise SegmenterLoadError(f"{weights.name}: cannot read tensors (corrupt file?): {exc}") from exc
    try:
        model, info = Mask2FormerForUniversalSegmentation.from_pretrained(
            None, config=config, state_dict=state, output_loading_info=True)
    except RuntimeError as exc:  # shape mismatches after transformers' key renaming
        raise SegmenterLoadError(f"{weights.name}: weights do not fit the config: {exc}") from exc
    missing = sorted(k for k in info["missing_keys"] if not _is_loss_state(k))
    unexpected = sorted(k for k in info["unexpected_keys"] if not _is_loss_state(k))
    if missing or unexpected:
        raise SegmenterLoadError(f"{weights.name}: weights do not fit config {config_name!r}: missing "
                                 f"{missing[:4]}{' ...' if len(missing) > 4 else ''}, unexpected "
                                 f"{unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
    return Segmenter(model=model.float().eval(), labels=_labels_from(config), preprocessing=preprocessing,
                     config_name=config_name, source=source)


def list_segmenters(folders: Any) -> list[str]:
    """Names for the loader's combo: transformers folders and single files under models/segmentation/."""
    return folders.list_models("segmentation", extensions=SINGLE_FILE_SUFFIXES, include_dirs=True)
