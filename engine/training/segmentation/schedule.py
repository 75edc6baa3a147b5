"""Learning-rate factor per optimizer step: linear warm-up, then polynomial (Mask2Former's recipe, power 0.9)
or cosine decay over the whole run, as detectron2's WarmupPolyLR / WarmupCosineLR compute it."""

from __future__ import annotations

import math

WARMUP_START_FACTOR = 0.01


def lr_factor(step: int, total_steps: int, *, schedule: str = "poly", warmup_steps: int = 0,
              power: float = 0.9) -> float:
    """Multiplier of the base learning rate for the optimizer step `step` (0-based) out of `total_steps`."""
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "poly":
        decay = (1.0 - progress) ** power
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected 'poly' or 'cosine'")
    if step < warmup_steps:
        alpha = step / warmup_steps
        decay *= WARMUP_START_FACTOR * (1.0 - alpha) + alpha
    return decay
