"""The settings of each step cache, as a MODEL option (torch-free: node declarations and recipes import it).

A cache node returns `model.with_option(STEP_CACHE, settings)`; `sample()` installs the matching cache for
that one run (engine/sampling/step_cache/run.py). Settings are frozen and hashable, so the output cache
keys them like any other input. Parameter names follow their source: EasyCache / LazyCache as ComfyUI's
nodes, First-Block-Cache / MagCache / TaylorSeer as diffusers 0.42's `*CacheConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_CACHE = "step_cache"  # the MODEL option key
COMPILE = "compile"  # the MODEL option key of TorchCompileModel (engine/sampling/step_cache/compile.py)


@dataclass(frozen=True)
class FirstBlockCacheSettings:
    """diffusers' FirstBlockCacheConfig: skip the other blocks while the first block's residual changes by
    at most `threshold` (relative mean absolute difference) from the last computed step."""

    threshold: float = 0.05
    name = "FirstBlockCache"


@dataclass(frozen=True)
class MagCacheSettings:
    """diffusers' MagCacheConfig. `mag_ratios` empty: diffusers' FLUX ratios (FLUX_MAG_RATIOS);
    `num_inference_steps` 0: the run's own step count."""

    threshold: float = 0.06
    max_skip_steps: int = 3
    retention_ratio: float = 0.2
    num_inference_steps: int = 0
    mag_ratios: tuple[float, ...] = ()
    calibrate: bool = False
    name = "MagCache"


@dataclass(frozen=True)
class TaylorSeerSettings:
    """diffusers' TaylorSeerCacheConfig (the identifier lists keep diffusers' defaults)."""

    cache_interval: int = 5
    disable_cache_before_step: int = 3
    disable_cache_after_step: int | None = None
    max_order: int = 1
    taylor_factors_dtype: str = "bfloat16"  # "bfloat16", "float16", "float32"
    use_lite_mode: bool = False
    name = "TaylorSeer"


@dataclass(frozen=True)
class EasyCacheSettings:
    """ComfyUI's EasyCache node: reuse the transformer's output change (output - input) while the
    accumulated estimated output change stays under `reuse_threshold`, between start and end percent."""

    reuse_threshold: float = 0.2
    start_percent: float = 0.15
    end_percent: float = 0.95
    verbose: bool = False
    subsample_factor: int = 8  # ComfyUI's node fixes it at 8
    name = "EasyCache"


@dataclass(frozen=True)
class LazyCacheSettings(EasyCacheSettings):
    """ComfyUI's LazyCache node: EasyCache's rule on the whole CFG-combined x0 estimate."""

    name = "LazyCache"


StepCacheSettings = FirstBlockCacheSettings | MagCacheSettings | TaylorSeerSettings | EasyCacheSettings


@dataclass(frozen=True)
class CompileSettings:
    """TorchCompileModel: `backend` as ComfyUI's node; `mode` "regional" compiles each repeated transformer
    block class once (diffusers' compile_repeated_blocks), "full" the whole transformer."""

    backend: str = "inductor"
    mode: str = "regional"
    dynamic: bool = False
