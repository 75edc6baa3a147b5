"""Latents and text embeddings of a training set, computed once and kept on disk.

Each image's latent is stored under a key made of the VAE's identity, the image file's content hash, its
bucket and the crop mode; each caption's embeddings under the text encoders' identity and the caption. A
model's identity is its file (path, size, modification time) when it was loaded from one, else a hash of its
weights. Re-running on the same data and models reads the cache; editing an image or changing a model encodes
again. After encoding, the text encoders and the VAE are moved off the device (the memory manager's
`offload`): the transformer has the device to itself while training.

Latents are in model space (FLUX.1: (raw - shift) x scale; FLUX.2: the VAE handle's patchified, normalised
latents), the way the training loss takes them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from engine.sampling.flux2_latents import model_latent_format
from engine.sampling.text import encode_flux_prompt
from engine.sampling.vae import encode
from engine.training.flux_lora.dataset import Sample, choose_bucket, load_pixels

FLUX1_T5_LENGTH = 512  # diffusers' training scripts' max_sequence_length: every caption the same length
CACHE_VERSION = "1"


@dataclass(frozen=True)
class CachedSample:
    latent_file: Path
    text_file: Path
    bucket: tuple[int, int]  # (width, height) in pixels
    caption: str


def module_identity(module: Any, source: str = "") -> str:
    """A module's files (path, size, mtime; DualCLIPLoader's handles name two, joined by " + ") and weight dtype
    when `source` names existing files, else a hash of its weights."""
    paths = [Path(part) for part in source.split(" + ")] if source else []
    dtype = str(next((p.dtype for p in module.parameters()), ""))
    if paths and all(path.exists() for path in paths):
        stats = [(path.resolve(), path.stat()) for path in paths]
        return "|".join(f"{path}:{stat.st_size}:{stat.st_mtime_ns}" for path, stat in stats) + f"|{dtype}"
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}:{tensor.dtype}".encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return "weights:" + digest.hexdigest()


def text_modules(clip: Any) -> list[Any]:
    return [m for m in (getattr(clip, "clip", None), getattr(clip, "t5", None), getattr(clip, "model", None))
            if m is not None]


def _key(*parts: str) -> str:
    return hashlib.sha256("|".join((CACHE_VERSION, *parts)).encode()).hexdigest()[:32]


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
    partial.replace(path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def encode_text(clip: Any, caption: str, memory: Any) -> dict[str, torch.Tensor]:
    embeds, pooled = encode_flux_prompt(clip, caption, caption, memory, t5_max_length=FLUX1_T5_LENGTH)
    tensors = {"embeds": embeds[0]}
    if pooled is not None:
        tensors["pooled"] = pooled[0]
    return tensors


def build_cache(samples: list[Sample], buckets: list[tuple[int, int]], center_crop: bool, model: Any, clip: Any,
                vae: Any, memory: Any, cache_dir: Path,
                check_interrupt: Callable[[], None] | None = None) -> tuple[list[CachedSample], dict[str, int]]:
    """Encode what the cache lacks; returns the samples' cache entries and counts (encoded, reused)."""
    cache_dir = Path(cache_dir)
    vae_id = module_identity(vae.vae, getattr(vae, "source", ""))
    text_id = "+".join(module_identity(m, getattr(clip, "source", "")) for m in text_modules(clip))
    family = getattr(model, "family", "flux1")
    fmt = model_latent_format(model)
    counts = {"latents_encoded": 0, "texts_encoded": 0, "reused": 0}
    entries = []
    for sample in samples:
        if check_interrupt is not None:
            check_interrupt()
        bucket = choose_bucket(sample.width, sample.height, buckets)
        latent_key = _key(family, vae_id, sample.sha256, str(bucket), str(center_crop))
        latent_file = cache_dir / "latents" / f"{latent_key}.safetensors"
        text_file = cache_dir / "text" / f"{_key(family, text_id, sample.caption)}.safetensors"
        if not latent_file.is_file():
            pixels = torch.from_numpy(load_pixels(sample, bucket, center_crop))[None]
            latent = fmt.process_in(encode(vae, pixels, memory))
            _save(latent_file, {"latent": latent[0].float().cpu()})
            counts["latents_encoded"] += 1
        else:
            counts["reused"] += 1
        if not text_file.is_file():
            _save(text_file, encode_text(clip, sample.caption, memory))
            counts["texts_encoded"] += 1
        entries.append(CachedSample(latent_file, text_file, bucket, sample.caption))
    for module in [vae.vae, *text_modules(clip)]:  # the transformer gets the device to itself
        memory.offload(module)
    return entries, counts


def load_batch(entries: list[CachedSample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(latents [B, C, h, w], embeds [B, L, D], pooled [B, P] or None) of cache entries of one bucket."""
    latents = torch.stack([load_tensors(e.latent_file)["latent"] for e in entries])
    texts = [load_tensors(e.text_file) for e in entries]
    embeds = torch.stack([t["embeds"] for t in texts])
    pooled = torch.stack([t["pooled"] for t in texts]) if "pooled" in texts[0] else None
    return latents, embeds, pooled
