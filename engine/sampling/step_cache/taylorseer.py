"""TaylorSeer, with diffusers 0.42's decisions (`TaylorSeerCacheConfig`, hooks/taylorseer_cache.py).

Every attention module of the blocks (lite mode: the blocks themselves, which then return zeros, and
`proj_out`, which is predicted) keeps its own step counter per branch. A call computes during the first
`disable_cache_before_step` calls, every `cache_interval`-th call after them, and from
`disable_cache_after_step` on; computing updates a Taylor expansion of the module's outputs (divided
differences up to `max_order`, stored in `taylor_factors_dtype`), and the other calls return that
expansion evaluated at the current step.
"""

from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

import torch

from engine.sampling.step_cache.base import StepCache
from engine.sampling.step_cache.blocks import BlockCache

ATTENTION_PATTERNS = ("^blocks.*attn", "^transformer_blocks.*attn", "^single_transformer_blocks.*attn",
                      "^temporal_transformer_blocks.*attn")
LITE_ACTIVE = ("^proj_out$",)
LITE_INACTIVE = ("^[^.]*block[^.]*\\.[^.]+$",)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class _ModuleState:
    def __init__(self, dtype: torch.dtype, max_order: int, inactive: bool) -> None:
        self.dtype, self.max_order, self.inactive = dtype, max_order, inactive
        self.output_dtypes: tuple[torch.dtype, ...] = ()
        self.last_update_step: int | None = None
        self.factors: dict[int, dict[int, torch.Tensor]] = {}
        self.shapes: tuple[tuple[int, ...], ...] | None = None
        self.device: torch.device | None = None
        self.current_step = -1

    def update(self, outputs: tuple[torch.Tensor, ...]) -> None:
        self.output_dtypes = tuple(o.dtype for o in outputs)
        self.device = outputs[0].device
        if self.inactive:
            self.shapes = tuple(o.shape for o in outputs)
        else:
            for i, features in enumerate(outputs):
                new = {0: features}
                if self.last_update_step is not None:
                    delta = self.current_step - self.last_update_step
                    previous = self.factors.get(i, {})
                    for order in range(self.max_order):  # divided differences, restarted if shapes change
                        prev = previous.get(order)
                        if prev is None or prev.shape != new[order].shape:
                            break
                        new[order + 1] = (new[order] - prev.to(features.dtype)) / delta
                self.factors[i] = {order: f.to(self.dtype) for order, f in new.items()}
        self.last_update_step = self.current_step

    def predict(self) -> list[torch.Tensor]:
        offset = self.current_step - self.last_update_step
        if self.inactive:
            return [torch.zeros(shape, dtype=dtype, device=self.device)
                    for shape, dtype in zip(self.shapes, self.output_dtypes)]
        outputs = []
        for i in range(len(self.factors)):
            factors, dtype = self.factors[i], self.output_dtypes[i]
            out = torch.zeros_like(factors[0], dtype=dtype)
            for order in range(len(self.factors[0])):
                out = out + factors[order].to(dtype) * ((offset ** order) / math.factorial(order))
            outputs.append(out)
        return outputs


class _BranchState:
    def __init__(self) -> None:
        self.modules: dict[str, _ModuleState] = {}
        self.computed = False  # whether any module computed during the current call


class TaylorSeerCache(BlockCache, StepCache):
    name = "TaylorSeer"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.states = {}
        self.dtype = DTYPES[settings.taylor_factors_dtype]
        self._targets: list[tuple[str, torch.nn.Module, bool]] | None = None

    def new_state(self) -> _BranchState:
        return _BranchState()

    def targets(self, transformer: Any) -> list[tuple[str, torch.nn.Module, bool]]:
        """(name, module, inactive) of every hooked module, found once per run."""
        if self._targets is None:
            active, inactive = ATTENTION_PATTERNS, ()
            if self.settings.use_lite_mode:
                active, inactive = LITE_ACTIVE, LITE_INACTIVE
            found = []
            for name, module in transformer.named_modules():
                is_inactive = any(re.fullmatch(p, name) for p in inactive)
                if is_inactive or any(re.fullmatch(p, name) for p in active):
                    found.append((name, module, is_inactive))
            self._targets = found
        return self._targets

    def wrappers(self, transformer: Any, state: _BranchState) -> list:
        state.computed = False
        wrapped = []
        for name, module, inactive in self.targets(transformer):
            module_state = state.modules.get(name)
            if module_state is None:
                module_state = state.modules[name] = _ModuleState(self.dtype, self.settings.max_order, inactive)
            wrapped.append((module, partial(self._forward, state, module_state)))
        return wrapped

    def computed(self, state: _BranchState) -> bool:
        return state.computed

    def _should_compute(self, module_state: _ModuleState) -> bool:
        s = self.settings
        module_state.current_step += 1
        step = module_state.current_step
        warmup = step < s.disable_cache_before_step
        interval = (step - s.disable_cache_before_step - 1) % s.cache_interval == 0
        cooldown = s.disable_cache_after_step is not None and step >= s.disable_cache_after_step
        return warmup or interval or cooldown

    def _forward(self, state: _BranchState, module_state: _ModuleState, forward: Any, *args: Any,
                 **kwargs: Any) -> Any:
        if self._should_compute(module_state):
            state.computed = True
            outputs = forward(*args, **kwargs)
            module_state.update((outputs,) if isinstance(outputs, torch.Tensor) else outputs)
            return outputs
        predicted = module_state.predict()
        return predicted[0] if len(predicted) == 1 else tuple(predicted)
