"""Weight patches (LoRA) applied to a module and restored bit for bit.

A `LoraPatch` is a list of low-rank deltas `scale * up @ down` on named Linear weights of one model part
("transformer", "clip" or "t5") with a strength. MODEL and CLIP handles carry their patches (immutable,
`FluxModel.patches`); whoever runs a module wraps the work in

    with apply_patches(module, patches):
        ...

which makes the module's weights equal base + sum(strength * delta) inside the block. The patched state is
kept after the block (the next run with the same patches costs nothing); a run with other patches (or none)
restores the originals first, then applies its own. `restore_weights(module)` puts the originals back
explicitly (the memory manager calls it before it moves or offloads a patched module: engine/memory/patches.py).
This is the one mechanism that patches weights; the memory manager only moves whatever tensors it finds.

Layers stored quantized (fp8, scaled fp8, GGUF) are not rewritten: they get the deltas as a list that their
forward adds after dequantizing the weight (engine/models/quant/layers.py); restoring clears the list.
Originals are kept exactly: a CPU weight is swapped for a patched copy and the original tensor object is
kept (no copy at all); a GPU weight is backed up once (on the device when it has room for it, else in CPU
memory) and patched in place. Restoring copies or swaps the originals back, so the weights are bit-identical
to the unpatched ones (diffusers' unfuse_lora subtracts the delta again and is off by about 1e-8).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

from engine.models.lora.deltas import DELTAS
from engine.models.quant.layers import quantized_layers

PARTS = ("transformer", "clip", "t5")


@dataclass(frozen=True, eq=False)
class WeightDelta:
    """A low-rank update of the weight of module `module` (a path inside the patched part); or, with `full`,
    a weight that replaces it (a control LoRA's norm scales: base + strength * (full - base))."""

    module: str
    up: Any  # [out, rank]
    down: Any  # [rank, in]; wider than the weight only for a widening delta (`widens`)
    scale: float = 1.0  # alpha / rank
    full: Any = None  # a replacement weight of the module's shape (up and down unused)
    widens: bool = False  # the Linear's input grows to down's width (a control LoRA's img_in: 64 -> 128)


@dataclass(frozen=True, eq=False)
class LoraPatch:
    name: str  # file name, for messages
    identity: tuple  # what makes two patches the same (file path, size, mtime, part)
    part: str  # "transformer" | "clip" | "t5"
    deltas: tuple[WeightDelta, ...]
    strength: float = 1.0

    def with_strength(self, strength: float) -> "LoraPatch":
        return replace(self, strength=float(strength))

    @property
    def key(self) -> tuple:
        return (self.identity, self.strength)


def patches_for(patches: Iterable[Any], part: str) -> tuple[LoraPatch, ...]:
    return tuple(p for p in patches if isinstance(p, LoraPatch) and p.part == part)


@dataclass
class _State:
    applied: tuple = ()  # keys of the patches in effect
    originals: dict[str, Any] | None = None  # parameter name -> original tensor (or its backup copy)
    swapped: set[str] | None = None  # names whose original tensor object was swapped out (restore by swap)
    spares: dict[str, Any] | None = None  # patched tensors swapped out, reused as buffers by the next patch
    quantized: list | None = None  # quantized layers given deltas (applied in their forward, never baked in)


_STATES: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()


@contextlib.contextmanager
def apply_patches(module: Any, patches: Iterable[LoraPatch]) -> Iterator[Any]:
    """Make `module`'s weights base + `patches` for the duration (and leave them so, see module docstring)."""
    if module is None:
        yield module
        return
    patches = tuple(p for p in patches if p.strength != 0.0)
    with _LOCK:
        state = _STATES.setdefault(module, _State())
        wanted = tuple(p.key for p in patches)
        if state.applied != wanted:
            _restore(module, state, keep_buffers=bool(patches))
            if patches:
                _patch(module, state, patches)
                state.applied = wanted
            state.spares = None  # buffers the new patches did not reuse are freed
    yield module


def restore_weights(module: Any) -> bool:
    """Put back the original weights of a patched module; returns whether anything was patched."""
    with _LOCK:
        state = _STATES.get(module)
        if state is None or not state.applied:
            return False
        _restore(module, state)
        return True


def applied_patches(module: Any) -> tuple:
    """Keys (identity, strength) of the patches currently in effect on `module`."""
    state = _STATES.get(module)
    return state.applied if state is not None else ()


def _grouped(module: Any, patches: tuple[LoraPatch, ...]) -> dict[str, list[tuple[float, WeightDelta]]]:
    by_weight: dict[str, list[tuple[float, WeightDelta]]] = {}
    params = dict(module.named_parameters())
    for patch in patches:
        for delta in patch.deltas:
            name = f"{delta.module}.weight"
            if name not in params:
                raise KeyError(f"LoRA {patch.name}: no weight {name!r} in the {patch.part} model")
            by_weight.setdefault(name, []).append((patch.strength * delta.scale, delta))
    return by_weight


def _patch(module: Any, state: _State, patches: tuple[LoraPatch, ...]) -> None:
    import torch

    params = dict(module.named_parameters())
    by_weight = _grouped(module, patches)
    state.quantized = _patch_quantized(module, by_weight)
    on_device_ok = _room_for_backups(params, by_weight)
    state.originals, state.swapped = {}, set()
    with torch.no_grad():
        for name, deltas in by_weight.items():
            param = params[name]
            weight = param.data
            spare = (state.spares or {}).pop(name, None)
            reuse = spare is not None and spare.shape == weight.shape and spare.dtype == weight.dtype == torch.float32 \
                and spare.device == weight.device  # writing into last patch's tensor saves fresh allocations
            total, widen = weight.float(), _widening(name, weight, deltas)
            if widen:  # the new input columns start at zero, then get the deltas
                total, reuse = torch.nn.functional.pad(total, (0, widen)), False
            for number, (factor, delta) in enumerate(deltas):
                if delta.full is not None:
                    total = total + factor * (delta.full.to(weight.device, torch.float32) - weight.float())
                    continue
                if weight.ndim != 2 or delta.up.shape[0] != weight.shape[0] or delta.down.shape[1] != total.shape[1]:
                    raise ValueError(f"LoRA delta for {name} is {delta.up.shape[0]}x{delta.down.shape[1]}, the "
                                     f"weight is {weight.shape[0]}x{weight.shape[1]}")
                total = _add_delta(total, delta, factor, weight.device, fresh=number == 0,
                                   out=spare if reuse and number == 0 else None)
            patched = total.to(weight.dtype)
            if weight.device.type == "cpu" or on_device_ok or widen:
                state.originals[name] = weight  # keep the original tensor object: restoring swaps it back
                state.swapped.add(name)
                param.data = patched
                _set_in_features(module, name, patched)
            else:
                state.originals[name] = weight.to("cpu", copy=True)
                weight.copy_(patched)


def _widening(name: str, weight: Any, deltas: list[tuple[float, WeightDelta]]) -> int:
    """How many input columns the patch adds to the weight (the widest widening delta's extra; 0 for none)."""
    if any(d.full is not None and tuple(d.full.shape) != tuple(weight.shape) for _, d in deltas):
        raise ValueError(f"a LoRA replaces {name} with a tensor of another shape than {tuple(weight.shape)}")
    widths = [d.down.shape[1] for _, d in deltas if d.widens and d.full is None]
    return max([weight.shape[-1], *widths]) - weight.shape[-1] if weight.ndim == 2 else 0


def _set_in_features(module: Any, name: str, weight: Any) -> None:
    """Keep a Linear's `in_features` equal to its weight's width (a widening patch changes it, restoring too)."""
    owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
    if hasattr(owner, "in_features") and weight.ndim == 2:
        owner.in_features = int(weight.shape[1])


def _patch_quantized(module: Any, by_weight: dict[str, list[tuple[float, WeightDelta]]]) -> list:
    """Layers stored quantized (engine/models/quant/layers.py) get their deltas as a list their forward adds
    after dequantizing, per layer; their stored weights are never touched. Removes them from `by_weight`."""
    layers = quantized_layers(module)
    patched = []
    for name in [n for n in by_weight if n.removesuffix(".weight") in layers]:
        layer = layers[name.removesuffix(".weight")]
        deltas = by_weight.pop(name)
        for _, delta in deltas:
            if delta.full is not None or delta.widens:  # a control LoRA's replaced or widened weight
                raise ValueError(f"a LoRA replaces or widens {name}, which is stored quantized: load this model "
                                 "from a bf16/fp16 file to use it")
            if delta.up.shape[0] != layer.out_features or delta.down.shape[1] != layer.in_features:
                raise ValueError(f"LoRA delta for {name} is {delta.up.shape[0]}x{delta.down.shape[1]}, the "
                                 f"weight is {layer.out_features}x{layer.in_features}")
        layer.lora_deltas = tuple((factor, d.up, d.down) for factor, d in deltas)
        patched.append(layer)
    return patched


def _add_delta(total: Any, delta: WeightDelta, factor: float, device: Any, fresh: bool, out: Any) -> Any:
    """total + factor * up @ down: a new tensor (or `out`) when `fresh`, else in place. With a cached product
    (engine/models/lora/deltas.py) it is one pass over memory, else one matrix product."""
    import torch

    product = DELTAS.product(delta, device)
    if product is not None:
        if fresh:
            return torch.add(total, product, alpha=factor, out=out) if out is not None else \
                total.add(product, alpha=factor)
        return total.add_(product, alpha=factor)
    up, down = delta.up.to(device, torch.float32), delta.down.to(device, torch.float32)
    if fresh:
        return torch.addmm(total, up, down, alpha=factor, out=out) if out is not None else \
            total.addmm(up, down, alpha=factor)
    return total.addmm_(up, down, alpha=factor)


def _room_for_backups(params: dict[str, Any], by_weight: dict[str, Any]) -> bool:
    """Whether GPU weights can keep their originals on the device (twice the patched bytes stay free)."""
    import torch

    cuda = [params[name].data for name in by_weight if params[name].data.is_cuda]
    if not cuda:
        return True
    needed = sum(t.numel() * t.element_size() for t in cuda)
    free, _ = torch.cuda.mem_get_info(cuda[0].device)
    return free > 2 * needed


def _restore(module: Any, state: _State, keep_buffers: bool = False) -> None:
    import torch

    for layer in state.quantized or ():
        layer.lora_deltas = ()
    state.quantized = None
    if not state.originals:
        state.applied = ()
        return
    params = dict(module.named_parameters())
    state.spares = {}
    with torch.no_grad():
        for name, original in state.originals.items():
            param = params[name]
            same_place = original.device == param.data.device and original.dtype == param.data.dtype
            if name in state.swapped and same_place:
                if keep_buffers and original.shape == param.data.shape:
                    state.spares[name] = param.data
                param.data = original  # the very tensor that was there before patching
            elif name in state.swapped:  # the module was moved since: copy the exact values over
                param.data = original.to(param.data.device, param.data.dtype)
            else:  # patched in place on the GPU: copy the backup back
                param.data.copy_(original)
            _set_in_features(module, name, param.data)
    state.originals, state.swapped, state.applied = None, None, ()
