"""FLUX.1 transformer weights: Black Forest Labs key layout <-> diffusers FluxTransformer2DModel layout.

Our own converter, because diffusers' single-file converter hard-codes the full-size width (3072) and so
cannot load narrower models. Every split size here comes from the tensors themselves: fused q/k/v is split
in three equal parts, the single-block `linear1` into three hidden-size parts plus the MLP part.
Both directions are needed: loading BFL/ComfyUI files, and writing the tiny zoo in the real layout.

The one non-rename: BFL's final modulation is (shift, scale), diffusers' AdaLayerNormContinuous is
(scale, shift), so the halves are swapped.
"""

from __future__ import annotations

import re
from typing import Any

# BFL suffix -> diffusers suffix, for plain renames (".weight"/".bias" appended by the converter).
_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_SINGLE = {
    "modulation.lin": "norm.linear",
    "linear2": "proj_out",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
_DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
               "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
_FINAL_MOD = "final_layer.adaLN_modulation.1"
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_D_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


class FluxKeyError(KeyError):
    """A key the converter does not know: the file is not a FLUX.1 transformer (or a newer layout)."""


def _rename(rest: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if rest == src:  # norm scales: full names
            return dst
        if rest.startswith(src + ".") and rest[len(src) + 1:] in ("weight", "bias"):
            return f"{dst}.{rest[len(src) + 1:]}"
    return None


def _swap_halves(value: Any) -> Any:
    import torch

    first, second = value.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def bfl_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """Convert a BFL-keyed FLUX.1 state dict (prefix already removed) to diffusers keys."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        stem, _, param = key.rpartition(".")
        if stem == _FINAL_MOD:
            out[f"norm_out.linear.{param}"] = _swap_halves(value)
            continue
        match = _BLOCK.match(key)
        if match is None:
            new = _rename(key, _TOP)
            if new is None:
                raise FluxKeyError(key)
            out[new] = value
            continue
        kind, index, rest = match.groups()
        base = f"{'transformer_blocks' if kind == 'double_blocks' else 'single_transformer_blocks'}.{index}."
        if kind == "double_blocks":
            fused = rest.rpartition(".")
            if fused[0] in _DOUBLE_QKV:
                for name, part in zip(_DOUBLE_QKV[fused[0]], value.chunk(3, dim=0)):
                    out[f"{base}{name}.{fused[2]}"] = part
                continue
            new = _rename(rest, _DOUBLE)
        else:
            if rest in ("linear1.weight", "linear1.bias"):
                hidden = _single_hidden(state, key, value)
                sizes = [hidden, hidden, hidden, value.shape[0] - 3 * hidden]
                for name, part in zip(_SINGLE_FUSED, value.split(sizes, dim=0)):
                    out[f"{base}{name}.{rest.split('.')[1]}"] = part
                continue
            new = _rename(rest, _SINGLE)
        if new is None:
            raise FluxKeyError(key)
        out[base + new] = value
    return out


def _single_hidden(state: dict[str, Any], key: str, value: Any) -> int:
    """Hidden size of a single block: the input width of its linear1 (or of linear2's output for the bias)."""
    block = key.rsplit(".", 2)[0]
    weight = state.get(f"{block}.linear2.weight")
    if weight is not None:
        return int(weight.shape[0])
    return int(state[f"{block}.linear1.weight"].shape[1])


def diffusers_to_bfl(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `bfl_to_diffusers` (used to write files in the BFL layout)."""
    import torch

    top = {v: k for k, v in _TOP.items()}
    double = {v: k for k, v in _DOUBLE.items()}
    single = {v: k for k, v in _SINGLE.items()}
    out: dict[str, Any] = {}
    fused: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        stem, _, param = key.rpartition(".")
        if stem == "norm_out.linear":
            out[f"{_FINAL_MOD}.{param}"] = _swap_halves(value)
            continue
        match = _D_BLOCK.match(key)
        if match is None:
            new = _rename(key, top)
            if new is None:
                raise FluxKeyError(key)
            out[new] = value
            continue
        kind, index, rest = match.groups()
        base = f"{'double_blocks' if kind == 'transformer_blocks' else 'single_blocks'}.{index}."
        rest_stem, _, rest_param = rest.rpartition(".")
        if kind == "transformer_blocks":
            target = next((bfl for bfl, parts in _DOUBLE_QKV.items() if rest_stem in parts), None)
            if target is not None:
                fused.setdefault(f"{base}{target}.{rest_param}", {})[rest_stem] = value
                continue
            new = _rename(rest, double)
        else:
            if rest_stem in _SINGLE_FUSED:
                fused.setdefault(f"{base}linear1.{rest_param}", {})[rest_stem] = value
                continue
            new = _rename(rest, single)
        if new is None:
            raise FluxKeyError(key)
        out[base + new] = value
    for key, parts in fused.items():
        order = _SINGLE_FUSED if ".linear1." in key else _DOUBLE_QKV[key.split(".", 2)[2].rsplit(".", 1)[0]]
        missing = [name for name in order if name not in parts]
        if missing:
            raise FluxKeyError(f"{key}: missing parts {missing}")
        out[key] = torch.cat([parts[name] for name in order], dim=0)
    return out


def rope_axes(head_dim: int) -> list[int]:
    """FLUX's rope split of a head: (16, 56, 56) for 128; the same proportions (h/8, 7h/16, 7h/16) otherwise."""
    if head_dim % 32:
        raise ValueError(f"attention head width {head_dim} is not a multiple of 32; cannot split rope axes "
                         "as FLUX does (h/8, 7h/16, 7h/16)")
    return [head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16]


def infer_diffusers_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A FluxTransformer2DModel config from diffusers-keyed tensor shapes (see docs/models.md for the rules)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise FluxKeyError(key)
        return shapes[key]

    hidden, in_channels = shape("x_embedder.weight")
    head_dim = shape("transformer_blocks.0.attn.norm_q.weight")[0]
    if hidden % head_dim:
        raise ValueError(f"hidden width {hidden} is not a multiple of the head width {head_dim}")
    ff = shape("transformer_blocks.0.ff.net.0.proj.weight")[0]
    if ff != 4 * hidden:
        raise ValueError(f"MLP width {ff} is not 4 x hidden width {hidden}; diffusers' FLUX.1 transformer "
                         "supports only mlp_ratio 4")
    double = {int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks.")}
    single = {int(k.split(".")[1]) for k in shapes if k.startswith("single_transformer_blocks.")}
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shape("proj_out.weight")[0],
        "num_layers": max(double) + 1,
        "num_single_layers": max(single) + 1 if single else 0,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shape("context_embedder.weight")[1],
        "pooled_projection_dim": shape("time_text_embed.text_embedder.linear_1.weight")[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in shapes,
        "axes_dims_rope": rope_axes(head_dim),
    }


def bfl_shapes_to_diffusers(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Convert a BFL shape table through the real converter, using meta tensors (no memory)."""
    import torch

    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: tuple(v.shape) for k, v in bfl_to_diffusers(meta).items()}
