"""One description per FLUX transformer family (FLUX.1, FLUX.2) and the loading steps they share.

The two families differ in data, not in steps: their key tables (`BflLayout`), the diffusers class, the
tensor that shows a guidance embedding, how rope splits a head, and a few config fields of their own. A
`TransformerFamily` holds that; the functions here do the rest: read a diffusers folder's own config.json
(the truth for a folder) or infer the config from tensor shapes (only single files, which carry no config),
and build the module, with fp8 block storage when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.models.common.bfl_keys import BflLayout
from engine.models.common.build import instantiate, read_folder_config, weights_dtype
from engine.models.common.fp8 import fp8_dtype, store_blocks_in_fp8
from engine.models.common.safetensors_io import ModelFileError

Shape = Callable[[str], tuple[int, ...]]  # diffusers key -> tensor shape (raises the family's KeyError)


@dataclass(frozen=True)
class TransformerFamily:
    name: str  # "FLUX.1" | "FLUX.2", in messages
    class_name: str  # the diffusers class the config builds
    layout: BflLayout  # BFL <-> diffusers key tables; `layout.error` is the family's unknown-key error
    guidance_key: str  # the diffusers tensor only models with embedded guidance have
    rope_axes: Callable[[int], list[int]]  # attention head width -> rope axes
    own_config: Callable[[Shape, int], dict[str, Any]]  # (shape, hidden width) -> family-only fields (checks the MLP)

    @property
    def error(self) -> type[KeyError]:
        return self.layout.error


def _count(shapes: dict[str, Any], prefix: str) -> int:
    found = {int(k.split(".")[1]) for k in shapes if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def infer_transformer_config(family: TransformerFamily, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The diffusers config of a `family` transformer from its diffusers-keyed tensor shapes (docs/models.md)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise family.error(key)
        return shapes[key]

    hidden, in_channels = shape("x_embedder.weight")
    head_dim = shape("transformer_blocks.0.attn.norm_q.weight")[0]
    if hidden % head_dim:
        raise ValueError(f"hidden width {hidden} is not a multiple of the head width {head_dim}")
    own = family.own_config(shape, hidden)
    return {
        "_class_name": family.class_name,
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shape("proj_out.weight")[0],
        "num_layers": _count(shapes, "transformer_blocks."),
        "num_single_layers": _count(shapes, "single_transformer_blocks."),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shape("context_embedder.weight")[1],
        **own,
        "guidance_embeds": family.guidance_key in shapes,
        "axes_dims_rope": family.rope_axes(head_dim),
    }


def transformer_config(family: TransformerFamily, state: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """`infer_transformer_config` of a state dict, its failures as a ModelFileError naming `source`."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        return infer_transformer_config(family, shapes)
    except family.error as exc:
        raise ModelFileError(source, f"not a {family.name} transformer: tensor {exc.args[0]!r} is missing") from None
    except ValueError as exc:
        raise ModelFileError(source, str(exc)) from None


def folder_transformer_config(family: TransformerFamily, folder: Path) -> dict[str, Any]:
    """The config.json of a diffusers transformer folder, used as it is (sizes are not inferred for folders)."""
    config = read_folder_config(folder)
    if config.get("_class_name") not in (None, family.class_name):
        raise ModelFileError(folder, f"holds a {config.get('_class_name')}, expected a {family.class_name} "
                                     f"({family.name})")
    return config


def _check_rope(model: Any, source: str | Path) -> None:
    """Rope axes that cannot work fail at loading, not in the middle of sampling: they split a head into even
    widths."""
    axes = list(model.config.get("axes_dims_rope") or [])
    head = int(model.config.get("attention_head_dim", 0))
    if axes and (sum(axes) != head or any(int(a) % 2 for a in axes)):
        raise ModelFileError(source, f"config axes_dims_rope {axes} must be even widths adding up to the "
                                     f"attention_head_dim {head}")


def build_transformer(family: TransformerFamily, config: dict[str, Any], state: dict[str, Any],
                      source: str | Path, weight_dtype: str = "default", compute_dtype: Any = None) -> Any:
    """The diffusers module of `config` holding `state`: in `compute_dtype` (None: the state's float dtype),
    Linear weights stored quantized kept so (engine/models/quant/), block Linear weights in fp8 when
    `weight_dtype` asks for it."""
    import diffusers

    cls = getattr(diffusers, family.class_name)
    compute = weights_dtype(state, compute_dtype)
    model = instantiate(lambda: cls.from_config(dict(config)), state, source, dtype=compute)
    _check_rope(model, source)
    fp8 = fp8_dtype(weight_dtype)
    if fp8 is not None:
        store_blocks_in_fp8(model, fp8, fast=weight_dtype == "fp8_e4m3fn_fast")
    return model
