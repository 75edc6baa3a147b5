"""Prompt encoding for FLUX.2, exactly as diffusers' Flux2KleinPipeline (Qwen3) and Flux2Pipeline (Mistral):

- the prompt becomes a conversation through the tokenizer's chat template: klein a single user turn with
  the generation prompt and thinking disabled; dev BFL's system message then the user turn, message content
  as text parts (any "[IMG]" removed from the prompt, as the pipeline does);
- tokens are padded (and cut) to 512 with the attention mask passed to the encoder;
- the hidden states of the encoder's FLUX.2 layers are stacked on the feature axis:
  [1, 512, layers x hidden].
Only the text path of dev's Mistral is used, so its image processor (which needs torchvision) is never
needed: the tokenizer's chat template is enough.
"""

from __future__ import annotations

from typing import Any

import torch


def dev_system_message() -> str:
    """BFL's system message for FLUX.2 dev prompts (shipped with diffusers' Flux2Pipeline)."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE  # noqa: PLC0415 - FLUX.2 dev prompts only

    return SYSTEM_MESSAGE


def tokenize(encoder: Any, text: str) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask [1, max_length] for `text`, in the encoder's conversation format."""
    tokenizer = encoder.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {encoder.source or 'this text encoder'} has no chat template; FLUX.2 "
                         "formats prompts as a conversation (use the tokenizer folder of the FLUX.2 release)")
    length = int(encoder.max_length)
    if encoder.architecture == "qwen3":
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        inputs = tokenizer(chat, return_tensors="pt", padding="max_length", truncation=True, max_length=length)
    else:
        messages = [[{"role": "system", "content": [{"type": "text", "text": dev_system_message()}]},
                     {"role": "user", "content": [{"type": "text", "text": text.replace("[IMG]", "")}]}]]
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True,
                                               return_dict=True, return_tensors="pt", padding="max_length",
                                               truncation=True, max_length=length)
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


@torch.no_grad()
def encode_flux2_prompt(encoder: Any, text: str, memory: Any) -> torch.Tensor:
    """FLUX.2 text embeddings [1, 512, layers x hidden] (CPU float32)."""
    if getattr(encoder, "kind", None) != "flux2":
        raise ValueError(f"this CLIP is of kind {getattr(encoder, 'kind', None)!r}; FLUX.2 prompts need a FLUX.2 "
                         "text encoder (CLIPLoader type 'flux2')")
    inputs = tokenize(encoder, text)
    with memory.use(encoder.model) as model:
        output = model(input_ids=inputs["input_ids"].to(memory.device),
                       attention_mask=inputs["attention_mask"].to(memory.device),
                       output_hidden_states=True, use_cache=False)
    stacked = torch.stack([output.hidden_states[k] for k in encoder.layers], dim=1)  # [B, layers, L, D]
    batch, layers, length, width = stacked.shape
    return stacked.permute(0, 2, 1, 3).reshape(batch, length, layers * width).float().cpu()
