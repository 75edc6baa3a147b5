"""First-Block-Cache, with diffusers 0.42's decisions (`FirstBlockCacheConfig`, hooks/first_block_cache.py).

The first block always runs. Its hidden-state residual (output - input) is compared with the one of the
last computed step: relative mean absolute difference = mean|r - r_prev| / mean|r_prev|. Above `threshold`
every other block runs and the residual the blocks after the first added (last block's output - first
block's output) is stored; at or below it the first block's output plus that stored residual stands for
the whole stack and the other blocks are passed through.

FLUX.2: diffusers' hook fails there (its last single block returns the joined text+image sequence, which it
subtracts from a list: TypeError). Here the stored residual of a joined output is split back into its text
and image parts, so a skipped step still hands the single blocks what a computed one would have given.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from engine.sampling.step_cache.base import StepCache
from engine.sampling.step_cache.blocks import (BlockCache, BlockLayout, argument, layout, pack_output,
                                               split_output, transformer_blocks)


@dataclass
class _State:
    head_output: tuple[torch.Tensor, torch.Tensor | None] | None = None
    head_residual: torch.Tensor | None = None
    tail_residuals: tuple[torch.Tensor, torch.Tensor | None] | None = None
    should_compute: bool = True
    last_difference: float | None = None


class FirstBlockCache(BlockCache, StepCache):
    name = "FirstBlockCache"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.states = {}

    def new_state(self) -> _State:
        return _State()

    def wrappers(self, transformer: Any, state: _State) -> list:
        blocks = [block for _, block in transformer_blocks(transformer)]
        head, middle, tail = blocks[0], blocks[1:-1], blocks[-1]
        return ([(head, partial(self._head, state, head, layout(head)))]
                + [(b, partial(self._pass, state, b, layout(b), False)) for b in middle]
                + [(tail, partial(self._pass, state, tail, layout(tail), True))])

    def _head(self, state: _State, block: Any, lay: BlockLayout, forward: Any, *args: Any, **kwargs: Any) -> Any:
        hidden_in = argument(block, "hidden_states", args, kwargs)
        output = forward(*args, **kwargs)
        hidden, encoder = split_output(lay, output)
        residual = hidden - hidden_in
        state.should_compute = self._should_compute(state, residual)
        if not state.should_compute:
            tail_hidden, tail_encoder = state.tail_residuals
            return pack_output(lay, tail_hidden + hidden,
                               tail_encoder + encoder if lay.encoder_index is not None else None)
        state.head_output = (hidden, encoder)
        state.head_residual = residual
        return output

    def _should_compute(self, state: _State, residual: torch.Tensor) -> bool:
        previous = state.head_residual
        if previous is None:
            return True
        difference = ((residual - previous).abs().mean() / previous.abs().mean()).item()
        state.last_difference = difference
        return difference > self.settings.threshold

    def _pass(self, state: _State, block: Any, lay: BlockLayout, is_tail: bool, forward: Any, *args: Any,
              **kwargs: Any) -> Any:
        if state.should_compute:
            output = forward(*args, **kwargs)
            if is_tail:
                state.tail_residuals = self._tail_residuals(state, lay, output)
            return output
        hidden = argument(block, "hidden_states", args, kwargs)
        encoder = argument(block, "encoder_hidden_states", args, kwargs) if lay.encoder_index is not None else None
        return pack_output(lay, hidden, encoder)

    @staticmethod
    def _tail_residuals(state: _State, lay: BlockLayout, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        head_hidden, head_encoder = state.head_output
        hidden, encoder = split_output(lay, output)
        if encoder is not None or head_encoder is None:
            return hidden - head_hidden, (encoder - head_encoder if encoder is not None else None)
        # FLUX.2: the single blocks return [text; image] joined; split it along the head's text length
        text = head_encoder.shape[1]
        return hidden[:, text:] - head_hidden, hidden[:, :text] - head_encoder
