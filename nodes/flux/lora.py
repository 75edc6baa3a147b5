"""LoraLoader and LoraLoaderModelOnly for FLUX.1 LoRAs (BFL/ComfyUI, kohya and diffusers/PEFT layouts).

The loaders add patches to new MODEL / CLIP handles (engine/models/lora/loader.py); the base model is never
reloaded. Modules of the file that match nothing are listed in the node's output log ("text") with their
count, and logged.
"""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Float, NodeResult, Socket, node
from engine.core.types import CLIP, MODEL
from engine.models.lora.loader import apply_lora

from .loaders import _folders, _lister


def _strength(name: str) -> Any:
    return Float(name, 1.0, min=-100.0, max=100.0, step=0.01)


def _run(ctx: Any, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float):
    if model is not None and getattr(model, "transformer", None) is None:
        raise TypeError(f"model input is not a FLUX diffusion model (got {type(model).__name__})")
    path = _folders(ctx).model_path("loras", lora_name)
    return apply_lora(path, model, clip, float(strength_model), float(strength_clip))


@node("LoraLoader", category="loaders", display_name="Load LoRA",
      inputs=[Socket("model", MODEL), Socket("clip", CLIP), Combo("lora_name", _lister("loras")),
              _strength("strength_model"), _strength("strength_clip")],
      outputs=[MODEL, CLIP],
      description="Applies a LoRA to the diffusion model and the text encoders; strengths may be negative. "
                  "Chain several to stack them.")
def lora_loader(ctx: Any, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float):
    result = _run(ctx, model, clip, lora_name, strength_model, strength_clip)
    outputs = (result.model, result.clip)
    return NodeResult(outputs=outputs, ui={"text": result.report}) if result.report else outputs


@node("LoraLoaderModelOnly", category="loaders", display_name="LoraLoaderModelOnly",
      inputs=[Socket("model", MODEL), Combo("lora_name", _lister("loras")), _strength("strength_model")],
      outputs=[MODEL],
      description="Applies a LoRA to the diffusion model only.")
def lora_loader_model_only(ctx: Any, model: Any, lora_name: str, strength_model: float):
    result = _run(ctx, model, None, lora_name, strength_model, 0.0)
    return NodeResult(outputs=(result.model,), ui={"text": result.report}) if result.report else (result.model,)


NODES = [lora_loader, lora_loader_model_only]
