"""Weight patches (LoRA) applied to a module and restored bit for bit.

A `LoraPatch` is a list of low-rank deltas `scale * up @ down` on named Linear weights of one model part
("transformer", "clip" or "t5") with a strength. MODEL and CLIP handles carry their patches (immutable,
`FluxModel.patches`); whoever runs a module wraps the work in

    with apply_patches(module, patches):
        ...

which makes the module's weights equal base + sum(strength * delta) inside the block. The patched state is
kept after the block (the next run with the same patches costs nothing); a run with other patches (or none)
restores the originals first, then applies its own. `restore_weights(module)` puts the originals back
explicitly (the memory manager should call it before it drops or offloads a patched module).

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

PARTS = ("transformer", "clip", "t5")


@dataclass(frozen=True, eq=False)
class WeightDelta:
    """A low-rank update of the weight of module `module` (a path inside the patched part)."""

    module: str
    up: Any  # [out, rank]
    down: Any  # [rank, in]
    scale: float = 1.0  # alpha / rank


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

    def patch_weight(self, key: str, weight: Any) -> Any:
        """`weight` (the parameter `key`, e.g. "transformer_blocks.0.attn.to_q.weight") with this patch's
        deltas added, as a new tensor; for a memory manager that patches weights as it places them."""
        deltas = [d for d in self.deltas if f"{d.module}.weight" == key]
        if not deltas or self.strength == 0.0:
            return weight
        import torch

        total = weight.float()
        for delta in deltas:
            total = total.addmm(delta.up.to(weight.device, torch.float32), delta.down.to(weight.device, torch.float32),
                                alpha=self.strength * delta.scale)
        return total.to(weight.dtype)


def patches_for(patches: Iterable[Any], part: str) -> tuple[LoraPatch, ...]:
    return tuple(p for p in patches if isinstance(p, LoraPatch) and p.part == part)


@dataclass
class _State:
    applied: tuple = ()  # keys of the patches in effect
    originals: dict[str, Any] | None = None  # parameter name -> original tensor (or its backup copy)
    swapped: set[str] | None = None  # names whose original tensor object was swapped out (restore by swap)


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
            _restore(module, state)
            if patches:
                _patch(module, state, patches)
                state.applied = wanted
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
    on_device_ok = _room_for_backups(params, by_weight)
    state.originals, state.swapped = {}, set()
    with torch.no_grad():
        for name, deltas in by_weight.items():
            param = params[name]
            weight = param.data
            total = weight.float()
            for factor, delta in deltas:
                up = delta.up.to(weight.device, torch.float32)
                down = delta.down.to(weight.device, torch.float32)
                if up.shape[0] != weight.shape[0] or down.shape[1] != weight.shape[1]:
                    raise ValueError(f"LoRA delta for {name} is {up.shape[0]}x{down.shape[1]}, the weight is "
                                     f"{weight.shape[0]}x{weight.shape[1]}")
                total = total.addmm(up, down, alpha=factor)  # a new tensor: `weight` stays untouched
            patched = total.to(weight.dtype)
            if weight.device.type == "cpu" or on_device_ok:
                state.originals[name] = weight  # keep the original tensor object: restoring swaps it back
                state.swapped.add(name)
                param.data = patched
            else:
                state.originals[name] = weight.to("cpu", copy=True)
                weight.copy_(patched)


def _room_for_backups(params: dict[str, Any], by_weight: dict[str, Any]) -> bool:
    """Whether GPU weights can keep their originals on the device (twice the patched bytes stay free)."""
    import torch

    cuda = [params[name].data for name in by_weight if params[name].data.is_cuda]
    if not cuda:
        return True
    needed = sum(t.numel() * t.element_size() for t in cuda)
    free, _ = torch.cuda.mem_get_info(cuda[0].device)
    return free > 2 * needed


def _restore(module: Any, state: _State) -> None:
    import torch

    if not state.originals:
        state.applied = ()
        return
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, original in state.originals.items():
            param = params[name]
            same_place = original.device == param.data.device and original.dtype == param.data.dtype
            if name in state.swapped and same_place:
                param.data = original  # the very tensor that was there before patching
            elif name in state.swapped:  # the module was moved since: copy the exact values over
                param.data = original.to(param.data.device, param.data.dtype)
            else:  # patched in place on the GPU: copy the backup back
                param.data.copy_(original)
    state.originals, state.swapped, state.applied = None, None, ()
