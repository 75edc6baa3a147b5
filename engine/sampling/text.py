"""Prompt encoding for FLUX.1: CLIP-L's pooled embedding and T5-XXL's token embeddings.

CLIP-L: padded/truncated to its 77 positions, pooled output as in FluxPipeline. T5: padded to at least
256 tokens (ComfyUI's minimum, and what FLUX.1 schnell was trained with), longer prompts keep their length
up to the encoder handle's `t5_max_length` (512 for dev, 256 for schnell), beyond which they are cut.
For prompts under 256 tokens this is exactly FluxPipeline with `max_sequence_length=256`. Neither encoder
gets an attention mask, as in FluxPipeline and ComfyUI.

A T5 length asked for explicitly (the text encode nodes' `t5_max_length`, 0 meaning ComfyUI's rule above) is
diffusers' `max_sequence_length`: the tokens are padded or cut to exactly that many, as FluxPipeline does
(its default is 512).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.sampling.flux2_text import encode_flux2_prompt

T5_MIN_LENGTH = 256
CLIP_MAX_LENGTH = 77


def _missing(encoders: Any, what: str) -> ValueError:
    source = getattr(encoders, "source", "") or "this CLIP"
    return ValueError(f"{source} has no {what}; FLUX needs both clip_l and t5xxl "
                      "(DualCLIPLoader with type 'flux')")


def t5_length(tokenizer: Any, text: str, max_length: int) -> int:
    """Padded T5 length for `text` (see module docstring)."""
    n_tokens = len(tokenizer(text, truncation=False).input_ids)
    return max(min(max(n_tokens, T5_MIN_LENGTH), max_length), 1)


@torch.no_grad()
def encode_clip_pooled(encoders: Any, text: str, memory: Any) -> torch.Tensor:
    if encoders.clip is None or encoders.clip_tokenizer is None:
        raise _missing(encoders, "CLIP-L text encoder")
    tokenizer = encoders.clip_tokenizer
    max_length = min(int(getattr(tokenizer, "model_max_length", CLIP_MAX_LENGTH) or CLIP_MAX_LENGTH),
                     CLIP_MAX_LENGTH)
    ids = tokenizer([text], padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt").input_ids
    with memory.use(encoders.clip) as clip:
        out = clip(ids.to(memory.device), output_hidden_states=False)
    return out.pooler_output.float().cpu()


@torch.no_grad()
def encode_t5(encoders: Any, text: str, memory: Any, max_length: int = 0) -> torch.Tensor:
    """T5 token embeddings; `max_length` > 0 pads or cuts to exactly that many tokens (diffusers' rule)."""
    if encoders.t5 is None or encoders.t5_tokenizer is None:
        raise _missing(encoders, "T5-XXL text encoder")
    tokenizer = encoders.t5_tokenizer
    length = int(max_length) if max_length else t5_length(tokenizer, text, int(encoders.t5_max_length))
    ids = tokenizer([text], padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt").input_ids
    with memory.use(encoders.t5) as t5:
        out = t5(ids.to(memory.device), output_hidden_states=False)[0]
    return out.float().cpu()


def encode_flux_prompt(encoders: Any, clip_text: str, t5_text: str, memory: Any,
                       t5_max_length: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(T5 embeddings [1, seq, dim], CLIP pooled [1, dim]), CPU float32. A FLUX.2 encoder gives its stacked
    hidden states of `t5_text` (the prompt) and no pooled embedding (`t5_max_length` is FLUX.1's only)."""
    kind = getattr(encoders, "kind", "flux")
    if kind == "flux2":
        return encode_flux2_prompt(encoders, t5_text, memory), None
    if kind != "flux":
        raise ValueError(f"this CLIP is of kind {kind!r}; FLUX.1 prompts need kind 'flux' (clip_l + t5xxl)")
    pooled = encode_clip_pooled(encoders, clip_text, memory)
    embeds = encode_t5(encoders, t5_text, memory, t5_max_length)
    return embeds, pooled

