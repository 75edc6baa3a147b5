"""The GGUF loader nodes, named and shaped as the community ComfyUI-GGUF pack's (so its workflows load):
UnetLoaderGGUF, UnetLoaderGGUFAdvanced, CLIPLoaderGGUF, DualCLIPLoaderGGUF.

UnetLoaderGGUF offers the .gguf files of diffusion_models/ and unet/; the CLIP loaders offer the .gguf and
the safetensors files of text_encoders/ and clip/ (a GGUF T5 is usually paired with a safetensors clip_l).
Loading is UNETLoader's / CLIPLoader's / DualCLIPLoader's own code (nodes/flux/loaders.py), which reads
GGUF files too: quantized weights stay GGUF blocks in memory and are dequantized per layer when they run
(engine/models/quant/, docs/models.md).
"""

from __future__ import annotations

from typing import Any

from engine.core.folders import GGUF_EXTENSIONS, MODEL_EXTENSIONS
from engine.core.schema import Boolean, Combo, node
from engine.core.types import CLIP, MODEL
from engine.models.common.family import model_choice_problem

from . import loaders

CLIP_EXTENSIONS = MODEL_EXTENSIONS | GGUF_EXTENSIONS
PACK_MODULE = "custom_nodes.ComfyUI-GGUF"  # where ComfyUI's /object_info says these nodes come from


def _lister(key: str, extensions: frozenset[str]):
    def choices(folders: Any) -> list[str]:
        return [] if folders is None else folders.list_models(key, extensions=extensions)

    choices.__name__ = f"list_{key}_gguf"
    return choices


def _problem(folders: Any, input_name: str, name: Any, expected: tuple, extensions: frozenset[str]) -> str | None:
    return model_choice_problem(folders, "text_encoders", input_name, name, *expected, extensions=extensions)


def _validate_clip(clip_name: Any = None, type: Any = None, folders: Any = None) -> bool | str:
    if type not in loaders.SINGLE_CLIP_TYPES:
        return f"type: '{type}' not in {list(loaders.SINGLE_CLIP_TYPES)}"
    expected = loaders.FLUX2_TEXT if type == "flux2" else loaders.FLUX1_TEXT
    return _problem(folders, "clip_name", clip_name, expected, CLIP_EXTENSIONS) or True


def _validate_dual_clip(clip_name1: Any = None, clip_name2: Any = None, folders: Any = None) -> bool | str:
    return (_problem(folders, "clip_name1", clip_name1, loaders.FLUX1_TEXT, CLIP_EXTENSIONS)
            or _problem(folders, "clip_name2", clip_name2, loaders.FLUX1_TEXT, CLIP_EXTENSIONS) or True)


@node("UnetLoaderGGUF", category="bootleg", display_name="Unet Loader (GGUF)", python_module=PACK_MODULE,
      inputs=[Combo("unet_name", _lister("diffusion_models", GGUF_EXTENSIONS))], outputs=[MODEL],
      description="Loads a FLUX.1 or FLUX.2 transformer from a .gguf file (Q8_0, Q6_K, Q5_K, Q5_0/1, Q4_K, "
                  "Q4_0/1, F16, BF16); weights stay quantized and are dequantized per layer.")
def unet_loader_gguf(ctx: Any, unet_name: str):
    return loaders.unet_loader.function(ctx, unet_name=unet_name, weight_dtype="default")


DTYPE_CHOICES = ("default", "target", "float32", "float16", "bfloat16")


@node("UnetLoaderGGUFAdvanced", category="bootleg", display_name="Unet Loader (GGUF/Advanced)",
      python_module=PACK_MODULE,
      inputs=[Combo("unet_name", _lister("diffusion_models", GGUF_EXTENSIONS)),
              Combo("dequant_dtype", DTYPE_CHOICES, default="default"),
              Combo("patch_dtype", DTYPE_CHOICES, default="default"),
              Boolean("patch_on_device", False)],
      outputs=[MODEL],
      description="UnetLoaderGGUF with the pack's precision options, accepted so its workflows load: fluxgraph "
                  "always dequantizes with float32 arithmetic then casts to the compute dtype (the pack's "
                  "'float32' / 'target', bit-exact), and adds LoRA deltas on the layer's own device.")
def unet_loader_gguf_advanced(ctx: Any, unet_name: str, dequant_dtype: str, patch_dtype: str,
                              patch_on_device: bool):
    # The options trade exactness for speed in the pack (fp16 dequantization); fluxgraph keeps one exact path.
    return loaders.unet_loader.function(ctx, unet_name=unet_name, weight_dtype="default")


@node("CLIPLoaderGGUF", category="bootleg", display_name="CLIPLoader (GGUF)", python_module=PACK_MODULE,
      inputs=[Combo("clip_name", _lister("text_encoders", CLIP_EXTENSIONS)),
              Combo("type", loaders.SINGLE_CLIP_TYPES)],
      outputs=[CLIP], validate_inputs=_validate_clip,
      description="Loads a text encoder from a .gguf or safetensors file: type 'flux' for FLUX.1's T5 / "
                  "clip_l, 'flux2' for FLUX.2's Qwen3 / Mistral.")
def clip_loader_gguf(ctx: Any, clip_name: str, type: str):
    return loaders.clip_loader.function(ctx, clip_name=clip_name, type=type)


@node("DualCLIPLoaderGGUF", category="bootleg", display_name="DualCLIPLoader (GGUF)", python_module=PACK_MODULE,
      inputs=[Combo("clip_name1", _lister("text_encoders", CLIP_EXTENSIONS)),
              Combo("clip_name2", _lister("text_encoders", CLIP_EXTENSIONS)),
              Combo("type", loaders.DUAL_CLIP_TYPES)],
      outputs=[CLIP], validate_inputs=_validate_dual_clip,
      description="Loads FLUX.1's clip_l and t5xxl (either order), each from a .gguf or safetensors file.")
def dual_clip_loader_gguf(ctx: Any, clip_name1: str, clip_name2: str, type: str):
    return loaders.dual_clip_loader.function(ctx, clip_name1=clip_name1, clip_name2=clip_name2, type=type)


NODES = [unet_loader_gguf, unet_loader_gguf_advanced, clip_loader_gguf, dual_clip_loader_gguf]
