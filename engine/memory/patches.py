"""Weight patches (LoRA) and the memory manager.

Two ways in, both safe with partial loading and streaming:
- the manager's hook: `manager.use(module, patches=(p, ...))` computes each weight as it reaches the device
  with `patch_weight(patches, key, weight)` (default: each patch's `patch_weight(key, weight)` in turn,
  returning a new tensor). Loaded weights are never written; offloading drops the patched copies.
- `engine.models.lora.patch.apply_patches`, which swaps patched tensors into the parameters itself: the
  streaming transports copy whatever a parameter points at, and before the manager moves a module's weights
  it restores the originals (that module re-applies its patches at its next `apply_patches`).
"""

from __future__ import annotations

import sys
from typing import Any

def default_patch_weight(patches: tuple, key: str, weight: Any) -> Any:
    """Apply each patch's `patch_weight(key, weight)` in order (the LoRA pack's patch objects provide it)."""
    for patch in patches:
        apply = getattr(patch, "patch_weight", None)
        if apply is None:
            raise TypeError(f"weight patch {type(patch).__name__} has no patch_weight(key, weight) method")
        weight = apply(key, weight)
    return weight


class ExternalPatches:
    """Patches applied to modules outside the manager, by `engine.models.lora.patch.apply_patches`.

    Its patched weights are swapped into the parameters; before the manager moves weights it restores the
    originals (that module re-applies its patches at its next `apply_patches`), so a patch is never lost
    silently nor left pointing at memory the manager freed."""

    def _lora(self) -> Any:
        return sys.modules.get("engine.models.lora.patch")  # not imported: nothing was patched through it

    def applied(self, module: Any) -> bool:
        lora = self._lora()
        return bool(lora is not None and lora.applied_patches(module))

    def restore(self, module: Any) -> None:
        lora = self._lora()
        if lora is not None:
            lora.restore_weights(module)


