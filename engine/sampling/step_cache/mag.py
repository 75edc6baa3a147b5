"""MagCache, with diffusers 0.42's decisions (`MagCacheConfig`, hooks/mag_cache.py).

Per step i the accumulated magnitude ratio r *= mag_ratios[i] and the accumulated error e += |1 - r|; after
the first `retention_ratio` of the steps a step is skipped while e <= threshold, at most `max_skip_steps` in
a row, and a residual exists. A skipped step returns the first block's input plus the residual (image
tokens: last block's output - first block's input) of the last computed step; every block is passed
through. The ratios are the model's (diffusers' FLUX ratios when none are given), interpolated to the
step count by nearest neighbour; `calibrate` skips nothing and logs this run's ratios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from engine.sampling.step_cache.base import StepCache, log
from engine.sampling.step_cache.blocks import (BlockCache, BlockLayout, argument, layout, pack_output,
                                               split_output, transformer_blocks)


def nearest_interp(ratios: torch.Tensor, length: int) -> torch.Tensor:
    """`ratios` resampled to `length` entries by nearest neighbour (ends kept)."""
    if length == 1:
        return ratios[-1:]
    scale = (len(ratios) - 1) / (length - 1)
    grid = torch.arange(length, dtype=torch.float32)
    return ratios[torch.round(grid * scale).long()]


def flux_mag_ratios() -> torch.Tensor:
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS  # noqa: PLC0415 - the published FLUX ratios

    return FLUX_MAG_RATIOS.clone()


@dataclass
class _State:
    previous_residual: torch.Tensor | None = None
    head_input: torch.Tensor | None = None
    should_compute: bool = True
    accumulated_ratio: Any = 1.0  # becomes a float32 tensor as diffusers' does: same rounding, same decisions
    accumulated_err: Any = 0.0
    accumulated_steps: int = 0
    step_index: int = 0
    calibration: list[float] = field(default_factory=list)


class MagCache(BlockCache, StepCache):
    name = "MagCache"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.states = {}
        self.ratios: torch.Tensor | None = None
        self.steps = 0

    def prepare(self, denoiser: Any, total_steps: int) -> None:
        super().prepare(denoiser, total_steps)
        self.steps = self.settings.num_inference_steps or total_steps
        if not self.settings.calibrate:
            ratios = torch.tensor(self.settings.mag_ratios) if self.settings.mag_ratios else flux_mag_ratios()
            self.ratios = ratios if len(ratios) == self.steps else nearest_interp(ratios, self.steps)

    def new_state(self) -> _State:
        return _State()

    def wrappers(self, transformer: Any, state: _State) -> list:
        blocks = [block for _, block in transformer_blocks(transformer)]
        head, rest = blocks[0], blocks[1:]
        return ([(head, partial(self._head, state, head, layout(head)))]
                + [(b, partial(self._block, state, b, layout(b), i == len(rest) - 1)) for i, b in enumerate(rest)])

    def _decide(self, state: _State) -> bool:
        settings = self.settings
        if settings.calibrate:
            return True
        step = state.step_index
        scale = self.ratios[step] if step < len(self.ratios) else 1.0
        if step < int(settings.retention_ratio * self.steps + 0.5):
            return True
        state.accumulated_ratio *= scale
        state.accumulated_steps += 1
        state.accumulated_err += abs(1.0 - state.accumulated_ratio)
        if (state.previous_residual is not None and state.accumulated_err <= settings.threshold
                and state.accumulated_steps <= settings.max_skip_steps):
            return False
        state.accumulated_ratio, state.accumulated_steps, state.accumulated_err = 1.0, 0, 0.0
        return True

    def _head(self, state: _State, block: Any, lay: BlockLayout, forward: Any, *args: Any, **kwargs: Any) -> Any:
        hidden = argument(block, "hidden_states", args, kwargs)
        state.head_input = hidden
        state.should_compute = self._decide(state)
        if state.should_compute:
            return forward(*args, **kwargs)
        residual = state.previous_residual.to(hidden.device)
        if residual.shape == hidden.shape:
            output = hidden + residual
        elif hidden.ndim == 3 and residual.ndim == 3 and hidden.shape[1] > residual.shape[1]:
            output = hidden.clone()  # the residual covers the image tokens, at the end
            output[:, hidden.shape[1] - residual.shape[1]:] += residual
        else:
            log.warning("MagCache: residual %s does not fit the input %s; passing it through",
                        tuple(residual.shape), tuple(hidden.shape))
            output = hidden
        encoder = argument(block, "encoder_hidden_states", args, kwargs) if lay.encoder_index is not None else None
        return pack_output(lay, output, encoder)

    def _block(self, state: _State, block: Any, lay: BlockLayout, is_tail: bool, forward: Any, *args: Any,
               **kwargs: Any) -> Any:
        if not state.should_compute:
            if is_tail:
                self._advance(state)
            hidden = argument(block, "hidden_states", args, kwargs)
            encoder = argument(block, "encoder_hidden_states", args, kwargs) if lay.encoder_index is not None else None
            return pack_output(lay, hidden, encoder)
        output = forward(*args, **kwargs)
        if is_tail and state.head_input is not None:
            out_hidden, _ = split_output(lay, output)
            in_hidden = state.head_input
            if out_hidden.shape[1] != in_hidden.shape[1]:  # FLUX.2: [text; image] joined, image at the end
                out_hidden = out_hidden[:, -in_hidden.shape[1]:]
            residual = out_hidden - in_hidden
            if self.settings.calibrate:
                self._calibrate(state, residual)
            state.previous_residual = residual
            self._advance(state)
        return output

    @staticmethod
    def _calibrate(state: _State, residual: torch.Tensor) -> None:
        if state.previous_residual is None:
            state.calibration.append(1.0)
            return
        current = torch.linalg.norm(residual.float(), dim=-1)
        previous = torch.linalg.norm(state.previous_residual.float(), dim=-1)
        state.calibration.append((current / (previous + 1e-8)).mean().item())

    def _advance(self, state: _State) -> None:
        state.step_index += 1
        if state.step_index >= self.steps:
            if self.settings.calibrate:
                self.messages.append(f"MagCache calibration (mag_ratios): {state.calibration}")
            state.step_index, state.accumulated_ratio, state.accumulated_steps = 0, 1.0, 0
            state.accumulated_err, state.previous_residual, state.calibration = 0.0, None, []
