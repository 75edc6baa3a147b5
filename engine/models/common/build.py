"""Build a module without allocating random weights, then put the file's tensors in, strictly.

Modules are constructed on the meta device (a full-size FLUX transformer would need ~48 GB to initialise
in fp32 on CPU) and the state dict is assigned in. Any missing or unexpected tensor is an error naming the
file: a silent partial load would give plausible-looking noise instead of a clear failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.memory.mapped import release_pages
from engine.models.common.safetensors_io import ModelFileError, open_safetensors
from engine.models.quant.compat import fit_quantized_layers
from engine.models.quant.layers import prepare_quantized
from engine.models.quant.tensors import SCALE_KEYS, GGUFWeight, is_quantized_state


_SCALE_KEYS = SCALE_KEYS  # scaled-fp8 scales (float32) say nothing about the compute dtype


def weights_dtype(state: dict[str, Any], dtype: Any = None) -> Any:
    """The dtype to build a module in: the one asked for, else the state's most common float dtype (fp8
    storage does not count: it is upcast), else bfloat16. GGUF files compute in bfloat16 unless asked
    otherwise: their vectors are F32 by convention, which says nothing about the model."""
    import torch

    if dtype is not None:
        return dtype
    if any(isinstance(v, GGUFWeight) for v in state.values()):
        return torch.bfloat16
    floats = [v.dtype for k, v in state.items() if v.is_floating_point() and not k.endswith(_SCALE_KEYS)
              and v.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2)]
    return max(set(floats), key=floats.count) if floats else torch.bfloat16


def instantiate(factory: Callable[[], Any], state: dict[str, Any], source: str | Path, *,
                dtype: Any = None, ignore_unexpected: Iterable[str] = (),
                allow_missing: Iterable[str] = (), after_load: Callable[[Any], None] | None = None) -> Any:
    """`factory()` built on meta, filled from `state` (cast to `dtype` when given), in eval mode.

    `allow_missing` tensors must be set by `after_load(module)` (e.g. tying a shared embedding). Linear
    weights stored quantized (fp8, scaled fp8, GGUF) stay so: engine/models/quant/layers.py."""
    import torch

    try:
        with torch.device("meta"):
            module = factory()
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError, RuntimeError, ZeroDivisionError) as exc:
        # the libraries' own errors for a config they cannot build (a folder's config.json, an inferred one)
        raise ModelFileError(source, f"cannot build the model from its config: {type(exc).__name__}: {exc}") \
            from None
    keep: set[str] = set()
    if is_quantized_state(state):
        state, keep = prepare_quantized(module, state)
    expected = set(module.state_dict())
    ignored = set(ignore_unexpected)
    unexpected = sorted(k for k in state if k not in expected and k not in ignored)
    missing = sorted(k for k in expected if k not in state and k not in set(allow_missing))
    if unexpected or missing:
        raise ModelFileError(source, _mismatch_message(missing, unexpected))
    for key, value in state.items():
        if key in expected:
            _check_shape(module, key, value, source)
    try:
        module.load_state_dict(_converted(state, expected, dtype, keep), strict=False, assign=True)
    except RuntimeError as exc:
        raise ModelFileError(source, f"weights do not fit the model: {exc}") from None
    _materialise_buffers(module)
    if keep:
        fit_quantized_layers(module)
    if after_load is not None:
        after_load(module)
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:
        raise ModelFileError(source, f"tensors left unset after loading: {leftover[:5]}")
    return module.eval().requires_grad_(False)


def _converted(state: dict[str, Any], expected: set[str], dtype: Any, keep: set[str]) -> dict[str, Any]:
    """The tensors to assign, cast to `dtype` one at a time (except the `keep` ones, stored quantized). A
    memory-mapped source gives its pages back right after its cast, so loading holds the converted model
    plus one tensor, never two copies."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key not in expected:
            continue
        if dtype is not None and key not in keep and value.is_floating_point() and value.dtype != dtype:
            converted = value.to(dtype)
            release_pages([value])
            value = converted
        out[key] = value
    return out


def _check_shape(module: Any, key: str, value: Any, source: str | Path) -> None:
    target = module.get_parameter(key) if key in dict(module.named_parameters()) else module.get_buffer(key)
    if tuple(target.shape) != tuple(value.shape):
        raise ModelFileError(source, f"tensor {key!r} has shape {list(value.shape)}, the model built from its "
                                     f"config expects {list(target.shape)}")


def _materialise_buffers(module: Any) -> None:
    """Non-persistent buffers are not in files: recreate the ones these architectures have."""
    import torch

    for name, buf in list(module.named_buffers()):
        if not buf.is_meta:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if attr == "position_ids":  # CLIP text embeddings: arange over positions
            owner.register_buffer(attr, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)


def _mismatch_message(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
    return "weights do not match the architecture: " + "; ".join(parts)


# ----- diffusers / transformers folders (read ourselves: safetensors only, no hub, precise errors)
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")


def read_folder_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFileError(folder, "no config.json in this model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(path, f"invalid JSON: {exc}") from None
    except OSError as exc:
        raise ModelFileError(path, f"cannot read it: {exc.strerror or exc}") from None
    if not isinstance(config, dict):
        raise ModelFileError(path, f"expected a JSON object, found {type(config).__name__}")
    return config


def load_folder_weights(folder: Path) -> dict[str, Any]:
    """All tensors of a diffusers/transformers model folder: one .safetensors file or an index of shards."""
    for stem in WEIGHT_STEMS:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
                if not all(isinstance(shard, str) for shard in shards):
                    raise TypeError("shard names must be strings")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise ModelFileError(index, f"invalid shard index: {type(exc).__name__}: {exc}") from None
            state: dict[str, Any] = {}
            for shard in shards:
                state.update(open_safetensors(folder / shard).load())
            return state
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return open_safetensors(single).load()
    pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
    if pickles:
        raise ModelFileError(folder, f"only pickle weights found ({pickles[:2]}); safetensors weights are "
                                     "required (they cannot run code when loaded)")
    raise ModelFileError(folder, "no model.safetensors / diffusion_pytorch_model.safetensors in this folder")


def model_subfolder(folder: Path, sub: str, allow_self: bool = True) -> Path:
    """`folder/sub` for a pipeline folder (with model_index.json), or (`allow_self`) `folder` itself when it is
    a single model's folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(folder, "folder not found")
    if (folder / sub / "config.json").is_file():
        return folder / sub
    if allow_self and (folder / "config.json").is_file():
        return folder
    raise ModelFileError(folder, f"not a diffusers folder: neither {sub}/config.json nor config.json found")
