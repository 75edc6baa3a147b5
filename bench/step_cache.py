"""Step caches and regional compilation: ours next to diffusers 0.42's hooks, on the same transformer.

    python bench/step_cache.py                          # CPU: scaled-down FLUX.1, 512x512, 28 steps
    python bench/step_cache.py --steps 10 --size 256    # quicker

Prints one JSON document. The transformer is bench/flux_step.py's scaled-down FLUX.1-dev (real input
widths, 2 double + 4 single blocks, 512 wide, random float32 weights) with random text embeddings. Each
method runs at two thresholds through our `sample()` (euler + simple, a model with the cache node's
option) and, where diffusers has the method, through FluxPipeline with `transformer.enable_cache(...)`;
both start from the same noise. Reported per run: full transformer evaluations (calls whose last block
ran), seconds per image, and the final latent's difference to the same side's uncached run (mean abs and
PSNR, peak = the uncached latent's range), plus ours against diffusers for the same settings.

Random weights change much more between steps than real FLUX (docs/flux.md): the thresholds here are the
ones that skip on this model (see METHODS). The uncached runs are timed before and after the methods and the
faster kept;
`speedup` = uncached seconds / cached seconds of the same side (wall clock: noisy on a shared machine; the
evaluation counts are exact).
The compile section times regional compilation (ours: --compile regional / TorchCompileModel; diffusers:
`compile_repeated_blocks`) against eager: the first image (with the compile) and the next one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.flux_step import T5_TOKENS, chosen_device, device_parser, environment, instantiate, make_pipeline  # noqa: E402

# (method, our settings at two thresholds, diffusers config factory or None)
# The thresholds skip on the random scaled model at 28 steps, where the first block's residual changes by
# 40-50 % a step, EasyCache's estimated change is 0.05-0.07 a step and LazyCache's 0.01-0.025 (real FLUX
# weights: First-Block-Cache 0.05-0.12, EasyCache / LazyCache 0.2 = ComfyUI's default).
METHODS: list[tuple[str, list[dict], str | None]] = [
    ("FirstBlockCache", [{"threshold": 0.45}, {"threshold": 0.6}], "FirstBlockCacheConfig"),
    ("MagCache", [{"threshold": 0.06}, {"threshold": 0.24}], "MagCacheConfig"),
    ("TaylorSeer", [{"cache_interval": 2, "taylor_factors_dtype": "float32"},
                    {"cache_interval": 4, "taylor_factors_dtype": "float32"}], "TaylorSeerCacheConfig"),
    ("EasyCache", [{"reuse_threshold": 0.1}, {"reuse_threshold": 0.2}], None),
    ("LazyCache", [{"reuse_threshold": 0.05}, {"reuse_threshold": 0.2}], None),
]


class Evaluations:
    """Counts transformer calls whose last block's attention ran (the same probe on both sides)."""

    def __init__(self, transformer: Any) -> None:
        self.count = 0
        self.handle = transformer.single_transformer_blocks[-1].attn.to_q.register_forward_hook(self._hit)

    def _hit(self, *args: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self.handle.remove()


def our_settings(method: str, values: dict) -> Any:
    from engine.sampling.step_cache import settings as s

    return {"FirstBlockCache": s.FirstBlockCacheSettings, "MagCache": s.MagCacheSettings,
            "TaylorSeer": s.TaylorSeerSettings, "EasyCache": s.EasyCacheSettings,
            "LazyCache": s.LazyCacheSettings}[method](**values)


def diffusers_config(name: str, values: dict, steps: int) -> Any:
    import diffusers.hooks as hooks
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    values = dict(values)
    if name == "MagCacheConfig":
        values.update(num_inference_steps=steps, mag_ratios=FLUX_MAG_RATIOS)
    if "taylor_factors_dtype" in values:
        values["taylor_factors_dtype"] = getattr(torch, values["taylor_factors_dtype"])
    return getattr(hooks, name)(**values)


def run_ours(transformer: Any, embeds: torch.Tensor, pooled: torch.Tensor, size: int, steps: int,
             device: torch.device, cache: Any = None, compile_mode: str | None = None) -> tuple[torch.Tensor, float]:
    """(final latent in model space [1, 16, H, W], seconds)."""
    from engine.memory.manager import MemoryManager
    from engine.models.flux1.variants import flux_model_handle
    from engine.sampling.latents import FLUX1_LATENT
    from engine.sampling.pipeline import Guider, RandomNoise, SamplerChoice, sample, schedule_for
    from engine.sampling.schedules import scheduler_sigmas
    from engine.sampling.step_cache.settings import COMPILE, STEP_CACHE, CompileSettings

    handle = flux_model_handle(transformer, "dev", source="bench")
    if cache is not None:
        handle = handle.with_option(STEP_CACHE, cache)
    if compile_mode is not None:
        handle = handle.with_option(COMPILE, CompileSettings(mode=compile_mode))
    latent = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
    sigmas = scheduler_sigmas("simple", schedule_for(handle, latent["samples"]), steps)
    cond = [[embeds, {"pooled_output": pooled, "guidance": 3.5}]]
    start = time.perf_counter()
    result = sample(Guider(handle, cond), SamplerChoice("euler"), sigmas, latent, RandomNoise(0),
                    memory=MemoryManager(device=device))
    return FLUX1_LATENT.process_in(result.samples), time.perf_counter() - start


def run_diffusers(pipe: Any, embeds: torch.Tensor, pooled: torch.Tensor, size: int, steps: int,
                  device: torch.device) -> tuple[torch.Tensor, float]:
    from engine.sampling.latents import unpack_latents

    start = time.perf_counter()
    packed = pipe(prompt_embeds=embeds.to(device), pooled_prompt_embeds=pooled.to(device), width=size, height=size,
                  num_inference_steps=steps, guidance_scale=3.5, output_type="latent",
                  generator=torch.Generator("cpu").manual_seed(0)).images
    seconds = time.perf_counter() - start
    return unpack_latents(packed.float().cpu(), size // 8, size // 8), seconds


def difference(latent: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    mse = float(((latent - reference) ** 2).mean())
    peak = float(reference.max() - reference.min())
    return {"mean_abs": round(float((latent - reference).abs().mean()), 6),
            "psnr_db": round(10 * math.log10(peak ** 2 / mse), 2) if mse > 0 else "identical"}


def counted(transformer: Any, run: Callable[[], tuple[torch.Tensor, float]]) -> tuple[torch.Tensor, float, int]:
    probe = Evaluations(transformer)
    try:
        latent, seconds = run()
    finally:
        probe.close()
    return latent, seconds, probe.count


def cache_section(transformer: Any, pipe: Any, embeds: torch.Tensor, pooled: torch.Tensor, size: int, steps: int,
                  device: torch.device) -> dict:
    ours_base, ours_s, ours_n = counted(transformer, lambda: run_ours(transformer, embeds, pooled, size, steps,
                                                                      device))
    ref_base, ref_s, ref_n = counted(transformer, lambda: run_diffusers(pipe, embeds, pooled, size, steps, device))
    # timed again after the methods, the faster kept (`speedup` uses it): the machine may be shared
    section: dict[str, Any] = {"uncached": {
        "ours": {"evaluations": ours_n, "s_per_image": round(ours_s, 3)},
        "diffusers": {"evaluations": ref_n, "s_per_image": round(ref_s, 3)},
        "ours_vs_diffusers": difference(ours_base, ref_base)}, "methods": []}
    for method, thresholds, config_name in METHODS:
        for values in thresholds:
            settings = our_settings(method, values)
            latent, seconds, n = counted(transformer, lambda: run_ours(transformer, embeds, pooled, size, steps,
                                                                        device, cache=settings))
            row: dict[str, Any] = {"method": method, "settings": values, "ours": {
                "evaluations": n, "s_per_image": round(seconds, 3), "vs_uncached": difference(latent, ours_base),
                "speedup": None}}
            if config_name is not None:
                transformer.enable_cache(diffusers_config(config_name, values, steps))
                try:
                    ref, ref_seconds, ref_n = counted(transformer, lambda: run_diffusers(pipe, embeds, pooled, size,
                                                                                         steps, device))
                finally:
                    transformer.disable_cache()
                row["diffusers"] = {"evaluations": ref_n, "s_per_image": round(ref_seconds, 3),
                                    "vs_uncached": difference(ref, ref_base), "speedup": None}
                row["ours_vs_diffusers"] = difference(latent, ref)
                row["ratio_ours_over_diffusers_s"] = round(seconds / ref_seconds, 4)
            section["methods"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    ours_again = run_ours(transformer, embeds, pooled, size, steps, device)[1]
    ref_again = run_diffusers(pipe, embeds, pooled, size, steps, device)[1]
    section["uncached"]["ours"]["s_per_image_runs"] = [round(ours_s, 3), round(ours_again, 3)]
    section["uncached"]["diffusers"]["s_per_image_runs"] = [round(ref_s, 3), round(ref_again, 3)]
    ours_s, ref_s = min(ours_s, ours_again), min(ref_s, ref_again)
    section["uncached"]["ours"]["s_per_image"] = round(ours_s, 3)
    section["uncached"]["diffusers"]["s_per_image"] = round(ref_s, 3)
    for row in section["methods"]:
        row["ours"]["speedup"] = round(ours_s / row["ours"]["s_per_image"], 3)
        if "diffusers" in row:
            row["diffusers"]["speedup"] = round(ref_s / row["diffusers"]["s_per_image"], 3)
    return section


def compile_section(fresh: Callable[[], Any], embeds: torch.Tensor, pooled: torch.Tensor, size: int, steps: int,
                    device: torch.device) -> dict:
    """`fresh()`: a new transformer with the same weights each time (a deepcopy would copy the memory
    manager's forward wrapper, still bound to the original)."""
    from engine.sampling.step_cache.compile import COMPILES

    rows = {}
    transformer = fresh()
    eager = [run_ours(transformer, embeds, pooled, size, steps, device)[1] for _ in range(2)]
    rows["ours_eager"] = {"first_s": round(eager[0], 3), "next_s": round(eager[1], 3)}
    ours = fresh()
    first_latent, first = run_ours(ours, embeds, pooled, size, steps, device, compile_mode="regional")
    _, following = run_ours(ours, embeds, pooled, size, steps, device, compile_mode="regional")
    rows["ours_regional"] = {"first_s": round(first, 3), "next_s": round(following, 3),
                             "graphs_compiled": dict(COMPILES), "speedup_next": round(eager[1] / following, 3)}
    pipe = make_pipeline(fresh())
    diff_eager = [run_diffusers(pipe, embeds, pooled, size, steps, device)[1] for _ in range(2)]
    rows["diffusers_eager"] = {"first_s": round(diff_eager[0], 3), "next_s": round(diff_eager[1], 3)}
    theirs = fresh()
    theirs.compile_repeated_blocks(dynamic=False)
    compiled_pipe = make_pipeline(theirs)
    ref_latent, ref_first = run_diffusers(compiled_pipe, embeds, pooled, size, steps, device)
    _, ref_following = run_diffusers(compiled_pipe, embeds, pooled, size, steps, device)
    rows["diffusers_compile_repeated_blocks"] = {"first_s": round(ref_first, 3), "next_s": round(ref_following, 3),
                                                 "speedup_next": round(diff_eager[1] / ref_following, 3)}
    rows["ratio_ours_regional_over_diffusers_compiled_next"] = round(following / ref_following, 4)
    rows["ours_regional_vs_diffusers_compiled"] = difference(first_latent, ref_latent)
    return rows


def scaled_transformer(double: int, single: int, device: torch.device) -> tuple[Any, str]:
    """bench/flux_step.py's scaled-down FLUX.1-dev (real input widths, 512 wide, float32), `double` +
    `single` blocks (2 + 4 there)."""
    from diffusers import FluxTransformer2DModel

    from engine.models.common.configs import load_config

    config = {k: v for k, v in load_config("flux1-dev").items() if not k.startswith("_")}
    config.update(num_layers=double, num_single_layers=single, num_attention_heads=4)
    torch.manual_seed(0)
    model = instantiate(FluxTransformer2DModel, config, torch.float32, device).eval()
    return model, f"scaled-down FLUX.1-dev ({double} double + {single} single blocks, 512 wide, float32)"


def main(argv: list[str] | None = None) -> int:
    parser = device_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile section")
    parser.add_argument("--blocks", default="2,4", help="double,single blocks of the scaled model (default 2,4)")
    args = parser.parse_args(argv)
    device = chosen_device(args)
    double, single = (int(n) for n in args.blocks.split(","))
    transformer, label = scaled_transformer(double, single, device)
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, T5_TOKENS, transformer.config.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, transformer.config.pooled_projection_dim, generator=gen)
    report: dict[str, Any] = {**environment(device), "model": label, "resolution": f"{args.size}x{args.size}",
                              "steps": args.steps, "latent_metrics": "final latent, model space"}
    with torch.inference_mode():
        pipe = make_pipeline(transformer)
        report["step_caches"] = cache_section(transformer, pipe, embeds, pooled, args.size, args.steps, device)
        if not args.no_compile:
            report["compile"] = compile_section(lambda: scaled_transformer(double, single, device)[0], embeds, pooled,
                                                args.size, args.steps, device)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
