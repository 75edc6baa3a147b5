"""Model loaders: UNETLoader, DualCLIPLoader, CLIPLoader, VAELoader, CheckpointLoaderSimple, DiffusersLoader.

UNETLoader and VAELoader load FLUX.1 or FLUX.2, whichever the weights are; CLIPLoader's `type` says which
text encoder is expected ("flux": FLUX.1's clip_l + t5xxl, "flux2": FLUX.2's Qwen3 / Mistral), and a file of
the other family fails validation with a message naming the file and what it holds.

Thin adapters over engine.models: each resolves the chosen name inside the ComfyUI folder layout and
calls the matching `load_*` function. Combo lists are computed from the files really present (and, for
the folder-capable loaders, diffusers/transformers folders; UNETLoader, CLIPLoader and VAELoader also offer
the pipeline folders of models/diffusers as "diffusers/<folder>", DiffusersLoader loads one whole).
Weights stay on the CPU until the memory manager moves them for a run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from engine.core.schema import Combo, Output, node
from engine.core.types import CLIP, MODEL, VAE
from engine.models.common.family import model_choice_problem, model_parts
from engine.models.flux1.checkpoint import load_flux_checkpoint
from engine.models.flux1.text_encoders import load_flux_text_encoders, load_text_encoders_folder
from engine.models.flux1.vae import load_flux_vae
from engine.models.flux2.text_encoders import load_flux2_text_encoder
from engine.models.flux2.transformer import load_diffusion_model

from .common import memory

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")  # engine.models.flux1.transformer's
CLIP_DEVICES = ("default", "cpu")
# Only the FLUX.1 text encoder pair is implemented; ComfyUI's other types (sdxl, sd3, ...) are left out
# so that a workflow asking for them fails validation with the list of what is supported.
DUAL_CLIP_TYPES = ("flux",)
SINGLE_CLIP_TYPES = ("flux", "flux2")
FLUX1_TEXT = (("clip_l", "t5xxl"), "a FLUX.1 text encoder (clip_l / t5xxl) for type 'flux'; a Qwen3 or Mistral "
                                   "encoder is FLUX.2's: use CLIPLoader with type 'flux2'")
FLUX2_TEXT = (("qwen3", "mistral"), "a FLUX.2 text encoder for type 'flux2' (Qwen3 for klein, Mistral for dev); "
                                    "clip_l / t5xxl are FLUX.1's: use type 'flux' or DualCLIPLoader")


def _lister(key: str, include_dirs: bool = False, pipelines: bool = False):
    def choices(folders: Any) -> list[str]:
        if folders is None:
            return []
        return folders.list_models(key, include_dirs=include_dirs, pipelines=pipelines)

    choices.__name__ = f"list_{key}"
    return choices


def _folders(ctx: Any) -> Any:
    folders = getattr(ctx, "folders", None)
    if folders is None:
        raise RuntimeError("this loader needs the models folder layout; the runtime gave none")
    return folders


def _tokenizer_roots(folders: Any) -> list:
    return folders.model_dirs("tokenizers")


def _compute_dtype(ctx: Any) -> Any:
    return memory(ctx).dtype


def _text_encoder_problem(folders: Any, input_name: str, name: Any, expected: tuple) -> str | None:
    return model_choice_problem(folders, "text_encoders", input_name, name, *expected)


def _validate_clip(clip_name: Any = None, type: Any = None, folders: Any = None) -> bool | str:
    if type not in SINGLE_CLIP_TYPES:
        return f"type: '{type}' not in {list(SINGLE_CLIP_TYPES)}"
    expected = FLUX2_TEXT if type == "flux2" else FLUX1_TEXT
    return _text_encoder_problem(folders, "clip_name", clip_name, expected) or True


def _validate_dual_clip(clip_name1: Any = None, clip_name2: Any = None, folders: Any = None) -> bool | str:
    return (_text_encoder_problem(folders, "clip_name1", clip_name1, FLUX1_TEXT)
            or _text_encoder_problem(folders, "clip_name2", clip_name2, FLUX1_TEXT) or True)


def _with_device(encoders: Any, device: str) -> Any:
    """DualCLIPLoader's device 'cpu': the handle asks the text encoding to stay on the CPU."""
    if device != "cpu":
        return encoders

    extra = dict(encoders.extra)
    extra["device"] = "cpu"
    return dataclasses.replace(encoders, extra=tuple(sorted(extra.items())))


@node("UNETLoader", category="advanced/loaders", display_name="Load Diffusion Model",
      inputs=[Combo("unet_name", _lister("diffusion_models", include_dirs=True, pipelines=True)),
              Combo("weight_dtype", WEIGHT_DTYPES)],
      outputs=[MODEL],
      description="Loads a FLUX.1 or FLUX.2 transformer (BFL, ComfyUI or diffusers layout); family and variant "
                  "detected from the weights.")
def unet_loader(ctx: Any, unet_name: str, weight_dtype: str):
    path = _folders(ctx).model_path("diffusion_models", unet_name)
    return (load_diffusion_model(path, weight_dtype=weight_dtype, compute_dtype=_compute_dtype(ctx)),)


