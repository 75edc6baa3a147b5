"""FLUX.1 LoRA files -> low-rank deltas on our modules, for every layout people download.

Layouts (a file may mix them, e.g. transformer in one and text encoder in another):
- BFL / ComfyUI: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` (or `lora_up`/`lora_down`,
  optional `.alpha`), text encoders under `text_encoders.clip_l.transformer.` / `text_encoders.t5xxl.transformer.`;
- kohya (sd-scripts): `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` + `.alpha`, text encoders
  `lora_te1_` (CLIP-L) and `lora_te3_` (T5-XXL);
- diffusers / PEFT: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, `text_encoder.` (CLIP-L),
  `text_encoder_2.` (T5).
BFL modules that diffusers splits (fused q/k/v, the single blocks' linear1) give each diffusers module its
rows of the up matrix with the shared down matrix; the final modulation's halves are swapped. The row map is
found by running the family's BFL -> diffusers conversion (engine/models/common/bfl_keys.py) on a row-index
probe, so it follows the loader's own key conversion and works at any width (diffusers' kohya converter
hard-codes 3072 / 12288, and it ignores BFL-layout `lora_A`/`lora_B` keys with only a log line). Nothing is
dropped silently: modules that match no model, and keys of kinds not supported (DoRA scales, LoKr, full
diffs), are returned as `unmatched`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.models.common import bfl_keys
from engine.models.common.safetensors_io import ModelFileError
from engine.models.flux1.keys import LAYOUT as FLUX1_LAYOUT
from engine.models.flux2.keys import FLUX2_DIFFUSERS_MARKER, LAYOUT as FLUX2_LAYOUT
from engine.models.lora.patch import LoraPatch, WeightDelta

WIDENING_INPUT = "x_embedder"  # the one module a LoRA may widen (FLUX.1 Depth/Canny LoRAs: 64 -> 128 inputs)
_DOWN = (".lora_A.weight", ".lora_down.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")
_UP = (".lora_B.weight", ".lora_up.weight", ".lora.up.weight", ".lora_linear_layer.up.weight")
_ALPHA = (".alpha",)
# (part, prefixes) in the order they are tried; "" = bare names, decided by what the name starts with.
PREFIXES = {
    "transformer": ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.", ""),
    "clip": ("text_encoders.clip_l.transformer.", "text_encoders.clip_l.", "clip_l.transformer.", "clip_l.",
             "text_encoder.", ""),
    "t5": ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl.", "t5xxl.transformer.", "t5xxl.",
           "text_encoder_2.", ""),
}
KOHYA_PREFIXES = {"lora_unet_": "transformer", "lora_transformer_": "transformer", "lora_te_": "clip",
                  "lora_te1_": "clip", "lora_te2_": "t5", "lora_te3_": "t5"}
# Names that give away another architecture (for a clear error when nothing matches).
_OTHER_ARCHITECTURES = (
    (re.compile(r"(input_blocks|output_blocks|down_blocks|up_blocks|mid_block|middle_block)"),
     "Stable Diffusion 1.x/2.x/XL (UNet)"),
    (re.compile(r"joint_blocks|context_block|x_block"), "Stable Diffusion 3"),
    (re.compile(r"double_stream_modulation|single_stream_modulation|to_qkv_mlp_proj"), "FLUX.2"),
    (re.compile(r"blocks_\d+_(self_attn|cross_attn)|blocks\.\d+\.(self_attn|cross_attn)"), "a video model (Wan)"),
    (re.compile(r"processor\.(proj_lora|qkv_lora)"), "FLUX.1 in the XLabs layout (not supported)"),
)


@dataclass
class LoraModule:
    """The tensors of one LoRA module of a file (the stem its keys share)."""

    stem: str
    down: Any = None
    up: Any = None
    alpha: float | None = None

    @property
    def scale(self) -> float:
        rank = self.down.shape[0]
        return 1.0 if self.alpha is None else float(self.alpha) / rank


@dataclass
class ConvertedLora:
    patches: dict[str, LoraPatch]  # part -> patch (strength 1)
    unmatched: list[str] = field(default_factory=list)  # modules / keys that were not applied, and why
    total_modules: int = 0


def split_modules(state: dict[str, Any]) -> tuple[dict[str, LoraModule], list[str]]:
    """Group keys into modules; returns (modules with both matrices, keys that fit no module)."""
    modules: dict[str, LoraModule] = {}
    leftovers: list[str] = []
    for key, value in state.items():
        for suffixes, role in ((_DOWN, "down"), (_UP, "up"), (_ALPHA, "alpha")):
            suffix = next((s for s in suffixes if key.endswith(s)), None)
            if suffix is not None:
                module = modules.setdefault(key[: -len(suffix)], LoraModule(key[: -len(suffix)]))
                setattr(module, role, float(value.float().reshape(-1)[0]) if role == "alpha" else value)
                break
        else:
            leftovers.append(key)
    complete = {stem: m for stem, m in modules.items() if m.down is not None and m.up is not None}
    for stem, module in modules.items():
        if stem not in complete:
            leftovers.append(f"{stem} (no {'up' if module.up is None else 'down'} matrix)")
    return complete, leftovers


class TargetIndex:
    """Where the modules of one model part are, under every name a LoRA may use for them."""

    def __init__(self, part: str, module: Any) -> None:
        from torch import nn

        self.part = part
        self.linears = {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}
        self.routes: dict[str, list[tuple[str, Any]]] = {name: [(name, None)] for name in self.linears}
        if part == "clip":  # transformers 5 dropped the `text_model.` level; files keep it
            self.routes.update({f"text_model.{name}": [(name, None)] for name in self.linears
                                if not name.startswith("text_model.")})
        if part == "transformer":
            self.routes.update(bfl_routes(module))
        self.kohya = {name.replace(".", "_"): name for name in self.routes}

    def resolve(self, name: str) -> list[tuple[str, Any]] | None:
        return self.routes.get(name)


def bfl_routes(transformer: Any) -> dict[str, list[tuple[str, Any]]]:
    """BFL module name -> [(diffusers module, rows of the BFL up matrix or None)], from the model's shapes."""
    shapes = tuple((k, tuple(v.shape)) for k, v in transformer.state_dict().items())
    return _bfl_routes_for_shapes(shapes)


