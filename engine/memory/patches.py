"""Weight patches (LoRA) and the memory manager.

Weights are patched in one place: `engine.models.lora.patch.apply_patches`, which swaps patched tensors into
the parameters and restores the originals bit for bit. The manager never patches anything; it only has to
know about those swaps. The streaming transports copy whatever a parameter points at, so a patched weight
streams like any other, and before the manager moves a module's weights it restores the originals (that
module re-applies its patches at its next `apply_patches`), so a patch is never lost silently nor left
pointing at memory the manager freed.
"""

from __future__ import annotations

import sys
from typing import Any


class ExternalPatches:
    """The manager's view of `engine.models.lora.patch`: is a module patched, and putting its originals back.

    The LoRA module is looked up, not imported: memory sits below models, and when nobody imported it,
    nothing was patched."""

    def _lora(self) -> Any:
        return sys.modules.get("engine.models.lora.patch")

    def applied(self, module: Any) -> bool:
        lora = self._lora()
        return bool(lora is not None and lora.applied_patches(module))

    def restore(self, module: Any) -> None:
        lora = self._lora()
        if lora is not None:
            lora.restore_weights(module)
