"""Prompt conditioning for FLUX: CLIPTextEncode, CLIPTextEncodeFlux, FluxGuidance, ConditioningZeroOut."""

from __future__ import annotations

import contextlib
from typing import Any

from engine.core.schema import Float, Input, Int, Socket, node
from engine.core.types import CLIP, CONDITIONING, STRING
from engine.memory.manager import MemoryManager
from engine.models.lora.patch import apply_patches, patches_for

from .common import memory


def _prompt(name: str) -> Input:
    """A multiline prompt widget without a default, as ComfyUI declares it."""
    return Input(name, STRING, multiline=True, extra={"dynamicPrompts": True})


# diffusers' `max_sequence_length` (FluxPipeline: 512 by default, at most 512); 0 keeps ComfyUI's T5 length.
T5_MAX_LENGTH_LIMIT = 512


def _t5_max_length() -> Input:
    return Int("t5_max_length", 0, min=0, max=T5_MAX_LENGTH_LIMIT, step=1, optional=True,
               extra={"advanced": True},
               tooltip="0: ComfyUI's T5 length (padded to 256 tokens, longer prompts kept). N: diffusers' "
                       "max_sequence_length, padded or cut to exactly N tokens (FluxPipeline's default is 512).")


def _encode(ctx: Any, clip: Any, clip_text: str, t5_text: str, t5_max_length: int = 0, **options: Any) -> list:
    from engine.sampling.conditioning import make_conditioning  # noqa: PLC0415 - conditioning loads torch on first use
    from engine.sampling.text import encode_flux_prompt  # noqa: PLC0415 - text loads torch on first use

    if clip is None:
        raise ValueError("clip input is None: the CLIP loader produced no text encoder (a checkpoint "
                         "without text encoders?)")


    text_memory = _text_memory(ctx, clip)
    with contextlib.ExitStack() as stack:
        for part in ("clip", "t5"):  # LoraLoader's text-encoder deltas, patched once placed, restored exactly
            module, patches = getattr(clip, part, None), patches_for(getattr(clip, "patches", ()), part)
            if module is not None and patches:
                stack.enter_context(text_memory.use(module))  # place first: placing restores the originals
                stack.enter_context(apply_patches(module, patches))
        embeds, pooled = encode_flux_prompt(clip, clip_text, t5_text, text_memory, int(t5_max_length or 0))
    return make_conditioning(embeds, pooled, **options)


def _text_memory(ctx: Any, clip: Any) -> Any:
    """The run's manager, or a CPU one when the CLIP loader asked for device 'cpu'."""
    if dict(getattr(clip, "extra", ())).get("device") == "cpu":

        return MemoryManager(device="cpu")
    return memory(ctx)


@node("CLIPTextEncode", category="conditioning", display_name="CLIP Text Encode (Prompt)",
      inputs=[_prompt("text"), Socket("clip", CLIP), _t5_max_length()],
      outputs=[CONDITIONING],
      description="Encodes a prompt with both FLUX text encoders (CLIP-L pooled, T5-XXL tokens).")
def clip_text_encode(ctx: Any, text: str, clip: Any, t5_max_length: int = 0):
    return (_encode(ctx, clip, text, text, t5_max_length),)


@node("CLIPTextEncodeFlux", category="advanced/conditioning/flux",
      inputs=[Socket("clip", CLIP), _prompt("clip_l"),
              _prompt("t5xxl"),
              Float("guidance", 3.5, min=0.0, max=100.0, step=0.1), _t5_max_length()],
      outputs=[CONDITIONING],
      description="Encodes separate prompts for CLIP-L and T5-XXL and sets the distilled guidance.")
def clip_text_encode_flux(ctx: Any, clip: Any, clip_l: str, t5xxl: str, guidance: float, t5_max_length: int = 0):
    return (_encode(ctx, clip, clip_l, t5xxl, t5_max_length, guidance=float(guidance)),)


@node("FluxGuidance", category="advanced/conditioning/flux",
      inputs=[Socket("conditioning", CONDITIONING), Float("guidance", 3.5, min=0.0, max=100.0, step=0.1)],
      outputs=[CONDITIONING],
      description="Sets FLUX.1 dev's distilled guidance on every conditioning entry (schnell ignores it).")
def flux_guidance(ctx: Any, conditioning: list, guidance: float):
    from engine.sampling.conditioning import map_options  # noqa: PLC0415 - conditioning loads torch on first use

    return (map_options(conditioning, guidance=float(guidance)),)


@node("ConditioningZeroOut", category="advanced/conditioning",
      inputs=[Socket("conditioning", CONDITIONING)], outputs=[CONDITIONING],
      description="Zeros the embeddings and pooled output (a neutral negative for cfg > 1).")
def conditioning_zero_out(ctx: Any, conditioning: list):
    from engine.sampling.conditioning import zero_out  # noqa: PLC0415 - conditioning loads torch on first use

    return (zero_out(conditioning),)


NODES = [clip_text_encode, clip_text_encode_flux, flux_guidance, conditioning_zero_out]
