"""Shared helpers for the FLUX.2 tests: graphs as ComfyUI users wire them, reference pipelines, images.

The graphs load the tiny zoo's single files (UNETLoader: BFL keys, CLIPLoader type flux2: transformers keys,
VAELoader: BFL keys); the reference pipelines load the zoo's diffusers folders (klein, dev) or are built in
memory from the same seeded components (klein base), so the loaders' key conversion is checked too.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.zoo.flux2 import PIPELINE_FOLDERS, tiny_flux2
from tests.support.flux import PROMPT, zoo_base

TOLERANCE = 1e-4
SENSITIVITY = 0.01
FILES = {
    "klein": ("flux2-klein-4b-tiny.safetensors", "qwen3-4b-tiny.safetensors"),
    "klein-base": ("flux2-klein-base-4b-tiny.safetensors", "qwen3-4b-tiny.safetensors"),
    "dev": ("flux2-dev-tiny.safetensors", "mistral3-small-tiny.safetensors"),
}
VAE_FILE = "flux2-vae-tiny.safetensors"


def flux2_graph(variant: str = "klein", *, width: int = 64, height: int = 48, batch: int = 1, seed: int = 3,
                steps: int = 3, prompt: str = PROMPT, cfg: float = 1.0, negative: str = "",
                guidance: float | None = None, references: tuple[str, ...] = (), key: str = "out",
                sampler: str = "custom") -> dict[str, Any]:
    """UNETLoader + CLIPLoader(flux2) + VAELoader + CLIPTextEncode [+ FluxGuidance] [+ LoadImage -> VAEEncode ->
    ReferenceLatent per reference, on the positive and (with CFG) the negative] + EmptyFlux2LatentImage +
    CFGGuider/RandomNoise/KSamplerSelect/Flux2Scheduler/SamplerCustomAdvanced (or KSampler) + VAEDecode."""
    unet, clip = FILES[variant]
    graph: dict[str, Any] = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip, "type": "flux2"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_FILE}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["2", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["2", 0]}},
        "6": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": width, "height": height,
                                                                 "batch_size": batch}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["3", 0]}},
        "13": {"class_type": "CaptureImage", "inputs": {"images": ["12", 0], "key": key}},
    }
    positive, negative_link = ["4", 0], ["5", 0]
    if guidance is not None:
        graph["20"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": positive, "guidance": guidance}}
        positive = ["20", 0]
    for index, name in enumerate(references):
        load, encode, ref_pos, ref_neg = (str(30 + 4 * index + k) for k in range(4))
        graph[load] = {"class_type": "LoadImage", "inputs": {"image": name}}
        graph[encode] = {"class_type": "VAEEncode", "inputs": {"pixels": [load, 0], "vae": ["3", 0]}}
        graph[ref_pos] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": positive, "latent": [encode, 0]}}
        graph[ref_neg] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": negative_link,
                                                                       "latent": [encode, 0]}}
        positive, negative_link = [ref_pos, 0], [ref_neg, 0]
    if sampler == "ksampler":
        graph["11"] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "simple", "positive": positive, "negative": negative_link, "latent_image": ["6", 0],
            "denoise": 1.0}}
        return graph
    graph.update({
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "8": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": positive,
                                                    "negative": negative_link, "cfg": cfg}},
        "9": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "10": {"class_type": "Flux2Scheduler", "inputs": {"steps": steps, "width": width, "height": height}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["7", 0], "guider": ["8", 0], "sampler": ["9", 0], "sigmas": ["10", 0],
            "latent_image": ["6", 0]}},
    })
    return graph


@functools.lru_cache(maxsize=None)
def reference_pipeline(variant: str) -> Any:
    """The reference pipeline over the zoo's weights (from its diffusers folder where the zoo has one)."""
    from diffusers import Flux2KleinPipeline, Flux2Pipeline  # noqa: PLC0415 - diffusers takes seconds to import
    from diffusers.utils import logging as diffusers_logging  # noqa: PLC0415 - as above

    diffusers_logging.set_verbosity_error()
    if variant not in PIPELINE_FOLDERS:
        return tiny_flux2(variant).pipeline()
    cls = Flux2Pipeline if variant == "dev" else Flux2KleinPipeline
    pipe = cls.from_pretrained(str(zoo_base() / "models" / "diffusers" / PIPELINE_FOLDERS[variant]),
                               local_files_only=True, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(variant: str, *, width: int = 64, height: int = 48, batch: int = 1, seed: int = 3,
                     steps: int = 3, prompt: str = PROMPT, cfg: float = 1.0, guidance: float | None = None,
                     images: list | None = None) -> torch.Tensor:
    """The reference pipeline's images, [B, H, W, C] (IMAGE layout)."""
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    scale = guidance if variant == "dev" else cfg
    out = reference_pipeline(variant)(
        image=images, prompt=[prompt] * batch, height=height, width=width, num_inference_steps=steps,
        guidance_scale=scale if scale is not None else 4.0, generator=generators, output_type="pt").images
    return out.permute(0, 2, 3, 1)


def write_reference_image(folder: Any, name: str, width: int, height: int, seed: int) -> Image.Image:
    """A deterministic smooth colour image (PNG in `folder`) that a VAE encodes to something non-trivial."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    picture = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    folder.mkdir(parents=True, exist_ok=True)
    picture.save(folder / name)
    return picture
