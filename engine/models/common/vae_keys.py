"""FLUX.1 autoencoder weights: BFL `ae.safetensors` (LDM-style keys) <-> diffusers AutoencoderKL keys.

Renames only, with two structural facts: the decoder's `up.{i}` levels are numbered from the lowest
resolution in BFL but from the highest in diffusers (so the index is reversed), and the mid-block attention
q/k/v/proj are 1x1 convolutions in BFL but linear layers in diffusers (a reshape). Sizes are read from the
tensors (`infer_vae_config`), nothing is hard-coded.
"""

from __future__ import annotations

import re
from typing import Any

_RESNET = {"nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_BACK = {v: k for k, v in _ATTN.items()}


class VaeKeyError(KeyError):
    """A key the VAE converter does not know: not an LDM/BFL autoencoder."""


def _levels(keys: list[str], part: str) -> int:
    pattern = re.compile(rf"^{part}\.(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _linear_from_conv(value: Any) -> Any:
    return value.reshape(value.shape[0], value.shape[1]) if value.ndim == 4 else value


def _conv_from_linear(value: Any) -> Any:
    return value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value


def bfl_vae_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """BFL/LDM autoencoder keys (no prefix) -> diffusers AutoencoderKL keys."""
    keys = list(state)
    up_levels = _levels(keys, "decoder.up")
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = _bfl_key(key, up_levels)
        if new is None:
            raise VaeKeyError(key)
        if ".attentions.0." in new and not new.endswith(("group_norm.weight", "group_norm.bias")):
            value = _linear_from_conv(value)
        out[new] = value
    return out


def _bfl_key(key: str, up_levels: int) -> str | None:
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return None if side not in ("quant_conv", "post_quant_conv") else key
    simple = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}
    head, _, tail = rest.partition(".")
    if head in simple:
        return f"{side}.{simple[head]}.{tail}"
    if m := re.match(r"^mid\.block_(\d)\.(\w+)\.(weight|bias)$", rest):
        return f"{side}.mid_block.resnets.{int(m.group(1)) - 1}.{_RESNET.get(m.group(2), m.group(2))}.{m.group(3)}"
    if m := re.match(r"^mid\.attn_1\.(\w+)\.(weight|bias)$", rest):
        name = _ATTN.get(m.group(1))
        return f"{side}.mid_block.attentions.0.{name}.{m.group(2)}" if name else None
    if m := re.match(r"^(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$", rest):
        level = int(m.group(2)) if m.group(1) == "down" else up_levels - 1 - int(m.group(2))
        blocks = "down_blocks" if m.group(1) == "down" else "up_blocks"
        name = _RESNET.get(m.group(4), m.group(4))
        return f"{side}.{blocks}.{level}.resnets.{m.group(3)}.{name}.{m.group(5)}"
    if m := re.match(r"^down\.(\d+)\.downsample\.conv\.(weight|bias)$", rest):
        return f"{side}.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    if m := re.match(r"^up\.(\d+)\.upsample\.conv\.(weight|bias)$", rest):
        return f"{side}.up_blocks.{up_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    return None


def diffusers_vae_to_bfl(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `bfl_vae_to_diffusers` (used to write the tiny zoo's ae file)."""
    up_levels = _levels(list(state), "decoder.up_blocks")
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = _diffusers_key(key, up_levels)
        if new is None:
            raise VaeKeyError(key)
        if ".attn_1." in new and ".attn_1.norm." not in new:
            value = _conv_from_linear(value)
        out[new] = value
    return out


def _diffusers_key(key: str, up_levels: int) -> str | None:
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return None
    simple = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
    head, _, tail = rest.partition(".")
    if head in simple:
        return f"{side}.{simple[head]}.{tail}"
    back = {v: k for k, v in _RESNET.items()}
    if m := re.match(r"^mid_block\.resnets\.(\d)\.(\w+)\.(weight|bias)$", rest):
        return f"{side}.mid.block_{int(m.group(1)) + 1}.{back.get(m.group(2), m.group(2))}.{m.group(3)}"
    if m := re.match(r"^mid_block\.attentions\.0\.(\w+(?:\.0)?)\.(weight|bias)$", rest):
        name = _ATTN_BACK.get(m.group(1))
        return f"{side}.mid.attn_1.{name}.{m.group(2)}" if name else None
    if m := re.match(r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$", rest):
        level = int(m.group(2)) if m.group(1) == "down" else up_levels - 1 - int(m.group(2))
        return f"{side}.{m.group(1)}.{level}.block.{m.group(3)}.{back.get(m.group(4), m.group(4))}.{m.group(5)}"
    if m := re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$", rest):
        return f"{side}.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    if m := re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$", rest):
        return f"{side}.up.{up_levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
    return None


def infer_vae_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """An AutoencoderKL config from diffusers-keyed shapes. GroupNorm groups cannot be seen in the weights:
    32, as in every FLUX/SD autoencoder."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise VaeKeyError(key)
        return shapes[key]

    levels = _levels(list(shapes), "encoder.down_blocks")
    if levels == 0:
        raise VaeKeyError("encoder.down_blocks.0")
    channels = [shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels)]
    per_block = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down_blocks.0.resnets.")})
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": per_block,
        "act_fn": "silu",
        "latent_channels": shape("decoder.conv_in.weight")[1],
        "norm_num_groups": 32,
        "use_quant_conv": "quant_conv.weight" in shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in shapes,
    }
