"""FLUX.1 ControlNets (CONTROL_NET) on diffusers' FluxControlNetModel, from single files in models/controlnet/.

Layouts:
- InstantX / Shakker-Labs (incl. the union models): diffusers keys (`transformer_blocks.*`, `controlnet_blocks.*`,
  `controlnet_x_embedder.*`, `controlnet_mode_embedder.weight` for union), as their
  `diffusion_pytorch_model.safetensors`; the control image goes in as its VAE latent;
- XLabs: BFL keys (`double_blocks.*`, `img_in`, `time_in`...), `controlnet_blocks.*`, `pos_embed_input.*`
  (-> `controlnet_x_embedder`) and `input_hint_block.{0,2,..,14}` (-> diffusers' ControlNetConditioningEmbedding
  conv_in, blocks.0-5, conv_out): the control image goes in as pixels.
A file may carry a `model.diffusion_model.`/`controlnet.` prefix. Sizes come from the weights: depth from the
block counts, width from `x_embedder`, head width from the q norm, text and pooled widths from their
projections, guidance from the guidance embedder, union modes from the mode embedder's rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.common.build import instantiate
from engine.models.common.safetensors_io import ModelFileError, open_safetensors
from engine.models.flux1.keys import FluxKeyError, bfl_to_diffusers, rope_axes

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "controlnet.", "")
_XLABS_HINT = {0: "conv_in", 2: "blocks.0", 4: "blocks.1", 6: "blocks.2", 8: "blocks.3", 10: "blocks.4",
               12: "blocks.5", 14: "conv_out"}
_OWN = ("controlnet_blocks.", "controlnet_single_blocks.", "controlnet_x_embedder.", "controlnet_mode_embedder.",
        "input_hint_block.", "pos_embed_input.")


@dataclass(frozen=True)
class ControlNet:
    """A loaded FLUX ControlNet: the module, its layout and the union mode chosen (SetUnionControlNetType)."""

    model: Any  # diffusers FluxControlNetModel
    layout: str  # "instantx" (latent input) | "xlabs" (pixel input)
    union: bool
    union_type: int | None = None  # None: "auto" (no mode token)
    source: str = ""

    @property
    def takes_latents(self) -> bool:
        return self.model.input_hint_block is None

    def with_union_type(self, union_type: int | None) -> "ControlNet":
        return dataclasses.replace(self, union_type=union_type)


def load_controlnet(path: str | Path) -> ControlNet:
    path = Path(path)
    sf = open_safetensors(path)
    prefix = next((p for p in _PREFIXES if any(k.startswith(p + "controlnet_blocks.") for k in sf.keys())), None)
    if prefix is None:
        raise ModelFileError(path, "not a FLUX ControlNet: no controlnet_blocks.* tensors (InstantX, Shakker-Labs "
                                   "and XLabs FLUX.1 ControlNets are supported)")
    state = {k[len(prefix):]: v for k, v in sf.load().items() if k.startswith(prefix)}
    xlabs = any(k.startswith(("double_blocks.", "pos_embed_input.")) for k in state)
    if xlabs:
        state = xlabs_to_diffusers(state, path)
    config = controlnet_config(state, path)
    from diffusers import FluxControlNetModel  # noqa: PLC0415 - diffusers takes seconds to import

    model = instantiate(lambda: FluxControlNetModel(**config), state, path)
    return ControlNet(model=model, layout="xlabs" if xlabs else "instantx", union=config["num_mode"] is not None,
                      source=str(path))


def xlabs_to_diffusers(state: dict[str, Any], source: Path) -> dict[str, Any]:
    """XLabs keys -> FluxControlNetModel keys (module docstring)."""
    own, rest = {}, {}
    for key, value in state.items():
        if key.startswith("pos_embed_input."):
            own["controlnet_x_embedder." + key[len("pos_embed_input."):]] = value
        elif key.startswith("input_hint_block."):
            _, index, leaf = key.split(".", 2)
            if int(index) not in _XLABS_HINT:
                raise ModelFileError(source, f"unexpected XLabs hint layer {key}")
            own[f"input_hint_block.{_XLABS_HINT[int(index)]}.{leaf}"] = value
        elif key.startswith(_OWN):
            own[key] = value
        else:
            rest[key] = value
    try:
        return {**bfl_to_diffusers(rest), **own}
    except FluxKeyError as exc:
        raise ModelFileError(source, f"unknown ControlNet tensor {exc.args[0]}") from None


def controlnet_config(state: dict[str, Any], source: Path) -> dict[str, Any]:
    """FluxControlNetModel's config read off diffusers-keyed weights."""
    try:
        inner, in_channels = state["x_embedder.weight"].shape
        norm_q = next(k for k in ("transformer_blocks.0.attn.norm_q.weight",
                                  "single_transformer_blocks.0.attn.norm_q.weight") if k in state)
        head = state[norm_q].shape[0]
        joint = state["context_embedder.weight"].shape[1]
        pooled = state["time_text_embed.text_embedder.linear_1.weight"].shape[1]
    except (KeyError, StopIteration) as exc:
        raise ModelFileError(source, f"not a FLUX ControlNet: no {exc.args[0] if exc.args else 'block'}") from None
    mode = state.get("controlnet_mode_embedder.weight")
    hint = state.get("input_hint_block.conv_out.weight")
    return dict(patch_size=1 if hint is None else 2, in_channels=int(in_channels),
                num_layers=_count(state, "transformer_blocks."),
                num_single_layers=_count(state, "single_transformer_blocks."), attention_head_dim=int(head),
                num_attention_heads=int(inner) // int(head), joint_attention_dim=int(joint),
                pooled_projection_dim=int(pooled),
                guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in state,
                axes_dims_rope=rope_axes(int(head)), num_mode=None if mode is None else int(mode.shape[0]),
                conditioning_embedding_channels=None if hint is None else int(hint.shape[0]))


def _count(state: dict[str, Any], prefix: str) -> int:
    indexes = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    return 1 + max(indexes) if indexes else 0
