"""What every step cache shares: per-branch state, the step / call bookkeeping and the run's report.

A branch is one conditioning entry of one side of CFG: ("positive", 0), ("negative", 0), ... Every branch
has its own state, so CFG halves and area/timed conditionings never share cached tensors. All state lives
in the StepCache object made for one `sample()` call and dropped with it: nothing survives the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

log = logging.getLogger("fluxgraph.step_cache")

Branch = tuple[str, int]


@dataclass
class BranchStats:
    evaluations: int = 0  # transformer calls that ran in full
    skipped: int = 0  # transformer calls answered (wholly or mostly) from the cache
    decisions: list[bool] = field(default_factory=list)  # per call: True = computed


class StepCache:
    """Base class: no caching. Subclasses override `denoise` (whole x0 estimate) or `velocity` (one
    transformer call of one branch)."""

    name = "none"

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.stats: dict[Branch, BranchStats] = {}
        self.step = -1  # index of the sampler step being evaluated
        self.sigma = 1.0
        self.total_steps = 0
        self.denoiser: Any = None
        self.messages: list[str] = []  # extra lines for the run's log (e.g. MagCache calibration)
        self.full_calls = 0  # transformer calls that ran in full

    # -- set-up, called by run.attach -------------------------------------------------------------------
    def prepare(self, denoiser: Any, total_steps: int) -> None:
        self.denoiser = denoiser
        self.total_steps = total_steps

    def begin_step(self, x: torch.Tensor, sigma: float) -> None:
        self.step += 1
        self.sigma = sigma
        self.latent_size = (x.shape[-2], x.shape[-1])

    # -- the two places a cache can act --------------------------------------------------------------------
    def denoise(self, original: Callable, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return original(x, sigma)

    def velocity(self, branch: Branch, original: Callable, *args: Any) -> torch.Tensor:
        out = original(*args)
        self.record(branch, True)
        return out

    # -- bookkeeping -------------------------------------------------------------------------------------
    def record(self, branch: Branch, computed: bool, transformer_call: bool = True) -> None:
        """One decision of `branch`; `transformer_call`: the decision was about one transformer call."""
        self.full_calls += int(computed and transformer_call)
        stats = self.stats.setdefault(branch, BranchStats())
        stats.decisions.append(computed)
        if computed:
            stats.evaluations += 1
        else:
            stats.skipped += 1

    def summary(self) -> dict[str, Any]:
        evaluations = self.full_calls
        skipped = sum(s.skipped for s in self.stats.values())
        steps = self.total_steps
        skipped_steps = self.skipped_steps()
        first = next(iter(self.stats.values())).decisions if self.stats else []
        return {"method": self.name, "steps": steps, "skipped_steps": skipped_steps,
                "skipped_at": [i for i, computed in enumerate(first) if not computed],  # the first branch's
                "transformer_evaluations": evaluations, "skipped_evaluations": skipped,
                "branches": {f"{side}:{index}": s.decisions for (side, index), s in self.stats.items()}}

    def skipped_steps(self) -> int:
        """Steps whose first branch was answered from the cache."""
        if not self.stats:
            return 0
        return next(iter(self.stats.values())).skipped

    def log_summary(self) -> str:
        s = self.summary()
        steps, skipped = s["steps"], s["skipped_steps"]
        speedup = steps / (steps - skipped) if steps > skipped else 1.0
        line = (f"{self.name} - skipped {skipped}/{steps} steps ({speedup:.2f}x speedup); "
                f"{s['transformer_evaluations']} transformer evaluations, {s['skipped_evaluations']} skipped")
        return line


def mean_abs(t: torch.Tensor) -> torch.Tensor:
    return t.flatten().abs().mean()
