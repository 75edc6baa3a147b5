"""Installing the speed-ups a MODEL asks for, for one `sample()` call.

`sampling_speedups(model, memory, progress)` is a context manager around the run: it compiles the
transformer's repeated blocks when the model (TorchCompileModel) or the server (`--compile regional`) asks
(once per module: the compiled forwards stay), and yields an object whose `attach(denoiser, steps)` wraps
that denoiser's `denoise` / `velocity` with the model's step cache. When the run ends the cache (and every
tensor it held) is dropped, its summary is logged and sent with the node's progress as a `step_cache`
message (`progress.report`, where the caller gives one).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from engine.sampling.step_cache.base import Branch, StepCache, log
from engine.sampling.step_cache.compile import compile_settings, compile_transformer
from engine.sampling.step_cache.easycache import EasyCache, LazyCache
from engine.sampling.step_cache.first_block import FirstBlockCache
from engine.sampling.step_cache.mag import MagCache
from engine.sampling.step_cache.settings import (STEP_CACHE, CompileSettings, EasyCacheSettings,
                                                 FirstBlockCacheSettings, LazyCacheSettings, MagCacheSettings,
                                                 TaylorSeerSettings)
from engine.sampling.step_cache.taylorseer import TaylorSeerCache

CACHES: dict[type, type[StepCache]] = {
    FirstBlockCacheSettings: FirstBlockCache, MagCacheSettings: MagCache, TaylorSeerSettings: TaylorSeerCache,
    EasyCacheSettings: EasyCache, LazyCacheSettings: LazyCache,
}


def make_cache(settings: Any) -> StepCache:
    try:
        return CACHES[type(settings)](settings)
    except KeyError:
        raise ValueError(f"unknown step cache settings {type(settings).__name__}") from None


class _Attacher:
    def __init__(self, cache: StepCache | None) -> None:
        self.cache = cache

    def attach(self, denoiser: Any, steps: int) -> None:
        """Route this denoiser's x0 estimates and transformer calls through the cache (no-op without one)."""
        cache = self.cache
        if cache is None:
            return
        cache.prepare(denoiser, steps)
        branches = {id(entry): ("positive", i) for i, entry in enumerate(denoiser.positive)}
        branches.update({id(entry): ("negative", i) for i, entry in enumerate(denoiser.negative)})
        denoise, velocity = denoiser.denoise, denoiser.velocity

        def cached_denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            cache.begin_step(x, float(sigma))
            return cache.denoise(denoise, x, sigma)

        def cached_velocity(entry: Any, *args: Any) -> torch.Tensor:
            branch: Branch = branches[id(entry)]
            return cache.velocity(branch, velocity, entry, *args)

        denoiser.denoise, denoiser.velocity = cached_denoise, cached_velocity


@contextmanager
def sampling_speedups(model: Any, memory: Any, progress: Callable | None = None) -> Iterator[_Attacher]:
    # compiled as asked, or back to eager forwards: a run without compilation never uses another's
    compile_transformer(model.transformer, compile_settings(model, memory) or CompileSettings(mode="none"),
                        getattr(memory, "device_type", None))
    settings = model.option(STEP_CACHE) if hasattr(model, "option") else None
    cache = make_cache(settings) if settings is not None else None
    try:
        yield _Attacher(cache)
    finally:
        if cache is not None:
            _report(cache, progress)


def _report(cache: StepCache, progress: Callable | None) -> None:
    log.info(cache.log_summary())
    for message in cache.messages:
        log.info(message)
    report = getattr(progress, "report", None)
    if callable(report):
        summary = cache.summary()
        report("step_cache", {k: v for k, v in summary.items() if k != "branches"})
