"""SigLIP vision towers for FLUX Redux: loading (CLIP_VISION) and encoding images (CLIP_VISION_OUTPUT).

Layouts: single files with transformers keys (`vision_model.*`, as ComfyUI's sigclip_vision_patch14_384
.safetensors; a full SigLIP file's text tower is ignored), transformers folders (config.json +
model.safetensors, optional preprocessor_config.json), and diffusers Redux pipeline folders (their
`image_encoder/` and `feature_extractor/`). A single file's config comes from its shapes: width, depth, MLP
width, patch and image size are read off the tensors; heads are 16 for the 1152-wide so400m tower (and the
usual 12 / 16 for 768 / 1024), else 64-wide.

Encoding matches transformers' SiglipImageProcessor: the image in 8-bit, resized with PIL's bicubic filter
to the model's square size (crop "center": shortest side first, then the middle), scaled to 0..1 and
normalised with the processor's mean and std; the output is the tower's last hidden state (after its final
layer norm), the input of the Redux embedder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.common.build import instantiate, load_folder_weights
from engine.models.common.dtypes import module_dtype
from engine.models.common.file_kind import wrong_loader_message
from engine.models.common.safetensors_io import ModelFileError, open_safetensors

CROP_METHODS = ("center", "none")
_KNOWN_HEADS = {1152: 16, 768: 12, 1024: 16}
_PATCH_KEY = "embeddings.patch_embedding.weight"


@dataclass(frozen=True)
class ClipVisionModel:
    model: Any  # transformers SiglipVisionModel
    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    source: str = ""


@dataclass(frozen=True)
class ClipVisionOutput:
    last_hidden_state: Any  # [N, tokens, width]
    image_embeds: Any = None  # pooled (head) output when the tower has a head

    def __getitem__(self, key: str) -> Any:  # ComfyUI code reads outputs like a dict
        return getattr(self, key)


def _vision_state(state: dict[str, Any], source: Path) -> dict[str, Any]:
    """The vision tower's tensors without their `vision_model.` prefix."""
    if f"vision_model.{_PATCH_KEY}" in state:
        return {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    if _PATCH_KEY in state:
        return state
    raise ModelFileError(source, wrong_loader_message(state.keys(), "a SigLIP vision model"))


def infer_siglip_config(state: dict[str, Any], source: Path) -> dict[str, Any]:
    if "embeddings.class_embedding" in state or "pre_layrnorm.weight" in state:
        raise ModelFileError(source, "a CLIP ViT vision model; FLUX Redux needs a SigLIP vision model "
                                     "(e.g. sigclip_vision_patch14_384.safetensors)")
    hidden, channels, patch, _ = state[_PATCH_KEY].shape
    positions = state["embeddings.position_embedding.weight"].shape[0]
    side = round(positions ** 0.5)
    if side * side != positions:
        raise ModelFileError(source, f"{positions} position embeddings do not form a square grid")
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    heads = _KNOWN_HEADS.get(hidden) or (hidden // 64 if hidden % 64 == 0 else hidden // 72)
    return dict(hidden_size=int(hidden), intermediate_size=int(state["encoder.layers.0.mlp.fc1.weight"].shape[0]),
                num_hidden_layers=layers, num_attention_heads=int(heads), num_channels=int(channels),
                image_size=int(side * patch), patch_size=int(patch), layer_norm_eps=1e-6,
                hidden_act="gelu_pytorch_tanh", vision_use_head="head.probe" in state)


def load_clip_vision(path: str | Path) -> ClipVisionModel:
    """CLIPVisionLoader: a SigLIP vision tower from a single file or a folder."""
    path = Path(path)
    preprocessor: dict[str, Any] = {}
    if path.is_dir():
        folder = path / "image_encoder" if (path / "image_encoder" / "config.json").is_file() else path
        config = _folder_config(folder)
        state = _vision_state(load_folder_weights(folder), folder)
        for candidate in (path / "feature_extractor" / "preprocessor_config.json", folder / "preprocessor_config.json"):
            if candidate.is_file():
                preprocessor = json.loads(candidate.read_text(encoding="utf-8"))
                break
        source = folder
    else:
        state = _vision_state(open_safetensors(path).load(), path)
        config, source = infer_siglip_config(state, path), path
    from transformers import SiglipVisionConfig, SiglipVisionModel

    vision_config = SiglipVisionConfig(**config)
    if not vision_config.vision_use_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model = instantiate(lambda: SiglipVisionModel(vision_config), state, source)
    mean = tuple(float(x) for x in preprocessor.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(x) for x in preprocessor.get("image_std", (0.5, 0.5, 0.5)))
    return ClipVisionModel(model=model, image_size=int(vision_config.image_size), mean=mean, std=std,
                           source=str(path))


def _folder_config(folder: Path) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFileError(folder, "no config.json: not a transformers SigLIP folder")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") == "siglip" and "vision_config" in config:
        config = config["vision_config"]
    if config.get("model_type") not in (None, "siglip_vision_model"):
        raise ModelFileError(folder, f"holds a {config.get('model_type')!r} model, expected a SigLIP vision model")
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
            "image_size", "patch_size", "layer_norm_eps", "hidden_act", "vision_use_head")
    return {k: config[k] for k in keys if k in config}


def preprocess(images: Any, size: int, crop: str, mean: tuple, std: tuple) -> Any:
    """IMAGE [B, H, W, C] in 0..1 -> pixel_values [B, 3, size, size] (see module docstring)."""
    import numpy as np
    import torch
    from PIL import Image

    if crop not in CROP_METHODS:
        raise ValueError(f"crop {crop!r} is not one of {list(CROP_METHODS)}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("CLIPVisionEncode: image must be an IMAGE [batch, height, width, channels]")
    pixels = (images[..., :3].detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    out = []
    for array in pixels:
        picture = Image.fromarray(array)
        if crop == "center":
            scale = size / min(picture.width, picture.height)
            resized = (max(size, round(picture.width * scale)), max(size, round(picture.height * scale)))
            picture = picture.resize(resized, resample=Image.Resampling.BICUBIC)
            left, top = (picture.width - size) // 2, (picture.height - size) // 2
            picture = picture.crop((left, top, left + size, top + size))
        else:
            picture = picture.resize((size, size), resample=Image.Resampling.BICUBIC)
        out.append(np.asarray(picture, dtype=np.float32) / 255.0)
    batch = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def encode_images(handle: ClipVisionModel, images: Any, crop: str, memory: Any) -> ClipVisionOutput:
    """CLIPVisionEncode."""
    import torch

    if not isinstance(handle, ClipVisionModel):
        raise TypeError(f"clip_vision input is not a SigLIP vision model (got {type(handle).__name__})")
    pixel_values = preprocess(images, handle.image_size, crop, handle.mean, handle.std)
    with torch.no_grad(), memory.use(handle.model):
        output = handle.model(pixel_values=pixel_values.to(memory.device, module_dtype(handle.model)))
    pooled = getattr(output, "pooler_output", None)
    return ClipVisionOutput(last_hidden_state=output.last_hidden_state.float().cpu(),
                            image_embeds=pooled.float().cpu() if pooled is not None else None)
