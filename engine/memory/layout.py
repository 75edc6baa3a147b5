"""How a torch module splits into parts: its repeated blocks (streamable) and the base (everything else).

Blocks are the children of the outermost `nn.ModuleList`s with at least two children that hold
parameters: FLUX's transformer_blocks and single_transformer_blocks, T5's encoder.block, CLIP's encoder
layers, the VAE's up/down blocks. Execution order is taken as declaration order (true of these models; the
prefetch schedule learns otherwise). Parameters shared between blocks, and every buffer, belong to the base.

Each parameter remembers its "home" off the device: a view of the mapped model file (no RAM) or an owned
CPU tensor. The device copy and the home are never both owned memory: moving a part onto the device drops an
owned home, and moving it back either re-points at the file view or copies it home again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.memory.mapped import is_mapped, mapped_file_of
from engine.memory.plan import PartSpec

BASE = "(base)"


@dataclass
class ParamSlot:
    """One parameter and where its weights live when not on the device."""

    name: str
    param: Any  # torch.nn.Parameter (the object shared by every module that uses it)
    source: Any  # a view of the mapped model file (costs no RAM, never written), or None
    home: Any = None  # owned CPU memory (plain or pinned) holding the weights, or None

    @property
    def nbytes(self) -> int:
        return self.param.numel() * self.param.element_size()

    @property
    def mapped(self) -> bool:
        return self.source is not None

    def off_device(self) -> Any:
        """The tensor the weights are read from when not on the device."""
        return self.home if self.home is not None else self.source

    def holds_own(self) -> bool:
        """Whether the parameter points at our off-device tensor (not a device copy, nor a tensor someone
        else swapped in, such as a LoRA-patched weight)."""
        return same_tensor(self.param.data, self.off_device())


def same_tensor(a: Any, b: Any) -> bool:
    """Same memory, shape and dtype (`param.data` returns a new alias object at every access)."""
    if a is None or b is None:
        return a is b
    return (a.data_ptr() == b.data_ptr() and a.device == b.device and a.dtype == b.dtype
            and tuple(a.shape) == tuple(b.shape))


@dataclass
class Part:
    name: str
    block: bool
    module: Any  # the block's module (hooks go there); None for the base (no reference to the root, which
    # would keep a model alive through the manager's weak registry)
    params: list[ParamSlot] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.params)

    @property
    def movable_on_cpu(self) -> bool:
        """On a CPU device only file-backed parts can leave (their pages are released)."""
        return all(p.mapped for p in self.params)


def split_module(module: Any) -> list[Part]:
    """Parts of `module` in execution order: the base first, then the blocks."""
    lists = _block_lists(module)
    owner: dict[int, str] = {}
    blocks: list[Part] = []
    for list_name, modules in lists:
        for index, child in enumerate(modules):
            name = f"{list_name}.{index}" if list_name else str(index)
            part = Part(name=name, block=True, module=child)
            blocks.append(part)
            for param in child.parameters():
                key = id(param)
                owner[key] = BASE if key in owner and owner[key] != name else name
    base = Part(name=BASE, block=False, module=None)
    by_name = {p.name: p for p in blocks}
    for qualified, param in module.named_parameters():
        mapped = is_mapped(param.data)
        slot = ParamSlot(name=qualified, param=param, source=param.data if mapped else None,
                         home=None if mapped else param.data)
        by_name.get(owner.get(id(param), BASE), base).params.append(slot)
    return [base] + [p for p in blocks if p.params]


def _block_lists(module: Any) -> list[tuple[str, Any]]:
    from torch import nn

    found: list[tuple[str, Any]] = []
    taken: list[str] = []
    for name, child in module.named_modules():
        if any(name == t or name.startswith(t + ".") for t in taken):
            continue
        if isinstance(child, nn.ModuleList) and sum(1 for c in child if any(True for _ in c.parameters())) >= 2:
            found.append((name, child))
            taken.append(name)
    return found


def part_specs(parts: list[Part], cpu_device: bool) -> tuple[PartSpec, ...]:
    return tuple(PartSpec(name=p.name, nbytes=p.nbytes, block=p.block,
                          movable=(p.movable_on_cpu if cpu_device else True)) for p in parts)


def source_of(parts: list[Part]) -> str:
    """The model file behind the weights, when they are mapped from one."""
    for part in parts:
        for slot in part.params:
            path = mapped_file_of(slot.source) if slot.source is not None else None
            if path is not None:
                return str(path)
    return ""


def buffers_of(module: Any) -> list[tuple[Any, str, Any]]:
    """(owner module, attribute, tensor) of every buffer (all kept with the base)."""
    out = []
    for owner in module.modules():
        for attr, buf in owner._buffers.items():
            if buf is not None:
                out.append((owner, attr, buf))
    return out
