"""The key conversion FLUX.1 and FLUX.2 share: Black Forest Labs layout <-> diffusers layout.

Both families name their blocks `double_blocks.N` / `single_blocks.N` (diffusers: `transformer_blocks.N` /
`single_transformer_blocks.N`), fuse the double blocks' q/k/v in one tensor split in three equal parts, and
store the final modulation as (shift, scale) where diffusers has (scale, shift). What differs is data: the
rename tables, and whether the single block's `linear1` is split (FLUX.1: q, k, v of hidden size each plus
the MLP part) or kept whole (FLUX.2). A `BflLayout` holds that data; the two functions do the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

FINAL_MOD = "final_layer.adaLN_modulation.1"
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_D_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
              "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
# The renames both families share (BFL stem -> diffusers stem); each layout adds its own to these.
SHARED_TOP = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out"}
SHARED_DOUBLE = {
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
SHARED_SINGLE = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}


@dataclass(frozen=True)
class BflLayout:
    top: dict[str, str]  # BFL stem -> diffusers stem, outside the blocks (".weight"/".bias" appended)
    double: dict[str, str]  # the same inside a double block
    single: dict[str, str]  # the same inside a single block
    error: type[KeyError]  # raised for a key the layout does not know
    single_fused: tuple[str, ...] = ()  # diffusers parts of a split single-block linear1 (FLUX.1); () = unsplit


def rename(rest: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if rest == src:  # norm scales: full names
            return dst
        if rest.startswith(src + ".") and rest[len(src) + 1:] in ("weight", "bias"):
            return f"{dst}.{rest[len(src) + 1:]}"
    return None


def swap_halves(value: Any) -> Any:
    import torch

    first, second = value.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _single_hidden(state: dict[str, Any], key: str) -> int:
    """Hidden size of a single block: the output width of its linear2 (or the input width of linear1)."""
    block = key.rsplit(".", 2)[0]
    weight = state.get(f"{block}.linear2.weight")
    if weight is not None:
        return int(weight.shape[0])
    return int(state[f"{block}.linear1.weight"].shape[1])


def _renamed(rest: str, table: dict[str, str], key: str, error: type[KeyError]) -> str:
    """`rest` renamed by `table`; `error(key)` when the table does not know it."""
    new = rename(rest, table)
    if new is None:
        raise error(key)
    return new


# Converts one key inside a block: (out, key, value, block kind, block index, key within the block).
BlockConverter = Callable[[dict[str, Any], str, Any, str, str, str], None]


def _convert(state: dict[str, Any], final_mod: tuple[str, str], blocks: re.Pattern[str], top: dict[str, str],
             error: type[KeyError], convert_block: BlockConverter) -> dict[str, Any]:
    """What both directions do with each key: swap the final modulation's halves (stem final_mod[0] becomes
    final_mod[1]), rename keys outside the blocks by `top`, and hand block keys to `convert_block`."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        stem, _, param = key.rpartition(".")
        if stem == final_mod[0]:
            out[f"{final_mod[1]}.{param}"] = swap_halves(value)
            continue
        match = blocks.match(key)
        if match is None:
            out[_renamed(key, top, key, error)] = value
            continue
        convert_block(out, key, value, *match.groups())
    return out


def bfl_to_diffusers(layout: BflLayout, state: dict[str, Any]) -> dict[str, Any]:
    """Convert a BFL-keyed state dict (prefix already removed) to diffusers keys."""
    def convert_block(out: dict[str, Any], key: str, value: Any, kind: str, index: str, rest: str) -> None:
        rest_stem, _, rest_param = rest.rpartition(".")
        if kind == "double_blocks":
            base = f"transformer_blocks.{index}."
            if rest_stem in DOUBLE_QKV:
                for name, part in zip(DOUBLE_QKV[rest_stem], value.chunk(3, dim=0)):
                    out[f"{base}{name}.{rest_param}"] = part
                return
            table = layout.double
        else:
            base = f"single_transformer_blocks.{index}."
            if layout.single_fused and rest_stem == "linear1" and rest_param in ("weight", "bias"):
                hidden = _single_hidden(state, key)
                sizes = [hidden, hidden, hidden, value.shape[0] - 3 * hidden]
                for name, part in zip(layout.single_fused, value.split(sizes, dim=0)):
                    out[f"{base}{name}.{rest_param}"] = part
                return
            table = layout.single
        out[base + _renamed(rest, table, key, layout.error)] = value

    return _convert(state, (FINAL_MOD, "norm_out.linear"), _BLOCK, layout.top, layout.error, convert_block)


def diffusers_to_bfl(layout: BflLayout, state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `bfl_to_diffusers` (used to write files in the BFL layout)."""
    import torch

    double = {v: k for k, v in layout.double.items()}
    single = {v: k for k, v in layout.single.items()}
    fused: dict[str, dict[str, Any]] = {}

    def convert_block(out: dict[str, Any], key: str, value: Any, kind: str, index: str, rest: str) -> None:
        rest_stem, _, rest_param = rest.rpartition(".")
        if kind == "transformer_blocks":
            base = f"double_blocks.{index}."
            target = next((bfl for bfl, parts in DOUBLE_QKV.items() if rest_stem in parts), None)
            if target is not None:
                fused.setdefault(f"{base}{target}.{rest_param}", {})[rest_stem] = value
                return
            table = double
        else:
            base = f"single_blocks.{index}."
            if rest_stem in layout.single_fused:
                fused.setdefault(f"{base}linear1.{rest_param}", {})[rest_stem] = value
                return
            table = single
        out[base + _renamed(rest, table, key, layout.error)] = value

    top = {v: k for k, v in layout.top.items()}
    out = _convert(state, ("norm_out.linear", FINAL_MOD), _D_BLOCK, top, layout.error, convert_block)
    for key, parts in fused.items():
        order = layout.single_fused if ".linear1." in key else DOUBLE_QKV[key.split(".", 2)[2].rsplit(".", 1)[0]]
        missing = [name for name in order if name not in parts]
        if missing:
            raise layout.error(f"{key}: missing parts {missing}")
        out[key] = torch.cat([parts[name] for name in order], dim=0)
    return out
