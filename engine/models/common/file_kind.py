"""What a conditioning-model file holds (LoRA, SigLIP vision tower, Redux embedder, FLUX part), from its
tensor names, so that a file given to the wrong loader gets a message naming the loader it belongs to."""

from __future__ import annotations

from typing import Iterable

_KINDS = (
    ("a FLUX Redux image embedder", "StyleModelLoader (models/style_models)",
     lambda keys: "redux_up.weight" in keys and "redux_down.weight" in keys),
    ("a SigLIP vision model", "CLIPVisionLoader (models/clip_vision)",
     lambda keys: any(k.endswith("embeddings.patch_embedding.weight") for k in keys)),
    ("a LoRA", "LoraLoader (models/loras)",
     lambda keys: any(k.endswith((".lora_A.weight", ".lora_down.weight", ".lora_up.weight", ".lora_B.weight"))
                      for k in keys)),
    ("a FLUX diffusion transformer", "UNETLoader (models/diffusion_models)",
     lambda keys: any(k.endswith(("double_blocks.0.img_attn.qkv.weight", "transformer_blocks.0.attn.to_q.weight"))
                      for k in keys)),
    ("a text encoder", "DualCLIPLoader (models/text_encoders)",
     lambda keys: any(k.endswith(("self_attn.q_proj.weight", "SelfAttention.q.weight")) and "vision" not in k
                      for k in keys)),
    ("a VAE", "VAELoader (models/vae)",
     lambda keys: any(k.endswith(("encoder.down.0.block.0.conv1.weight",
                                  "encoder.down_blocks.0.resnets.0.conv1.weight")) for k in keys)),
)


def file_kind(keys: Iterable[str]) -> tuple[str, str] | None:
    """(what the file holds, the loader that wants it), or None when nothing is recognised."""
    keys = set(keys)
    for what, loader, test in _KINDS:
        if test(keys):
            return what, loader
    return None


def wrong_loader_message(keys: Iterable[str], expected: str) -> str:
    """'expected X, but the file holds Y; load it with Z' (or 'no ... recognised')."""
    found = file_kind(keys)
    if found is None:
        return f"expected {expected}, but none of its tensor names are recognised"
    return f"expected {expected}, but the file holds {found[0]}; load it with {found[1]}"
