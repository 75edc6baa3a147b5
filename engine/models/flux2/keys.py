"""FLUX.2 transformer weights: Black Forest Labs / ComfyUI key layout <-> diffusers Flux2Transformer2DModel.

Our own converter (both directions: loading BFL files, writing the tiny zoo), for the same reason as
FLUX.1's (engine/models/flux1/keys.py): every size comes from the tensors. FLUX.2's layout is simpler than
FLUX.1's: no biases, the modulations are shared by all blocks (`double_stream_modulation_{img,txt}`,
`single_stream_modulation`), and the single block's fused `linear1` maps to one diffusers tensor
(`attn.to_qkv_mlp_proj`) unsplit. Only the double blocks' fused q/k/v are split in three, and the final
modulation's halves are swapped (BFL (shift, scale), diffusers (scale, shift)).

Config conventions for what shapes cannot show (diffusers' defaults, true of every released FLUX.2):
rope over 4 axes of head_dim / 4 each (32, 32, 32, 32 for 128), rope theta 2000, eps 1e-6.
`FLUX2` is the family description the shared loading steps take (engine/models/common/transformer_family.py).
"""

from __future__ import annotations

from typing import Any

from engine.models.common import bfl_keys
from engine.models.common.bfl_keys import SHARED_DOUBLE, SHARED_SINGLE, SHARED_TOP, BflLayout
from engine.models.common.transformer_family import Shape, TransformerFamily, infer_transformer_config

# BFL suffix -> diffusers suffix on top of the renames FLUX.1 shares (bfl_keys.SHARED_*).
_TOP = {
    **SHARED_TOP,
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
}
_DOUBLE = {
    **SHARED_DOUBLE,
    "img_mlp.0": "ff.linear_in",
    "img_mlp.2": "ff.linear_out",
    "txt_mlp.0": "ff_context.linear_in",
    "txt_mlp.2": "ff_context.linear_out",
}
_SINGLE = {**SHARED_SINGLE, "linear1": "attn.to_qkv_mlp_proj", "linear2": "attn.to_out"}
# Keys only FLUX.2 has (its shared modulations): how a file is told apart from FLUX.1.
FLUX2_BFL_MARKER = "single_stream_modulation.lin.weight"
FLUX2_DIFFUSERS_MARKER = "single_stream_modulation.linear.weight"
ROPE_THETA = 2000
ROPE_AXES = 4


class Flux2KeyError(KeyError):
    """A key the converter does not know: not a FLUX.2 transformer."""


LAYOUT = BflLayout(top=_TOP, double=_DOUBLE, single=_SINGLE, error=Flux2KeyError)  # linear1 kept whole


def bfl_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """Convert a BFL-keyed FLUX.2 state dict (prefix already removed) to diffusers keys."""
    return bfl_keys.bfl_to_diffusers(LAYOUT, state)


def diffusers_to_bfl(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `bfl_to_diffusers` (writes the tiny zoo's files in the BFL layout)."""
    return bfl_keys.diffusers_to_bfl(LAYOUT, state)


def rope_axes(head_dim: int) -> list[int]:
    """FLUX.2's rope split of a head: 4 equal axes (32, 32, 32, 32 for 128), each of even width."""
    if head_dim % (2 * ROPE_AXES):
        raise ValueError(f"attention head width {head_dim} is not a multiple of {2 * ROPE_AXES}; cannot split "
                         f"rope over {ROPE_AXES} axes as FLUX.2 does")
    return [head_dim // ROPE_AXES] * ROPE_AXES


def _own_config(shape: Shape, hidden: int) -> dict[str, Any]:
    ff_inner = shape("transformer_blocks.0.ff.linear_out.weight")[1]
    mlp_ratio = ff_inner / hidden
    if int(hidden * mlp_ratio) != ff_inner:
        raise ValueError(f"MLP width {ff_inner} is not a whole multiple of hidden width {hidden}")
    return {"timestep_guidance_channels": shape("time_guidance_embed.timestep_embedder.linear_1.weight")[1],
            "mlp_ratio": mlp_ratio, "rope_theta": ROPE_THETA, "eps": 1e-6}


FLUX2 = TransformerFamily(name="FLUX.2", class_name="Flux2Transformer2DModel", layout=LAYOUT,
                          guidance_key="time_guidance_embed.guidance_embedder.linear_1.weight", rope_axes=rope_axes,
                          own_config=_own_config)


def infer_diffusers_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A Flux2Transformer2DModel config from diffusers-keyed tensor shapes."""
    return infer_transformer_config(FLUX2, shapes)
