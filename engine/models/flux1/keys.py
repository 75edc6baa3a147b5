"""FLUX.1 transformer weights: Black Forest Labs key layout <-> diffusers FluxTransformer2DModel layout.

Our own converter, because diffusers' single-file converter hard-codes the full-size width (3072) and so
cannot load narrower models. Every split size here comes from the tensors themselves: fused q/k/v is split
in three equal parts, the single-block `linear1` into three hidden-size parts plus the MLP part.
Both directions are needed: loading BFL/ComfyUI files, and writing the tiny zoo in the real layout.

The one non-rename: BFL's final modulation is (shift, scale), diffusers' AdaLayerNormContinuous is
(scale, shift), so the halves are swapped.
`FLUX1` is the family description the shared loading steps take (engine/models/common/transformer_family.py).
"""

from __future__ import annotations

from typing import Any

from engine.models.common import bfl_keys
from engine.models.common.bfl_keys import SHARED_DOUBLE, SHARED_SINGLE, SHARED_TOP, BflLayout
from engine.models.common.transformer_family import Shape, TransformerFamily, infer_transformer_config

# BFL suffix -> diffusers suffix, for plain renames (".weight"/".bias" appended by the converter), on top of
# the renames FLUX.2 shares (bfl_keys.SHARED_*).
_TOP = {
    **SHARED_TOP,
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
}
_DOUBLE = {
    **SHARED_DOUBLE,
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_SINGLE = {**SHARED_SINGLE, "modulation.lin": "norm.linear", "linear2": "proj_out"}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


class FluxKeyError(KeyError):
    """A key the converter does not know: the file is not a FLUX.1 transformer (or a newer layout)."""


LAYOUT = BflLayout(top=_TOP, double=_DOUBLE, single=_SINGLE, error=FluxKeyError, single_fused=_SINGLE_FUSED)


def bfl_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """Convert a BFL-keyed FLUX.1 state dict (prefix already removed) to diffusers keys."""
    return bfl_keys.bfl_to_diffusers(LAYOUT, state)


def diffusers_to_bfl(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `bfl_to_diffusers` (used to write files in the BFL layout)."""
    return bfl_keys.diffusers_to_bfl(LAYOUT, state)


def rope_axes(head_dim: int) -> list[int]:
    """FLUX's rope split of a head: (16, 56, 56) for 128; the same proportions (h/8, 7h/16, 7h/16) otherwise."""
    if head_dim % 32:
        raise ValueError(f"attention head width {head_dim} is not a multiple of 32; cannot split rope axes "
                         "as FLUX does (h/8, 7h/16, 7h/16)")
    return [head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16]


def _own_config(shape: Shape, hidden: int) -> dict[str, Any]:
    ff = shape("transformer_blocks.0.ff.net.0.proj.weight")[0]
    if ff != 4 * hidden:
        raise ValueError(f"MLP width {ff} is not 4 x hidden width {hidden}; diffusers' FLUX.1 transformer "
                         "supports only mlp_ratio 4")
    return {"pooled_projection_dim": shape("time_text_embed.text_embedder.linear_1.weight")[1]}


FLUX1 = TransformerFamily(name="FLUX.1", class_name="FluxTransformer2DModel", layout=LAYOUT,
                          guidance_key="time_text_embed.guidance_embedder.linear_1.weight", rope_axes=rope_axes,
                          own_config=_own_config)


def infer_diffusers_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A FluxTransformer2DModel config from diffusers-keyed tensor shapes (see docs/models.md for the rules)."""
    return infer_transformer_config(FLUX1, shapes)


def bfl_shapes_to_diffusers(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Convert a BFL shape table through the real converter, using meta tensors (no memory)."""
    import torch

    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: tuple(v.shape) for k, v in bfl_to_diffusers(meta).items()}
