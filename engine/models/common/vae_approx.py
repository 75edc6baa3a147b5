"""TAESD-style tiny decoders for live previews (models/vae_approx), loaded with diffusers' AutoencoderTiny.

A decoder is found by its name's start, as ComfyUI finds them: `taef1*` decodes FLUX.1 latents (16 channels),
`taef2*` FLUX.2 latents (32 channels, before the 2x2 patchify). Two layouts are read:

- a diffusers folder (`config.json` + weights), e.g. `models/vae_approx/taef1/`;
- a single decoder file (`taef1_decoder.safetensors`; pickle files such as `.pth` are refused with the
  message every model loader gives), in TAESD's own key layout (`1.weight`,
  `3.conv.0.weight`, ...: a Sequential whose first module is the clamp) or in diffusers' (`decoder.layers.*`).
  The decoder's shape (latent channels, widths, blocks per stage) is read from the keys.

Loaded decoders are kept per (path, modification time, device), so a preview costs one decode, never a load.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from engine.models.common.safetensors_io import ModelFileError, open_safetensors, refuse_pickle

DECODER_PREFIXES = {"flux1": "taef1", "flux2": "taef2"}
_FILE_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt")  # pickles are found, then refused by name
_KEY = re.compile(r"^(?:decoder\.layers\.)?(\d+)\.(.+)$")
_loaded: dict[tuple[str, float, str], Any] = {}
_lock = threading.Lock()


def find_tiny_decoder(folders: Any, family: str) -> Path | None:
    """The first `taef1*` / `taef2*` file or folder in the vae_approx folders, or None."""
    prefix = DECODER_PREFIXES.get(family)
    if prefix is None or folders is None:
        return None
    for root in folders.model_dirs("vae_approx"):
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if not path.name.lower().startswith(prefix):
                continue
            if path.is_dir() and (path / "config.json").is_file():
                return path
            if path.is_file() and path.suffix.lower() in _FILE_SUFFIXES:
                return path
    return None


def load_tiny_decoder(path: Path, device: Any = "cpu") -> Any:
    """An AutoencoderTiny (eval, float32) for a vae_approx file or folder; cached while the file is unchanged."""
    path = Path(path)
    key = (str(path), path.stat().st_mtime, str(device))
    with _lock:
        model = _loaded.get(key)
        if model is None:
            model = _build(path).to(device)
            for stale in [k for k in _loaded if k[0] == key[0]]:
                del _loaded[stale]
            _loaded[key] = model
    return model


def _build(path: Path) -> Any:
    from diffusers import AutoencoderTiny  # noqa: PLC0415 - diffusers loads only when a preview needs it

    try:
        if path.is_dir():
            return AutoencoderTiny.from_pretrained(str(path), local_files_only=True).float().eval()
        state = _read_state(path)
        decoder = _decoder_state(path, state)
        config = _infer_config(path, decoder)
        model = AutoencoderTiny(**config).float().eval()
        model.decoder.load_state_dict({"layers." + k: v.float() for k, v in decoder.items()}, strict=True)
        return model
    except ModelFileError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # a broken or foreign file names itself
        raise ModelFileError(path, f"not a TAESD-style decoder: {exc}") from exc


def _read_state(path: Path) -> dict[str, Any]:
    refuse_pickle(path)
    return open_safetensors(path).load()


def _decoder_state(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Keys relative to diffusers' `decoder.layers` (TAESD's index i is diffusers' i - 1: no clamp module)."""
    diffusers_layout = any(k.startswith("decoder.layers.") for k in state)
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        if diffusers_layout and not name.startswith("decoder.layers."):
            continue  # an encoder beside the decoder
        match = _KEY.match(name)
        if match is None:
            continue
        index = int(match.group(1)) - (0 if diffusers_layout else 1)
        if index >= 0:
            out[f"{index}.{match.group(2)}"] = tensor
    if "0.weight" not in out:
        raise ModelFileError(path, "not a TAESD-style decoder: no first convolution (keys '1.weight' or "
                                   "'decoder.layers.0.weight')")
    return out


def _infer_config(path: Path, decoder: dict[str, Any]) -> dict[str, Any]:
    """AutoencoderTiny's decoder shape from the keys: convolutions close stages, blocks fill them."""
    indices = sorted({int(k.split(".", 1)[0]) for k in decoder})
    stages: list[tuple[int, int]] = []
    blocks = width = 0
    out_channels = 3
    for index in indices[1:]:
        if f"{index}.conv.0.weight" in decoder:
            blocks += 1
            width = int(decoder[f"{index}.conv.0.weight"].shape[0])
        elif f"{index}.weight" in decoder:
            stages.append((blocks, width or int(decoder[f"{index}.weight"].shape[1])))
            out_channels = int(decoder[f"{index}.weight"].shape[0])
            blocks = width = 0
    if not stages:
        raise ModelFileError(path, "not a TAESD-style decoder: no decoder stages found")
    first = decoder["0.weight"]
    return {"latent_channels": int(first.shape[1]), "out_channels": out_channels,
            "decoder_block_out_channels": tuple(w for _, w in stages),
            "num_decoder_blocks": tuple(b for b, _ in stages),
            "encoder_block_out_channels": tuple(w for _, w in stages),
            "num_encoder_blocks": (1,) + (1,) * (len(stages) - 1)}