@node("DualCLIPLoader", category="advanced/loaders",
      inputs=[Combo("clip_name1", _lister("text_encoders", include_dirs=True)),
              Combo("clip_name2", _lister("text_encoders", include_dirs=True)),
              Combo("type", DUAL_CLIP_TYPES),
              Combo("device", CLIP_DEVICES, optional=True, extra={"advanced": True})],
      outputs=[CLIP], validate_inputs=_validate_dual_clip,
      description="Loads FLUX.1's clip_l and t5xxl text encoders (either order) with offline tokenizers.")
def dual_clip_loader(ctx: Any, clip_name1: str, clip_name2: str, type: str, device: str = "default"):
    folders = _folders(ctx)
    paths = [folders.model_path("text_encoders", name) for name in (clip_name1, clip_name2)]
    encoders = load_flux_text_encoders(paths, _tokenizer_roots(folders), dtype=_compute_dtype(ctx))
    return (_with_device(encoders, device),)


@node("CLIPLoader", category="advanced/loaders", display_name="Load CLIP",
      inputs=[Combo("clip_name", _lister("text_encoders", include_dirs=True, pipelines=True)),
              Combo("type", SINGLE_CLIP_TYPES),
              Combo("device", CLIP_DEVICES, optional=True, extra={"advanced": True})],
      outputs=[CLIP], validate_inputs=_validate_clip,
      description="Loads the text encoders of one file or diffusers pipeline folder: type 'flux' for FLUX.1 "
                  "(a prompt needs both clip_l and t5xxl), 'flux2' for FLUX.2 (Qwen3 for klein, Mistral for dev).")
def clip_loader(ctx: Any, clip_name: str, type: str, device: str = "default"):
    folders = _folders(ctx)
    path = folders.model_path("text_encoders", clip_name)
    if type == "flux2":

        encoders = load_flux2_text_encoder(path, _tokenizer_roots(folders), dtype=_compute_dtype(ctx))
    elif path.is_dir():
        encoders = load_text_encoders_folder(path, _compute_dtype(ctx), _tokenizer_roots(folders))
    else:
        encoders = load_flux_text_encoders([path], _tokenizer_roots(folders), dtype=_compute_dtype(ctx))
    return (_with_device(encoders, device),)


@node("VAELoader", category="loaders", display_name="Load VAE",
      inputs=[Combo("vae_name", _lister("vae", include_dirs=True, pipelines=True))], outputs=[VAE],
      description="Loads the FLUX.1 or FLUX.2 autoencoder (BFL / ComfyUI file or a diffusers folder).")
def vae_loader(ctx: Any, vae_name: str):
    from engine.models.flux2.vae import load_flux2_vae  # noqa: PLC0415 - vae loads torch on first use

    path = _folders(ctx).model_path("vae", vae_name)
    return ((load_flux2_vae if "flux2-vae" in model_parts(path) else load_flux_vae)(path),)


@node("CheckpointLoaderSimple", category="loaders", display_name="Load Checkpoint",
      inputs=[Combo("ckpt_name", _lister("checkpoints", include_dirs=True))],
      outputs=[Output(MODEL, tooltip="The model used for denoising latents."),
               Output(CLIP, tooltip="The CLIP model used for encoding text prompts."),
               Output(VAE, tooltip="The VAE model used for encoding and decoding images to and from latent "
                                   "space.")],
      description="Loads an all-in-one FLUX.1 checkpoint (transformer, text encoders, VAE). Missing parts "
                  "come out as nothing; load them with the separate loaders.")
def checkpoint_loader_simple(ctx: Any, ckpt_name: str):
    folders = _folders(ctx)
    path = folders.model_path("checkpoints", ckpt_name)
    dtype = _compute_dtype(ctx)
    model, encoders, vae = load_flux_checkpoint(path, _tokenizer_roots(folders), compute_dtype=dtype,
                                                encoder_dtype=dtype, vae_dtype=dtype)
    return (model, encoders, vae)


def _pipelines(folders: Any) -> list[str]:
    return [] if folders is None else folders.list_pipelines()


@node("DiffusersLoader", category="advanced/loaders/deprecated",
      inputs=[Combo("model_path", _pipelines)], outputs=[MODEL, CLIP, VAE],
      description="Loads a FLUX.1 or FLUX.2 diffusers pipeline folder of models/diffusers (one holding "
                  "model_index.json): its transformer, text encoders (with the pipeline's own tokenizers) and VAE.")
def diffusers_loader(ctx: Any, model_path: str):
    from engine.models.flux2.vae import load_flux2_vae  # noqa: PLC0415 - vae loads torch on first use

    folders = _folders(ctx)
    path = folders.model_path("diffusers", model_path)
    dtype = _compute_dtype(ctx)
    model = load_diffusion_model(path, compute_dtype=dtype)
    if "flux2-vae" in model_parts(path):
        encoders = load_flux2_text_encoder(path, _tokenizer_roots(folders), dtype=dtype)
        vae = load_flux2_vae(path)
    else:
        encoders = load_text_encoders_folder(path, dtype, _tokenizer_roots(folders))
        vae = load_flux_vae(path)
    return (model, encoders, vae)


NODES = [unet_loader, dual_clip_loader, clip_loader, vae_loader, checkpoint_loader_simple, diffusers_loader]