@functools.lru_cache(maxsize=8)
def _bfl_routes_for_shapes(shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, list[tuple[str, Any]]]:
    import torch

    table = dict(shapes)
    layout = FLUX2_LAYOUT if FLUX2_DIFFUSERS_MARKER in table else FLUX1_LAYOUT
    try:
        bfl = bfl_keys.diffusers_to_bfl(layout, {k: torch.empty(s, device="meta") for k, s in table.items()})
    except layout.error:
        return {}  # not a FLUX transformer: only diffusers names apply
    routes: dict[str, list[tuple[str, Any]]] = {}
    for key, tensor in bfl.items():
        if not key.endswith(".weight") or tensor.ndim != 2:
            continue
        probe = {key: torch.arange(tensor.shape[0], dtype=torch.float64).unsqueeze(1)}
        if key.endswith(".linear1.weight"):  # the converter sizes linear1's parts from linear2
            linear2 = key.replace(".linear1.", ".linear2.")
            probe[linear2] = torch.empty(bfl[linear2].shape, device="meta")
        parts = [(k[: -len(".weight")], v[:, 0].long()) for k, v in bfl_keys.bfl_to_diffusers(layout, probe).items()
                 if not v.is_meta]
        module = key[: -len(".weight")]
        if len(parts) == 1 and parts[0][0] != module and torch.equal(parts[0][1], torch.arange(tensor.shape[0])):
            routes[module] = [(parts[0][0], None)]
        else:
            routes[module] = parts
    return routes


def _route(stem: str, indexes: dict[str, TargetIndex]) -> tuple[str, list[tuple[str, Any]]] | None:
    for prefix, part in KOHYA_PREFIXES.items():
        if stem.startswith(prefix):
            rest = stem[len(prefix):]
            candidates = [part] + [p for p in ("clip", "t5") if part in ("clip", "t5") and p != part]
            for candidate in candidates:
                index = indexes.get(candidate)
                if index is not None and rest in index.kohya:
                    return candidate, index.resolve(index.kohya[rest])
            return None
    for part, prefixes in PREFIXES.items():
        index = indexes.get(part)
        if index is None:
            continue
        for prefix in prefixes:
            if prefix and not stem.startswith(prefix):
                continue
            targets = index.resolve(stem[len(prefix):])
            if targets is not None:
                return part, targets
    return None


