"""Depth Anything V2 (small / base / large) on transformers' DepthAnythingForDepthEstimation, from models/depth/.

Layouts: a transformers folder (config.json + model.safetensors, optional preprocessor_config.json, as the
`depth-anything/Depth-Anything-V2-*-hf` repositories), or a single .safetensors file with transformers keys
(`backbone.*`, `neck.*`, `head.*`), whose config is read off its shapes: the DINOv2 backbone's width, depth,
patch, position grid and MLP width; heads are width / 64 (6 / 12 / 16 for small / base / large); the four
backbone layers the neck reads are the last of each quarter of the depth (V2's choice: 3, 6, 9, 12 of 12;
5, 12, 18, 24 of 24 for large), or what the metadata key `out_indices` says; the neck and head widths
from their convolutions. The original repository's .pth files (`pretrained.*` keys) are not read.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models.common.build import instantiate, load_folder_weights, read_folder_config
from engine.models.common.safetensors_io import ModelFileError, open_safetensors

_PATCH_KEY = "backbone.embeddings.patch_embeddings.projection.weight"
_V2_OUT_INDICES = {24: [5, 12, 18, 24]}  # large; other depths: the last layer of each quarter
# transformers' DPT image processor settings of the V2 -hf repositories (ImageNet mean / std)
DEFAULT_PROCESSOR = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                     "ensure_multiple_of": 14, "keep_aspect_ratio": True, "resample": 3}
# transformers 4 names of the DINOv2 attention (what the -hf repositories hold) -> transformers 5 names
HUB_RENAMES = ((".attention.attention.query.", ".attention.q_proj."),
               (".attention.attention.key.", ".attention.k_proj."),
               (".attention.attention.value.", ".attention.v_proj."),
               (".attention.output.dense.", ".attention.o_proj."))
_CACHE: "OrderedDict[tuple, DepthModel]" = OrderedDict()
_LOCK = threading.Lock()


@dataclass(frozen=True)
class DepthModel:
    model: Any  # transformers DepthAnythingForDepthEstimation
    processor: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PROCESSOR))
    source: str = ""


def load_depth_model(path: str | Path) -> DepthModel:
    """A Depth Anything model from a folder or a single file (cached per file version, 2 entries)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    model = _load_folder(path) if path.is_dir() else _load_file(path)
    with _LOCK:
        _CACHE[key] = model
        while len(_CACHE) > 2:
            _CACHE.popitem(last=False)
    return model


def current_names(state: dict[str, Any]) -> dict[str, Any]:
    """The state with the hub's (transformers 4) attention names renamed to transformers 5's."""
    out = {}
    for key, value in state.items():
        for old, new in HUB_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def _build(config: dict[str, Any], state: dict[str, Any], source: Path) -> Any:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation  # noqa: PLC0415 - heavy

    state = current_names(state)

    try:
        built = DepthAnythingConfig(**config)
    except Exception as exc:  # noqa: BLE001 - the config validation raises huggingface_hub's own error types too
        raise ModelFileError(source, f"not a Depth Anything config: {exc}") from None
    return instantiate(lambda: DepthAnythingForDepthEstimation(built), state, source)


def _load_folder(folder: Path) -> DepthModel:
    config = read_folder_config(folder)
    if config.get("model_type") != "depth_anything":
        raise ModelFileError(folder, f"config.json is a {config.get('model_type')!r} model, not depth_anything")
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version")}
    processor = dict(DEFAULT_PROCESSOR)
    processor_file = folder / "preprocessor_config.json"
    if processor_file.is_file():
        saved = json.loads(processor_file.read_text(encoding="utf-8"))
        processor.update({k: saved[k] for k in DEFAULT_PROCESSOR if k in saved})
    return DepthModel(_build(config, load_folder_weights(folder), folder), processor, str(folder))


def _load_file(path: Path) -> DepthModel:
    sf = open_safetensors(path)
    if _PATCH_KEY not in sf.tensors:
        raise ModelFileError(path, "not a Depth Anything model in the transformers layout (no "
                                   f"{_PATCH_KEY}); a folder or a -hf .safetensors file is expected")
    state = current_names(sf.load())
    return DepthModel(_build(infer_config(state, sf.metadata), state, path), dict(DEFAULT_PROCESSOR), str(path))


def infer_config(state: dict[str, Any], metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """A DepthAnythingConfig (as a dict) from transformers-keyed tensor shapes (module docstring)."""
    hidden, channels, patch, _ = state[_PATCH_KEY].shape
    positions = state["backbone.embeddings.position_embeddings"].shape[1] - 1
    side = round(positions ** 0.5)
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("backbone.encoder.layer."))
    mlp = state["backbone.encoder.layer.0.mlp.fc1.weight"].shape[0]
    out_indices = json.loads((metadata or {}).get("out_indices", "null")) or _V2_OUT_INDICES.get(layers) or \
        [layers * (i + 1) // 4 for i in range(4)]
    neck = [int(state[f"neck.reassemble_stage.layers.{i}.projection.weight"].shape[0]) for i in range(4)]
    backbone = dict(model_type="dinov2", hidden_size=int(hidden), num_hidden_layers=layers,
                    num_attention_heads=max(1, int(hidden) // 64), mlp_ratio=int(mlp) // int(hidden),
                    patch_size=int(patch), image_size=int(side * patch), num_channels=int(channels),
                    layerscale_value=1.0, use_swiglu_ffn=False, out_indices=out_indices,
                    reshape_hidden_states=False, apply_layernorm=True)
    return dict(backbone_config=backbone, patch_size=int(patch), reassemble_hidden_size=int(hidden),
                neck_hidden_sizes=neck, fusion_hidden_size=int(state["neck.fusion_stage.layers.0.projection.weight"]
                                                               .shape[0]),
                head_hidden_size=int(state["head.conv2.weight"].shape[0]), depth_estimation_type="relative",
                max_depth=1)
