"""Speed nodes for FLUX.1 and FLUX.2 models: step caches and torch.compile.

EasyCache / LazyCache have ComfyUI's names and inputs; FirstBlockCache / MagCache / TaylorSeerCache take
diffusers 0.42's `*CacheConfig` parameters. Each returns the model with a `step_cache` option; the cache
itself lives only inside one sampling run (engine/sampling/step_cache/). A later cache node replaces an
earlier one. TorchCompileModel is ComfyUI's node plus our regional mode.
"""

from __future__ import annotations

import math
from typing import Any

from engine.core.schema import Boolean, Combo, Float, Int, String, Socket, node
from engine.core.types import MODEL

TAYLOR_DTYPES = ("bfloat16", "float16", "float32")  # engine.sampling.step_cache.taylorseer.DTYPES
COMPILE_BACKENDS = ("inductor", "cudagraphs")  # ComfyUI's choices (eager / aot_eager: engine only)
COMPILE_MODES = ("regional", "full", "none")  # none: no compilation, even under the server's --compile
_EASY_INPUTS = [
    Socket("model", MODEL, tooltip="The model to add the cache to."),
    Float("reuse_threshold", 0.2, min=0.0, max=3.0, step=0.01, tooltip="The threshold for reusing cached steps."),
    Float("start_percent", 0.15, min=0.0, max=1.0, step=0.01, tooltip="The relative sampling step to begin use of "
          "the cache."),
    Float("end_percent", 0.95, min=0.0, max=1.0, step=0.01, tooltip="The relative sampling step to end use of "
          "the cache."),
    Boolean("verbose", False, tooltip="Whether to log verbose information."),
]


def _with(model: Any, key: str, value: Any, node_name: str) -> Any:
    if not hasattr(model, "with_option") or getattr(model, "family", None) not in ("flux1", "flux2"):
        raise TypeError(f"{node_name}: the model input must be a FLUX.1 or FLUX.2 diffusion model "
                        f"(got {type(model).__name__})")
    return (model.with_option(key, value),)


@node("EasyCache", category="advanced/debug/model", experimental=True, inputs=_EASY_INPUTS, outputs=[MODEL],
      description="Native EasyCache: while the transformer's estimated output change stays under the threshold, "
                  "a step reuses the last computed change instead of running the model.")
def easy_cache(ctx: Any, model: Any, reuse_threshold: float, start_percent: float, end_percent: float,
               verbose: bool = False):
    from engine.sampling.step_cache.settings import STEP_CACHE, EasyCacheSettings  # noqa: PLC0415 - keeps declarations light

    return _with(model, STEP_CACHE, EasyCacheSettings(float(reuse_threshold), float(start_percent),
                                                      float(end_percent), bool(verbose)), "EasyCache")


@node("LazyCache", category="advanced/debug/model", experimental=True, inputs=_EASY_INPUTS, outputs=[MODEL],
      description="A homebrew version of EasyCache: the same rule on the whole (CFG-combined) denoised output.")
def lazy_cache(ctx: Any, model: Any, reuse_threshold: float, start_percent: float, end_percent: float,
               verbose: bool = False):
    from engine.sampling.step_cache.settings import STEP_CACHE, LazyCacheSettings  # noqa: PLC0415 - keeps declarations light

    return _with(model, STEP_CACHE, LazyCacheSettings(float(reuse_threshold), float(start_percent),
                                                      float(end_percent), bool(verbose)), "LazyCache")


@node("FirstBlockCache", category="advanced/debug/model", experimental=True,
      inputs=[Socket("model", MODEL),
              Float("threshold", 0.05, min=0.0, max=10.0, step=0.001,
                    tooltip="Skip the other blocks while the first block's residual changes by at most this "
                            "(relative mean absolute difference); diffusers' FirstBlockCacheConfig.threshold.")],
      outputs=[MODEL], description="First-Block-Cache (diffusers' FirstBlockCacheConfig) for FLUX.1 and FLUX.2.")
def first_block_cache(ctx: Any, model: Any, threshold: float):
    from engine.sampling.step_cache.settings import STEP_CACHE, FirstBlockCacheSettings  # noqa: PLC0415 - keeps declarations light

    return _with(model, STEP_CACHE, FirstBlockCacheSettings(float(threshold)), "FirstBlockCache")


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace("[", " ").replace("]", " ").replace(",", " ").split())
    except ValueError:
        values = ()
    if not all(math.isfinite(v) for v in values) or (text.strip() and not values):
        raise ValueError(f"MagCache: mag_ratios must be numbers separated by commas, got {text!r}")
    return values


def _validate_mag(mag_ratios: str = "") -> bool | str:
    try:
        _ratios(str(mag_ratios))
    except ValueError as exc:
        return str(exc)
    return True


