"""Memory modes and budgets: the command-line flags, and how many device bytes the weights may take.

Modes, as ComfyUI users know them:
- normal (default): the budget is the device's free memory (plus what our own weights hold) minus a reserve
  for activations; models are evicted least recently used first; a model larger than the budget is
  partially loaded and the rest streamed.
- highvram: models stay on the device; no activation reserve beyond a minimum and no partial loading
  (if the device really runs out, out-of-memory recovery streams blocks after all).
- lowvram: one model on the device at a time (offloaded right after use) and a doubled activation
  reserve: the most room for large images.
- novram: only each model's small base stays resident; every block is streamed.
- cpu: everything runs on the CPU; the budget applies to RAM (weights beyond it stay memory-mapped on
  disk and are streamed in).
`--vram-budget GiB` sets the total the engine may use on the device (weights, streaming window and the
activation reserve) instead of measuring free memory.

No torch at import time (the server starts without it).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

GIB = 1 << 30
MIB = 1 << 20
MODES = ("normal", "highvram", "lowvram", "novram", "cpu")
COMPILE_MODES = ("none", "regional", "full")
MIN_RESERVE = 256 * MIB  # kernels' workspaces, the allocator's slack
DEFAULT_RESERVE = {"cuda": 1 * GIB, "cpu": 512 * MIB}  # when a model's activations cannot be estimated
# Bytes per element of the hidden state (batch x tokens x width) at the peak of a FLUX block: q/k/v, the
# MLP's 4x expansion and its activation, the single blocks' concatenation, plus the allocator's rounding.
# An estimate from the block's largest transients; the out-of-memory retry raises it when it falls short.
FLUX_ACTIVATION_FACTOR = 24
FLUX_TRANSFORMERS = ("FluxTransformer2DModel",)


@dataclass(frozen=True)
class MemorySettings:
    mode: str = "normal"
    budget_bytes: int | None = None  # --vram-budget, in bytes; None: measured
    device: str | None = None  # None: CUDA when available, else CPU ("cpu" in cpu mode)
    reserve_bytes: int | None = None  # --reserve-vram: activation reserve; None: estimated per model
    compile: str = "none"  # --compile: "regional" / "full" torch.compile of FLUX transformers (step_cache/compile.py)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"memory mode {self.mode!r} is not one of {list(MODES)}")
        if self.budget_bytes is not None and self.budget_bytes <= 0:
            raise ValueError(f"the memory budget must be positive, got {self.budget_bytes} bytes")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile!r} is not one of {list(COMPILE_MODES)}")
        if self.reserve_bytes is not None and self.reserve_bytes < 0:
            raise ValueError(f"the activation reserve cannot be negative, got {self.reserve_bytes} bytes")

    @property
    def keep_loaded(self) -> bool:
        """Whether models stay on the device after use (until evicted for another)."""
        return self.mode not in ("lowvram", "novram")

    @property
    def stream_all(self) -> bool:
        return self.mode == "novram"

    @property
    def allow_partial(self) -> bool:
        return self.mode != "highvram"

    def activation_reserve(self, device_type: str, estimate: int | None) -> int:
        """Device bytes kept free for activations while a model runs."""
        if self.reserve_bytes is not None:
            return self.reserve_bytes
        if self.mode == "highvram":
            return MIN_RESERVE
        base = estimate if estimate is not None else DEFAULT_RESERVE.get(device_type, DEFAULT_RESERVE["cuda"])
        reserve = max(base, MIN_RESERVE)
        return reserve * 2 if self.mode == "lowvram" else reserve

    def describe(self) -> str:
        budget = f"{self.budget_bytes / GIB:.2f} GiB" if self.budget_bytes else "auto"
        reserve = f", reserve {self.reserve_bytes / GIB:.2f} GiB" if self.reserve_bytes is not None else ""
        return f"mode {self.mode}, budget {budget}{reserve}"


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory", "where model weights live (see docs/memory.md)")
    group.add_argument("--vram-budget", type=float, default=None, metavar="GiB",
                       help="device memory the engine may use in GiB, weights and activations together "
                            "(RAM with --cpu); default: measured free memory")
    group.add_argument("--reserve-vram", type=float, default=None, metavar="GiB",
                       help="device memory kept free for activations in GiB (default: estimated per model "
                            "from the image size and batch)")
    group.add_argument("--compile", choices=COMPILE_MODES, default="none",
                       help="torch.compile FLUX transformers: 'regional' compiles each repeated block class once "
                            "(fast to compile), 'full' the whole model (default: none; see docs/flux.md)")
    modes = group.add_mutually_exclusive_group()
    modes.add_argument("--highvram", dest="memory_mode", action="store_const", const="highvram",
                       help="keep models on the GPU, never load them partially")
    modes.add_argument("--normalvram", dest="memory_mode", action="store_const", const="normal",
                       help="the default: evict least recently used models, stream what does not fit")
    modes.add_argument("--lowvram", dest="memory_mode", action="store_const", const="lowvram",
                       help="one model on the GPU at a time, more room for activations")
    modes.add_argument("--novram", dest="memory_mode", action="store_const", const="novram",
                       help="stream every block from CPU memory; only small parts stay on the GPU")
    modes.add_argument("--cpu", dest="memory_mode", action="store_const", const="cpu",
                       help="run everything on the CPU")


def settings_from_args(args: argparse.Namespace) -> MemorySettings:
    """MemorySettings from parsed `add_memory_arguments` flags; errors name the flag."""
    mode = getattr(args, "memory_mode", None) or "normal"
    budget = getattr(args, "vram_budget", None)
    if budget is not None and not budget > 0:
        raise ValueError(f"--vram-budget must be a positive number of GiB, got {budget}")
    reserve = getattr(args, "reserve_vram", None)
    if reserve is not None and not reserve >= 0:
        raise ValueError(f"--reserve-vram must be zero or a positive number of GiB, got {reserve}")
    return MemorySettings(mode=mode, budget_bytes=int(budget * GIB) if budget is not None else None,
                          device="cpu" if mode == "cpu" else None,
                          reserve_bytes=int(reserve * GIB) if reserve is not None else None,
                          compile=getattr(args, "compile", None) or "none")


def flux_activation_bytes(batch: int, image_tokens: int, text_tokens: int, width: int, itemsize: int) -> int:
    """Estimated peak activation bytes of one FLUX transformer call."""
    return batch * (image_tokens + text_tokens) * width * itemsize * FLUX_ACTIVATION_FACTOR


def estimate_activation_bytes(module: Any, args: tuple, kwargs: dict) -> int | None:
    """Peak activation bytes of this call of `module`, for the models whose shape is known (None: unknown).

    Read from the inputs by duck typing (no torch import): FLUX transformers get hidden_states
    [batch, image tokens, channels] and encoder_hidden_states [batch, text tokens, width]."""
    if type(module).__name__ not in FLUX_TRANSFORMERS:
        return None
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    shape = tuple(getattr(hidden, "shape", ()))
    config = getattr(module, "config", None)
    heads, head_dim = getattr(config, "num_attention_heads", None), getattr(config, "attention_head_dim", None)
    if len(shape) != 3 or not heads or not head_dim:
        return None
    text_tokens = int(getattr(text, "shape", (0, 512))[1]) if text is not None else 512
    itemsize = hidden.element_size() if hasattr(hidden, "element_size") else 2
    return flux_activation_bytes(int(shape[0]), int(shape[1]), text_tokens, int(heads) * int(head_dim), itemsize)


def advice(mode: str, budget_bytes: int | None) -> str:
    """The flag that helps after running out of memory in `mode`."""
    if mode == "highvram":
        return "drop --highvram (models are then loaded partially when they do not fit)"
    if mode == "normal":
        return "use --lowvram (more room for activations), or a smaller image or batch"
    if mode == "lowvram":
        return "use --novram (stream every block), or a smaller image or batch"
    if mode == "novram":
        return "use a smaller image or batch, or --cpu"
    return "use a smaller image or batch, or a smaller --vram-budget so that more weights stay on disk"


def budget_hint(needed: int) -> str:
    return f"--vram-budget {max(needed / GIB, 0.01):.2f}"


def format_bytes(nbytes: int | None) -> str:
    if nbytes is None:
        return "unknown"
    if abs(nbytes) >= GIB:
        return f"{nbytes / GIB:.2f} GiB"
    if abs(nbytes) >= MIB:
        return f"{nbytes / MIB:.1f} MiB"
    if abs(nbytes) >= 1024:
        return f"{nbytes / 1024:.2f} KiB"
    return f"{nbytes} bytes"
