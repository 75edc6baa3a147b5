"""The tiny model zoo: deterministic tiny random FLUX.1 dev and schnell models in the real file layouts.

`write_tiny_zoo(models_dir)` writes, in a few seconds (names end in "-tiny" so nobody mistakes them for
real weights):

    diffusion_models/flux1-{dev,schnell}-tiny.safetensors      transformer, BFL keys (UNETLoader)
    checkpoints/flux1-{dev,schnell}-tiny-aio.safetensors       ComfyUI all-in-one: model.diffusion_model.,
                                                               text_encoders.{clip_l,t5xxl}.transformer., vae.
    text_encoders/clip_l-tiny.safetensors                      CLIP-L, `text_model.*` keys (+ text_projection)
    text_encoders/t5xxl-tiny.safetensors                       T5 encoder, `encoder.block.*` / `shared.weight`
    vae/ae-tiny.safetensors                                    autoencoder, BFL keys
    diffusion_models/flux1-dev-tiny-{fp8_e4m3fn,fp8_scaled}.safetensors, -{Q8_0,Q4_K}.gguf, text_encoders/
    t5xxl-tiny-Q8_0.gguf                                       quantized variants (engine/zoo/quantized.py)
    diffusers/flux1-{dev,schnell}-tiny/                        diffusers pipeline folders (FluxPipeline layout)
    tokenizers/clip_l-tiny/, tokenizers/t5xxl-tiny/            locally trained tokenizers
    .tiny-zoo.json                                             manifest: zoo version, seed, sha256 per file

plus the conditioning, FLUX.2 and structural-control parts (engine/zoo/conditioning.py, flux2.py, control.py).

`prepare_models(models_dir)` writes it only when no real weights are present (see `real_weights`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.core.file_digest import file_sha256
from engine.models.common.safetensors_io import save_safetensors
from engine.models.common.vae_keys import diffusers_vae_to_bfl
from engine.models.flux1.keys import diffusers_to_bfl
from engine.zoo.conditioning import write_conditioning_zoo
from engine.zoo.control import write_control_zoo
from engine.zoo.files import save_pipeline, save_tokenizer
from engine.zoo.flux1_tiny import TinyComponents, tiny_components, tiny_shared_parts, tiny_transformer
from engine.zoo.flux2 import write_flux2_zoo
from engine.zoo.quantized import write_quantized_zoo
from engine.zoo.segmentation import write_tiny_segmenter

# 2: conditioning models (zoo_conditioning); 3: FLUX.2 (zoo_flux2); 4: control (zoo/control.py);
# 5: fp8, scaled-fp8 and GGUF variants (engine/zoo/quantized.py)
ZOO_VERSION = "5"
MANIFEST = ".tiny-zoo.json"
MODEL_SUFFIXES = frozenset({".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl", ".gguf"})
# folders whose contents decide whether real FLUX weights are present
FLUX_FOLDERS = ("diffusion_models", "unet", "checkpoints", "text_encoders", "clip", "vae", "diffusers")

__all__ = ["TinyComponents", "tiny_components", "write_tiny_zoo", "prepare_models", "real_weights",
           "zoo_is_complete", "ZOO_VERSION"]


def _prefixed(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in state.items()}


def clip_file_state(clip: Any, seed: int) -> dict[str, Any]:
    """CLIP-L as ComfyUI's clip_l.safetensors: `text_model.*` plus the (unused by FLUX) text projection."""
    import torch

    state = {k: v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    state = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}
    hidden = clip.config.hidden_size
    gen = torch.Generator().manual_seed(seed * 1000 + 9)
    state["text_projection.weight"] = torch.randn(hidden, hidden, generator=gen) / hidden ** 0.5
    return state


def t5_file_state(t5: Any) -> dict[str, Any]:
    """T5 encoder as t5xxl_*.safetensors: the tied embedding once, as `shared.weight`."""
    return {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}