def convert_lora(state: dict[str, Any], models: dict[str, Any], source: str | Path,
                 identity: tuple = ()) -> ConvertedLora:
    """Deltas of the LoRA `state` for the given model parts ({"transformer": module, "clip": ..., "t5": ...});
    raises ModelFileError when nothing matches or a shape does not fit."""
    modules, leftovers = split_modules(state)
    indexes = {part: TargetIndex(part, module) for part, module in models.items() if module is not None}
    deltas: dict[str, list[WeightDelta]] = {}
    norms, leftovers = replaced_norms(state, leftovers, models.get("transformer"))
    if norms:
        deltas["transformer"] = norms
    unmatched = [f"{key} (unsupported key kind)" for key in leftovers]
    for stem, module in sorted(modules.items()):
        routed = _route(stem, indexes)
        if routed is None:
            unmatched.append(stem)
            continue
        part, targets = routed
        deltas.setdefault(part, []).extend(_deltas(stem, module, targets, indexes[part], source))
    if not any(deltas.values()):
        raise ModelFileError(source, _nothing_matched(list(modules) + leftovers, list(indexes)))
    name = Path(str(source)).name
    patches = {part: LoraPatch(name=name, identity=(*identity, part), part=part, deltas=tuple(items))
               for part, items in deltas.items()}
    return ConvertedLora(patches=patches, unmatched=unmatched, total_modules=len(modules) + len(leftovers))


def _deltas(stem: str, module: LoraModule, targets: list[tuple[str, Any]], index: TargetIndex,
            source: str | Path) -> list[WeightDelta]:
    down, up = module.down.float(), module.up.float()
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        raise ModelFileError(source, f"LoRA module {stem}: matrices of shapes {tuple(down.shape)} (down) and "
                                     f"{tuple(up.shape)} (up) do not form a low-rank pair")
    out_total = sum(index.linears[name].out_features for name, _ in targets)
    first = index.linears[targets[0][0]]
    # a control LoRA (FLUX.1 Depth/Canny) widens the image input: its img_in down matrix is wider than img_in
    widens = index.part == "transformer" and [name for name, _ in targets] == [WIDENING_INPUT] and \
        down.shape[1] > first.in_features
    if (down.shape[1] != first.in_features and not widens) or up.shape[0] != out_total:
        raise ModelFileError(source, f"LoRA module {stem} is {up.shape[0]}x{down.shape[1]} but the model's "
                                     f"{index.part} layer is {out_total}x{first.in_features}: the LoRA was made "
                                     "for another model (another FLUX size or another architecture)")
    result = []
    for name, rows in targets:
        part_up = up if rows is None else up[rows]
        result.append(WeightDelta(module=name, up=part_up.contiguous(), down=down, scale=module.scale, widens=widens))
    return result


def replaced_norms(state: dict[str, Any], leftovers: list[str],
                   transformer: Any) -> tuple[list[WeightDelta], list[str]]:
    """A control LoRA's full q/k norm scales (BFL `*.norm.query_norm.scale`, or diffusers `*.norm_q.weight`) as
    replacing deltas; returns (deltas, the leftovers that are not such scales)."""
    if transformer is None:
        return [], leftovers
    params = dict(transformer.named_parameters())
    found, rest = [], []
    for key in leftovers:
        target = _norm_target(key, state.get(key), params) if key in state else None
        if target is None:
            rest.append(key)
        else:
            found.append(WeightDelta(module=target[: -len(".weight")], up=None, down=None, full=state[key].float()))
    return found, rest


def _norm_target(key: str, tensor: Any, params: dict[str, Any]) -> str | None:
    for prefix in PREFIXES["transformer"]:
        if prefix and not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.endswith((".norm_q.weight", ".norm_k.weight", ".norm_added_q.weight", ".norm_added_k.weight")):
            target = name
        elif name.endswith(("_norm.scale",)):
            try:
                (target,) = bfl_keys.bfl_to_diffusers(FLUX1_LAYOUT, {name: tensor})
            except (FLUX1_LAYOUT.error, ValueError):
                continue
        else:
            continue
        if target in params and tuple(params[target].shape) == tuple(tensor.shape):
            return target
    return None


def _nothing_matched(names: list[str], parts: list[str]) -> str:
    joined = " ".join(names)
    for pattern, what in _OTHER_ARCHITECTURES:
        if pattern.search(joined):
            return f"a LoRA for {what}, not FLUX.1: none of its {len(names)} modules fit this model"
    sample = ", ".join(names[:3])
    return (f"none of its {len(names)} LoRA modules match the FLUX.1 {' / '.join(parts)} layers (e.g. {sample}); "
            "known layouts: BFL/ComfyUI (diffusion_model.*), kohya (lora_unet_*, lora_te1_*), diffusers/PEFT "
            "(transformer.*, text_encoder.*)")
