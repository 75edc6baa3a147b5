"""Sampling nodes: KSampler, KSamplerAdvanced, the custom-sampling family and ModelSamplingFlux.

Each node only gathers its inputs into engine.sampling's objects (RandomNoise, Guider, SamplerChoice,
sigmas) and calls `engine.sampling.pipeline.sample`; the maths lives there.
"""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Float, Int, Output, Socket, node
from engine.core.types import CONDITIONING, GUIDER, LATENT, MODEL, NOISE, SAMPLER, SIGMAS

from .common import (
    MAX_RESOLUTION,
    cfg_input,
    memory,
    progress_callback,
    sampler_combo,
    scheduler_combo,
    seed_input,
    steps_input,
)


def _require_model(model: Any) -> Any:
    if getattr(model, "transformer", None) is None:
        raise TypeError(f"model input is not a FLUX diffusion model (got {type(model).__name__})")
    return model


def _run(ctx: Any, guider: Any, sampler_name: str, sigmas: Any, latent: dict, noise: Any):
    from engine.sampling.pipeline import SamplerChoice, sample  # noqa: PLC0415 - pipeline loads torch on first use

    result = sample(guider, SamplerChoice(sampler_name), sigmas, latent, noise, memory=memory(ctx),
                    progress=progress_callback(ctx))
    return result


def _with_samples(latent: dict, samples: Any) -> dict:
    """The output LATENT keeps the input's other keys (batch_index, noise_mask), as ComfyUI does."""
    out = dict(latent)
    out["samples"] = samples
    return out


@node("KSampler", category="sampling",
      inputs=[Socket("model", MODEL), seed_input("seed"), steps_input(), cfg_input(), sampler_combo(),
              scheduler_combo(), Socket("positive", CONDITIONING), Socket("negative", CONDITIONING),
              Socket("latent_image", LATENT), Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)],
      outputs=[LATENT],
      description="Denoises a latent with a sampler and scheduler; cfg 1.0 skips the negative pass.")
def ksampler(ctx: Any, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
             positive: list, negative: list, latent_image: dict, denoise: float = 1.0):
    from engine.sampling.pipeline import Guider, RandomNoise, schedule_for  # noqa: PLC0415 - pipeline loads torch on first use
    from engine.sampling.schedules import denoise_sigmas  # noqa: PLC0415 - schedules loads torch on first use

    model = _require_model(model)
    sigmas = denoise_sigmas(scheduler, schedule_for(model, latent_image["samples"], steps), steps, denoise)
    result = _run(ctx, Guider(model, positive, negative, cfg), sampler_name, sigmas, latent_image,
                  RandomNoise(seed))
    return (_with_samples(latent_image, result.samples),)


@node("KSamplerAdvanced", category="sampling", display_name="KSampler (Advanced)",
      inputs=[Socket("model", MODEL), Combo("add_noise", ["enable", "disable"]), seed_input("noise_seed"),
              steps_input(), cfg_input(), sampler_combo(), scheduler_combo(), Socket("positive", CONDITIONING),
              Socket("negative", CONDITIONING), Socket("latent_image", LATENT),
              Int("start_at_step", 0, min=0, max=10000), Int("end_at_step", 10000, min=0, max=10000),
              Combo("return_with_leftover_noise", ["disable", "enable"])],
      outputs=[LATENT],
      description="KSampler over a window of steps, optionally without adding noise or finishing.")
def ksampler_advanced(ctx: Any, model: Any, add_noise: str, noise_seed: int, steps: int, cfg: float,
                      sampler_name: str, scheduler: str, positive: list, negative: list, latent_image: dict,
                      start_at_step: int, end_at_step: int, return_with_leftover_noise: str):
    from engine.sampling.pipeline import DisabledNoise, Guider, RandomNoise, schedule_for  # noqa: PLC0415 - pipeline loads torch on first use
    from engine.sampling.schedules import scheduler_sigmas, step_range_sigmas  # noqa: PLC0415 - schedules loads torch on first use

    model = _require_model(model)
    sigmas = scheduler_sigmas(scheduler, schedule_for(model, latent_image["samples"], steps), steps)
    sigmas = step_range_sigmas(sigmas, start_at_step, end_at_step,
                               force_full_denoise=return_with_leftover_noise != "enable")
    noise = RandomNoise(noise_seed) if add_noise != "disable" else DisabledNoise(noise_seed)
    result = _run(ctx, Guider(model, positive, negative, cfg), sampler_name, sigmas, latent_image, noise)
    return (_with_samples(latent_image, result.samples),)


@node("SamplerCustomAdvanced", category="sampling/custom_sampling",
      inputs=[Socket("noise", NOISE), Socket("guider", GUIDER), Socket("sampler", SAMPLER),
              Socket("sigmas", SIGMAS), Socket("latent_image", LATENT)],
      outputs=[Output(LATENT, "output"), Output(LATENT, "denoised_output")],
      description="Runs a sampler with explicit noise, guider and sigmas; also returns the last x0 estimate.")