def write_tiny_zoo(models_dir: str | Path, seed: int = 0) -> dict[str, str]:
    """Write the tiny zoo under `models_dir`; returns {relative path: sha256} of every file written."""
    models_dir = Path(models_dir)
    shared = tiny_shared_parts(seed)
    meta = {"fluxgraph.tiny_zoo": ZOO_VERSION, "fluxgraph.seed": str(seed)}
    clip_state = clip_file_state(shared.text_encoder, seed)
    t5_state = t5_file_state(shared.text_encoder_2)
    ae_state = diffusers_vae_to_bfl(shared.vae.state_dict())
    written: list[Path] = [
        save_safetensors(clip_state, models_dir / "text_encoders/clip_l-tiny.safetensors", meta),
        save_safetensors(t5_state, models_dir / "text_encoders/t5xxl-tiny.safetensors", meta),
        save_safetensors(ae_state, models_dir / "vae/ae-tiny.safetensors", meta),
    ]
    written += save_tokenizer(shared.tokenizer, models_dir / "tokenizers/clip_l-tiny")
    written += save_tokenizer(shared.tokenizer_2, models_dir / "tokenizers/t5xxl-tiny")
    for variant in ("dev", "schnell"):
        parts = TinyComponents(**{**shared.__dict__, "variant": variant,
                                  "transformer": tiny_transformer(variant, seed)})
        bfl = diffusers_to_bfl(parts.transformer.state_dict())
        variant_meta = dict(meta, **{"fluxgraph.variant": variant})
        written.append(save_safetensors(bfl, models_dir / f"diffusion_models/flux1-{variant}-tiny.safetensors",
                                        variant_meta))
        aio = {**_prefixed("model.diffusion_model.", bfl), **_prefixed("text_encoders.clip_l.transformer.", clip_state),
               **_prefixed("text_encoders.t5xxl.transformer.", t5_state), **_prefixed("vae.", ae_state)}
        written.append(save_safetensors(aio, models_dir / f"checkpoints/flux1-{variant}-tiny-aio.safetensors",
                                        variant_meta))
        written += _save_pipeline_folder(parts, models_dir / f"diffusers/flux1-{variant}-tiny")
        if variant == "dev":  # fp8, scaled-fp8 and GGUF variants (engine/zoo/quantized.py)
            written += write_quantized_zoo(models_dir, bfl, t5_state, meta)
    written += write_conditioning_zoo(models_dir, seed, meta)  # Fill, Kontext, SigLIP/Redux, LoRAs
    written += write_flux2_zoo(models_dir, seed, meta)  # FLUX.2 klein (base, distilled) and dev
    written += write_control_zoo(models_dir, seed, meta)  # Depth/Canny, control LoRA, ControlNets, Depth Anything
    hashes = {p.relative_to(models_dir).as_posix(): file_sha256(p) for p in sorted(written)}
    manifest = {"version": ZOO_VERSION, "seed": seed, "files": hashes}
    (models_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return hashes


def _save_pipeline_folder(parts: TinyComponents, folder: Path) -> list[Path]:
    """A diffusers FluxPipeline folder (model_index.json, transformer/, vae/, text_encoder*/, tokenizer*/,
    scheduler/)."""
    from diffusers import FluxPipeline

    return save_pipeline(lambda: FluxPipeline(**parts.pipeline_kwargs()), folder)


def zoo_is_complete(models_dir: str | Path) -> bool:
    """True when the manifest of the current zoo version lists files that are all present, unmodified in size."""
    models_dir = Path(models_dir)
    try:
        manifest = json.loads((models_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("version") != ZOO_VERSION:
        return False
    return all((models_dir / rel).is_file() for rel in manifest.get("files", {}))


def real_weights(models_dir: str | Path, folders: tuple[str, ...] = FLUX_FOLDERS) -> list[str]:
    """Model files (and diffusers folders) under `folders` that are not part of a tiny zoo ("tiny" in the name)."""
    models_dir = Path(models_dir)
    found: list[str] = []
    for name in folders:
        root = models_dir / name
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            rel = path.relative_to(models_dir)
            if any("tiny" in part.lower() for part in rel.parts):
                continue
            is_model = path.is_file() and path.suffix.lower() in MODEL_SUFFIXES
            is_pipeline = path.is_file() and path.name == "model_index.json"
            if is_model or is_pipeline:
                found.append(rel.as_posix())
    return sorted(found)


def prepare_models(models_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Make sure there is something to run: write the tiny zoo unless real FLUX weights are present or the zoo
    is already complete; likewise the tiny segmenter (engine.zoo.segmentation). Returns what was done, for the
    CLI to report."""
    models_dir = Path(models_dir)
    report: dict[str, Any] = {"models_dir": str(models_dir)}
    real = real_weights(models_dir)
    if real:
        report["flux"] = f"real weights present ({len(real)} files, e.g. {real[0]}); tiny zoo not written"
    elif zoo_is_complete(models_dir):
        report["flux"] = "tiny zoo already present"
    else:
        files = write_tiny_zoo(models_dir, seed)
        report["flux"] = f"tiny zoo written ({len(files)} files)"
    real_seg = real_weights(models_dir, ("segmentation",))
    if real_seg:
        report["segmentation"] = f"real weights present (e.g. {real_seg[0]}); tiny segmenter not written"
    else:
        write_tiny_segmenter(models_dir)
        report["segmentation"] = "tiny segmenter written"
    return report
