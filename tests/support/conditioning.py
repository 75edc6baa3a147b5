"""Shared helpers for the FLUX conditioning tests (Fill, Kontext, Redux, LoRA): example inputs, reference
pipelines built from the tiny zoo's diffusers folders, and graph pieces.

Our graphs load the zoo's single files (BFL layout); the reference pipelines load the diffusers folders,
so the key conversions are checked too. Everything runs in float32 on the CPU.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.models.common.configs import load_config
from tests.support.flux import CAPTURED, make_runtime, zoo_base

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
INPUTS = WORKFLOWS / "inputs"
TOLERANCE = 1e-4
SENSITIVITY = 0.01


def runtime_with_inputs() -> Any:
    """A runtime over the tiny zoo whose input folder holds the shipped example images."""
    runtime = make_runtime()
    runtime.folders.input_dir.mkdir(parents=True, exist_ok=True)
    for picture in INPUTS.glob("*.png"):
        shutil.copy(picture, runtime.folders.input_dir / picture.name)
    return runtime


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def run_graph(runtime: Any, graph: dict, key: str = "out") -> tuple[torch.Tensor | None, Any]:
    checked = runtime.validate(graph)
    assert checked.ok, (checked.error, checked.node_errors)
    CAPTURED.pop(key, None)
    result = runtime.executor.execute(checked.prompt, prompt_id=key)
    assert result.status == "success", result.errors
    return CAPTURED.pop(key, None), result


def saved_png(runtime: Any, result: Any, node_id: str) -> np.ndarray:
    (image,) = result.outputs[node_id]["images"]
    return np.asarray(Image.open(runtime.folders.output_dir / image["subfolder"] / image["filename"]))


def input_image(name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(RGB IMAGE [1, H, W, 3], MASK = 1 - alpha or None) of a shipped example, as LoadImage gives them."""
    with Image.open(INPUTS / name) as picture:
        array = np.asarray(picture.convert("RGBA" if picture.mode == "RGBA" else "RGB"), dtype=np.float32) / 255
    rgb = torch.from_numpy(array[..., :3].copy())[None]
    mask = torch.from_numpy(1.0 - array[..., 3].copy())[None] if array.shape[-1] == 4 else None
    return rgb, mask


def loaders(unet: str) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl-tiny.safetensors",
                                                          "clip_name2": "clip_l-tiny.safetensors", "type": "flux"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae-tiny.safetensors"}},
    }


def sampler(model: list, positive: list, negative: list, latent: list, *, seed: int = 42, steps: int = 4) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": positive, "negative": negative, "latent_image": latent, "denoise": 1.0}}


def decode_and_capture(graph: dict, samples: list, key: str = "out") -> dict:
    graph["90"] = {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": ["3", 0]}}
    graph["91"] = {"class_type": "CaptureImage", "inputs": {"images": ["90", 0], "key": key}}
    return graph


@functools.lru_cache(maxsize=None)
def base_pipeline() -> Any:
    """diffusers FluxPipeline over the zoo's dev folder (its text encoders, VAE, tokenizers are shared)."""
    from diffusers import FluxPipeline  # noqa: PLC0415 - diffusers takes seconds to import

    pipe = FluxPipeline.from_pretrained(str(zoo_base() / "models/diffusers/flux1-dev-tiny"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_pipeline(cls: Any, transformer_folder: str, scheduler: str) -> Any:
    """`cls` (FluxFillPipeline, FluxKontextPipeline) over the base parts and a zoo transformer folder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel  # noqa: PLC0415 - slow import

    base = base_pipeline()
    transformer = FluxTransformer2DModel.from_pretrained(str(zoo_base() / "models/diffusers" / transformer_folder))
    parts = {name: getattr(base, name) for name in ("vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                     "tokenizer_2")}
    pipe = cls(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config(load_config(scheduler)),
               **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_image(images: torch.Tensor) -> torch.Tensor:
    """Pipeline output [B, C, H, W] -> IMAGE [B, H, W, C]."""
    return images.permute(0, 2, 3, 1)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def mean_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())