def sampler_custom_advanced(ctx: Any, noise: Any, guider: Any, sampler: Any, sigmas: Any, latent_image: dict):
    from engine.sampling.pipeline import sample  # noqa: PLC0415 - pipeline loads torch on first use

    _require_model(guider.model)
    result = sample(guider, sampler, sigmas, latent_image, noise, memory=memory(ctx),
                    progress=progress_callback(ctx))
    return (_with_samples(latent_image, result.samples), _with_samples(latent_image, result.denoised))


@node("RandomNoise", category="sampling/custom_sampling/noise", inputs=[seed_input("noise_seed")],
      outputs=[NOISE], description="Seeded noise: each batch item i uses seed + i, drawn on the CPU.")
def random_noise(ctx: Any, noise_seed: int):
    from engine.sampling.pipeline import RandomNoise  # noqa: PLC0415 - pipeline loads torch on first use

    return (RandomNoise(noise_seed),)


@node("DisableNoise", category="sampling/custom_sampling/noise", outputs=[NOISE],
      description="No noise: for latents that already carry it (a second pass over leftover noise).")
def disable_noise(ctx: Any):
    from engine.sampling.pipeline import DisabledNoise  # noqa: PLC0415 - pipeline loads torch on first use

    return (DisabledNoise(),)


@node("BasicGuider", category="sampling/custom_sampling/guiders",
      inputs=[Socket("model", MODEL), Socket("conditioning", CONDITIONING)], outputs=[GUIDER],
      description="Guides with one conditioning and no CFG (the usual FLUX setup).")
def basic_guider(ctx: Any, model: Any, conditioning: list):
    from engine.sampling.pipeline import Guider  # noqa: PLC0415 - pipeline loads torch on first use

    return (Guider(_require_model(model), conditioning, None, 1.0),)


@node("CFGGuider", category="sampling/custom_sampling/guiders",
      inputs=[Socket("model", MODEL), Socket("positive", CONDITIONING), Socket("negative", CONDITIONING),
              cfg_input()],
      outputs=[GUIDER], description="Classifier-free guidance between a positive and a negative prompt.")
def cfg_guider(ctx: Any, model: Any, positive: list, negative: list, cfg: float):
    from engine.sampling.pipeline import Guider  # noqa: PLC0415 - pipeline loads torch on first use

    return (Guider(_require_model(model), positive, negative, float(cfg)),)


@node("KSamplerSelect", category="sampling/custom_sampling/samplers", inputs=[sampler_combo(v3=True)],
      outputs=[SAMPLER])
def ksampler_select(ctx: Any, sampler_name: str):
    from engine.sampling.pipeline import SamplerChoice  # noqa: PLC0415 - pipeline loads torch on first use

    return (SamplerChoice(sampler_name),)


@node("BasicScheduler", category="sampling/custom_sampling/schedulers",
      inputs=[Socket("model", MODEL), scheduler_combo(v3=True), steps_input(),
              Float("denoise", 1.0, min=0.0, max=1.0, step=0.01)],
      outputs=[SIGMAS],
      description="Sigmas for the model's schedule. With dynamic shifting and no ModelSamplingFlux, the "
                  "shift of a 1024x1024 image is used (BasicScheduler does not see the latent).")
def basic_scheduler(ctx: Any, model: Any, scheduler: str, steps: int, denoise: float):
    from engine.sampling.pipeline import schedule_for  # noqa: PLC0415 - pipeline loads torch on first use
    from engine.sampling.schedules import denoise_sigmas  # noqa: PLC0415 - schedules loads torch on first use

    return (denoise_sigmas(scheduler, schedule_for(_require_model(model), None, steps), steps, denoise),)


@node("ModelSamplingFlux", category="advanced/model",
      inputs=[Socket("model", MODEL), Float("max_shift", 1.15, min=0.0, max=100.0, step=0.01),
              Float("base_shift", 0.5, min=0.0, max=100.0, step=0.01),
              Int("width", 1024, min=16, max=MAX_RESOLUTION, step=8),
              Int("height", 1024, min=16, max=MAX_RESOLUTION, step=8)],
      outputs=[MODEL],
      description="Fixes FLUX's resolution-dependent time shift to the given size and shift range.")
def model_sampling_flux(ctx: Any, model: Any, max_shift: float, base_shift: float, width: int, height: int):
    model = _require_model(model)
    return (model.with_sampling(use_dynamic_shifting=True, max_shift=float(max_shift),
                                base_shift=float(base_shift), width=int(width), height=int(height)),)


NODES = [ksampler, ksampler_advanced, sampler_custom_advanced, random_noise, disable_noise, basic_guider,
         cfg_guider, ksampler_select, basic_scheduler, model_sampling_flux]