@node("MagCache", category="advanced/debug/model", experimental=True,
      inputs=[Socket("model", MODEL),
              Float("threshold", 0.06, min=0.0, max=10.0, step=0.001, tooltip="Skip while the accumulated error "
                    "stays at or below this."),
              Int("max_skip_steps", 3, min=0, max=1000, tooltip="At most this many steps skipped in a row."),
              Float("retention_ratio", 0.2, min=0.0, max=1.0, step=0.01,
                    tooltip="The first fraction of the steps is never skipped."),
              Int("num_inference_steps", 0, min=0, max=10000, optional=True,
                  tooltip="The steps the ratios are interpolated to; 0: the sampler's step count."),
              String("mag_ratios", "", optional=True,
                     tooltip="The model's magnitude ratios, comma separated; empty: diffusers' FLUX.1 ratios."),
              Boolean("calibrate", False, optional=True,
                      tooltip="Skip nothing; log this model's ratios at the end of the run.")],
      outputs=[MODEL], validate_inputs=_validate_mag,
      description="MagCache (diffusers' MagCacheConfig) for FLUX.1 and FLUX.2.")
def mag_cache(ctx: Any, model: Any, threshold: float, max_skip_steps: int, retention_ratio: float,
              num_inference_steps: int = 0, mag_ratios: str = "", calibrate: bool = False):
    from engine.sampling.step_cache.settings import STEP_CACHE, MagCacheSettings  # noqa: PLC0415 - keeps declarations light

    settings = MagCacheSettings(float(threshold), int(max_skip_steps), float(retention_ratio),
                                int(num_inference_steps), _ratios(mag_ratios or ""), bool(calibrate))
    return _with(model, STEP_CACHE, settings, "MagCache")


def _validate_taylor(disable_cache_before_step: int = 3, disable_cache_after_step: int = -1) -> bool | str:
    # naming them here skips the built-in range checks (as in ComfyUI), so the ranges are checked again
    before, after = int(disable_cache_before_step), int(disable_cache_after_step)
    if not 0 <= before <= 10000:
        return f"TaylorSeerCache: disable_cache_before_step {before} is outside 0..10000"
    if not -1 <= after <= 10000:
        return f"TaylorSeerCache: disable_cache_after_step {after} is outside -1..10000"
    if after != -1 and before > after:
        return (f"TaylorSeerCache: disable_cache_before_step {before} is after disable_cache_after_step {after}: "
                "no step could use the cache (-1 for disable_cache_after_step: never stop)")
    return True


@node("TaylorSeerCache", category="advanced/debug/model", experimental=True,
      inputs=[Socket("model", MODEL),
              Int("cache_interval", 5, min=1, max=1000, tooltip="Full computations every this many steps."),
              Int("disable_cache_before_step", 3, min=0, max=10000, tooltip="Compute every step before this one."),
              Int("disable_cache_after_step", -1, min=-1, max=10000,
                  tooltip="Compute every step from this one on; -1: never."),
              Int("max_order", 1, min=0, max=4, tooltip="Order of the Taylor expansion."),
              Combo("taylor_factors_dtype", TAYLOR_DTYPES, default="bfloat16"),
              Boolean("use_lite_mode", False, optional=True,
                      tooltip="Skip whole blocks and predict only the output projection (less memory).")],
      outputs=[MODEL], validate_inputs=_validate_taylor,
      description="TaylorSeer (diffusers' TaylorSeerCacheConfig) for FLUX.1 and FLUX.2.")
def taylorseer_cache(ctx: Any, model: Any, cache_interval: int, disable_cache_before_step: int,
                     disable_cache_after_step: int, max_order: int, taylor_factors_dtype: str,
                     use_lite_mode: bool = False):
    from engine.sampling.step_cache.settings import STEP_CACHE, TaylorSeerSettings  # noqa: PLC0415 - keeps declarations light

    after = int(disable_cache_after_step)
    settings = TaylorSeerSettings(int(cache_interval), int(disable_cache_before_step), after if after >= 0 else None,
                                  int(max_order), str(taylor_factors_dtype), bool(use_lite_mode))
    return _with(model, STEP_CACHE, settings, "TaylorSeerCache")


@node("TorchCompileModel", category="_for_testing", experimental=True,
      inputs=[Socket("model", MODEL), Combo("backend", COMPILE_BACKENDS, default="inductor"),
              Combo("mode", COMPILE_MODES, default="regional", optional=True, extra={"advanced": True},
                    tooltip="regional: each repeated transformer block class compiled once (fast to compile); "
                            "full: the whole transformer."),
              Boolean("dynamic", False, optional=True, extra={"advanced": True},
                      tooltip="Dynamic shapes (fewer recompiles across image sizes, slower code).")],
      outputs=[MODEL], description="torch.compile the diffusion model when it next samples; the compiled "
                                   "blocks stay compiled across runs, offloading and LoRAs.")
def torch_compile_model(ctx: Any, model: Any, backend: str, mode: str = "regional", dynamic: bool = False):
    from engine.sampling.step_cache.settings import COMPILE, CompileSettings  # noqa: PLC0415 - keeps declarations light

    return _with(model, COMPILE, CompileSettings(str(backend), str(mode), bool(dynamic)), "TorchCompileModel")


NODES = [easy_cache, lazy_cache, first_block_cache, mag_cache, taylorseer_cache, torch_compile_model]
