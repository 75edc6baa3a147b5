"""FLUX.1 autoencoder weights: BFL `ae.safetensors` (LDM-style keys) <-> diffusers AutoencoderKL keys.

Renames only, with two structural facts: the decoder's `up.{i}` levels are numbered from the lowest
resolution in BFL but from the highest in diffusers (so the index is reversed), and the mid-block attention
q/k/v/proj are 1x1 convolutions in BFL but linear layers in diffusers (a reshape). Sizes are read from the
tensors (`infer_vae_config`), nothing is hard-coded.
"""

from __future__ import annotations

import re
from typing import Any, Callable

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
    up_levels = _levels(list(state), "decoder.up")

    def rename(key: str) -> str | None:
        if key.partition(".")[0] in ("quant_conv", "post_quant_conv"):
            return key
        return _rename(key, up_levels, _BFL_HEADS, _BFL_RULES)

    def is_attention_conv(new: str) -> bool:
        return ".attentions.0." in new and not new.endswith(("group_norm.weight", "group_norm.bias"))

    return _convert(state, rename, is_attention_conv, _linear_from_conv)


def diffusers_vae_to_bfl(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `bfl_vae_to_diffusers` (used to write the tiny zoo's ae file)."""
    up_levels = _levels(list(state), "decoder.up_blocks")

    def is_attention_linear(new: str) -> bool:
        return ".attn_1." in new and ".attn_1.norm." not in new

    return _convert(state, lambda key: _rename(key, up_levels, _DIFFUSERS_HEADS, _DIFFUSERS_RULES),
                    is_attention_linear, _conv_from_linear)


def _convert(state: dict[str, Any], rename: Callable[[str], str | None], reshaped: Callable[[str], bool],
             reshape: Callable[[Any], Any]) -> dict[str, Any]:
    """Every key through `rename` (None: unknown, refused); `reshape` the values whose new key is `reshaped`."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = rename(key)
        if new is None:
            raise VaeKeyError(key)
        out[new] = reshape(value) if reshaped(new) else value
    return out


# A rule: a pattern on the key after its `encoder.` / `decoder.` side, and the new key (after the same side) from
# its match and the number of decoder up levels; None for a name the converter does not know.
Rule = tuple[re.Pattern[str], Callable[[re.Match[str], int], str | None]]


def _rename(key: str, up_levels: int, heads: dict[str, str], rules: list[Rule]) -> str | None:
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return None
    head, _, tail = rest.partition(".")
    if head in heads:
        return f"{side}.{heads[head]}.{tail}"
    for pattern, build in rules:
        if m := pattern.match(rest):
            new = build(m, up_levels)
            return f"{side}.{new}" if new else None
    return None


def _level(direction: str, index: str, up_levels: int) -> int:
    """The level of a down/up block: up levels count from the other end in the other layout."""
    return int(index) if direction == "down" else up_levels - 1 - int(index)


_BFL_HEADS = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}
_DIFFUSERS_HEADS = {v: k for k, v in _BFL_HEADS.items()}
_RESNET_BACK = {v: k for k, v in _RESNET.items()}
_BFL_RULES: list[Rule] = [
    (re.compile(r"^mid\.block_(\d)\.(\w+)\.(weight|bias)$"),
     lambda m, up: f"mid_block.resnets.{int(m[1]) - 1}.{_RESNET.get(m[2], m[2])}.{m[3]}"),
    (re.compile(r"^mid\.attn_1\.(\w+)\.(weight|bias)$"),
     lambda m, up: f"mid_block.attentions.0.{_ATTN[m[1]]}.{m[2]}" if m[1] in _ATTN else None),
    (re.compile(r"^(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)$"),
     lambda m, up: f"{m[1]}_blocks.{_level(m[1], m[2], up)}.resnets.{m[3]}.{_RESNET.get(m[4], m[4])}.{m[5]}"),
    (re.compile(r"^down\.(\d+)\.downsample\.conv\.(weight|bias)$"),
     lambda m, up: f"down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"),
    (re.compile(r"^up\.(\d+)\.upsample\.conv\.(weight|bias)$"),
     lambda m, up: f"up_blocks.{_level('up', m[1], up)}.upsamplers.0.conv.{m[2]}"),
]
_DIFFUSERS_RULES: list[Rule] = [
    (re.compile(r"^mid_block\.resnets\.(\d)\.(\w+)\.(weight|bias)$"),
     lambda m, up: f"mid.block_{int(m[1]) + 1}.{_RESNET_BACK.get(m[2], m[2])}.{m[3]}"),
    (re.compile(r"^mid_block\.attentions\.0\.(\w+(?:\.0)?)\.(weight|bias)$"),
     lambda m, up: f"mid.attn_1.{_ATTN_BACK[m[1]]}.{m[2]}" if m[1] in _ATTN_BACK else None),
    (re.compile(r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)$"),
     lambda m, up: f"{m[1]}.{_level(m[1], m[2], up)}.block.{m[3]}.{_RESNET_BACK.get(m[4], m[4])}.{m[5]}"),
    (re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$"),
     lambda m, up: f"down.{m[1]}.downsample.conv.{m[2]}"),
    (re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$"),
     lambda m, up: f"up.{_level('up', m[1], up)}.upsample.conv.{m[2]}"),
]


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
