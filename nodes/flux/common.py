"""Inputs and helpers shared by the FLUX nodes (no torch at import time)."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Float, Input, Int
from engine.memory.manager import manager_from

MAX_RESOLUTION = 16384
SEED_MAX = 0xFFFFFFFFFFFFFFFF
# The names of what engine.sampling implements, in ComfyUI's order. Kept here as literals so that
# declaring the nodes imports no torch; tests/test_flux_nodes.py checks they equal engine.sampling's.
SAMPLER_NAMES = ("euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "lcm", "ddim")
SCHEDULER_NAMES = ("simple", "sgm_uniform", "karras", "exponential", "beta", "normal", "kl_optimal")


def seed_input(name: str) -> Input:
    return Int(name, 0, min=0, max=SEED_MAX, extra={"control_after_generate": True})


def cfg_input() -> Input:
    return Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01)


def steps_input() -> Input:
    return Int("steps", 20, min=1, max=10000)


def sampler_combo(v3: bool = False) -> Input:
    extra = {"multiselect": False} if v3 else {}
    return Combo("sampler_name", SAMPLER_NAMES, v3_combo=v3, extra=extra)


def scheduler_combo(v3: bool = False) -> Input:
    extra = {"multiselect": False} if v3 else {}
    return Combo("scheduler", SCHEDULER_NAMES, v3_combo=v3, extra=extra)


def memory(ctx: Any) -> Any:
    """The run's memory manager (a CPU one when the node runs without a runtime, as in unit tests)."""
    return manager_from(getattr(ctx, "models", None))


def progress_callback(ctx: Any):
    """Per-step progress, with the step's preview (a LatentPreview the run renders by its preview method),
    that also honours interrupts (ctx.progress raises Interrupted)."""
    if ctx is None:
        return None
    return _NodeProgress(ctx)


class _NodeProgress:
    """`progress(step, total, preview)`; `report(kind, data)` sends a run's summary (e.g. a step cache's
    skipped steps) to the prompt's client as a `fluxgraph.<kind>` message from this node."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def __call__(self, step: int, total: int, preview: Any = None) -> None:
        self.ctx.progress(step, total, preview)

    def report(self, kind: str, data: dict) -> None:
        send = getattr(self.ctx, "send", None)
        if callable(send):
            send(f"fluxgraph.{kind}", data)
