"""One sampling run: the values behind NOISE / GUIDER / SAMPLER / SIGMAS and the loop that ties them.

`sample(...)` follows ComfyUI's semantics for LATENT dicts, so KSampler, KSamplerAdvanced and
SamplerCustomAdvanced are three doors onto it:
- raw latents are mapped into model space, noise is mixed in at the first sigma
  (x = sigma0 * noise + (1 - sigma0) * latent; with noise disabled the latent is only scaled), and the
  result is divided by (1 - last sigma) on the way out, so a run that stops early (leftover noise) hands a
  latent that the next run's scaling restores exactly;
- a `noise_mask` keeps the unmasked area at the (re-noised) input latent at every step (inpainting);
- `batch_index` picks each item's seed (see `noise.py`).

`progress(step, total, preview)` is called once per step with a `LatentPreview` of that step's x0 estimate
(cropped to the latent, FLUX.1 or FLUX.2); rendering it is the run's business (engine.sampling.previews).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from engine.memory.manager import manager_from
from engine.sampling.flux2_latents import fit_latent_to_model, is_flux2, model_latent_format
from engine.sampling.flux2_latents import image_size as family_image_size
from engine.models.lora.patch import apply_patches, patches_for
from engine.sampling.control_nets import use_control_nets
from engine.sampling.fill import FILL_NOISE_ORDER, sample_fill_latents, step_mask_function
from engine.sampling.flux2_denoiser import Flux2Denoiser
from engine.sampling.flux2_schedule import flux2_model_schedule
from engine.sampling.guidance import FluxDenoiser
from engine.sampling.model_inputs import add_model_inputs
from engine.sampling.latents import pad_to_patch
from engine.sampling.noise import StepNoise, diffusers_fill_noise, initial_noise, item_seeds
from engine.sampling.previews import LatentPreview
from engine.sampling.samplers import get_sampler
from engine.sampling.schedules import FlowSchedule, flow_schedule
from engine.sampling.step_cache.run import sampling_speedups

Progress = Callable[..., None]  # (step, total) or (step, total, preview: engine.sampling.previews.LatentPreview)


@dataclass(frozen=True)
class RandomNoise:
    """NOISE from RandomNoise: seeded per batch item."""

    seed: int

    def generate(self, latent: dict, shape: tuple[int, ...]) -> torch.Tensor:
        return initial_noise(shape, item_seeds(self.seed, shape[0], latent.get("batch_index")))


@dataclass(frozen=True)
class DisabledNoise:
    """NOISE from DisableNoise: zeros (the latent already carries its noise). Step noise uses seed 0."""

    seed: int = 0

    def generate(self, latent: dict, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape)


@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER from KSamplerSelect: a sampler name plus its options (eta, s_noise, ...)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        get_sampler(self.name)  # fail early, with the list of names


@dataclass(frozen=True)
class Guider:
    """GUIDER: the model and conditioning to denoise with (BasicGuider: cfg 1, no negative)."""

    model: Any
    positive: list
    negative: list | None = None
    cfg: float = 1.0


@dataclass
class SampleResult:
    samples: torch.Tensor  # raw latents, CPU float32
    denoised: torch.Tensor  # the last x0 estimate, raw latents
    steps_run: int = 0


def schedule_for(model: Any, latent_samples: torch.Tensor | None, steps: int | None = None) -> FlowSchedule:
    """The model's sigma schedule for a latent (FLUX.2's shift also depends on the step count)."""
    size = family_image_size(latent_samples, model) if latent_samples is not None else None
    if is_flux2(model):
        return flux2_model_schedule(model.sampling, size, steps)
    return flow_schedule(model.sampling, size)


def _prepare_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    mask = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    mask = F.interpolate(mask, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)
    mask = mask.expand(-1, shape[1], -1, -1)
    if mask.shape[0] != shape[0]:
        mask = mask.repeat((shape[0] + mask.shape[0] - 1) // mask.shape[0], 1, 1, 1)[: shape[0]]
    return mask


def sample(guider: Guider, sampler: SamplerChoice, sigmas: torch.Tensor, latent: dict, noise: Any, *,
           memory: Any = None, progress: Progress | None = None) -> SampleResult:
    model = guider.model
    fmt = model_latent_format(model)
    raw = latent["samples"]
    if not isinstance(raw, torch.Tensor) or raw.ndim != 4:
        raise ValueError("latent_image must be a LATENT with 'samples' [batch, channels, height, width]")
    raw = fit_latent_to_model(raw.detach().cpu().float(), model)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).cpu()
    if len(sigmas) <= 1:  # nothing to do (denoise 0, or a start step past the end)
        return SampleResult(samples=raw.clone(), denoised=raw.clone())

    memory = manager_from(memory)
    device = memory.device
    latent_in = fmt.process_in(raw)
    if latent.get(FILL_NOISE_ORDER) == "diffusers" and isinstance(noise, RandomNoise):  # FluxFillPipeline's draws
        seeds = item_seeds(noise.seed, latent_in.shape[0], latent.get("batch_index"))
        noise_tensor, eps = diffusers_fill_noise(tuple(latent_in.shape), seeds)
        guider = replace(guider, positive=sample_fill_latents(guider.positive, eps),
                         negative=sample_fill_latents(guider.negative, eps))
    else:
        noise_tensor = noise.generate(latent, tuple(latent_in.shape)).float()
    sigma0 = float(sigmas[0])
    x = sigma0 * noise_tensor + (1.0 - sigma0) * latent_in

    mask = latent.get("noise_mask")
    mask = _prepare_mask(mask, latent_in.shape) if isinstance(mask, torch.Tensor) else None

    pad = _no_padding if is_flux2(model) else pad_to_patch  # FLUX.2 latents are already one token per pixel
    x, (height, width) = pad(x)
    padded_latent_in, _ = pad(latent_in)
    padded_noise, _ = pad(noise_tensor)
    if mask is not None:
        mask, _ = pad(mask)

    schedule = schedule_for(model, raw, len(sigmas) - 1)
    step_noise = StepNoise(item_seeds(noise.seed, raw.shape[0], latent.get("batch_index")))
    run_sampler = get_sampler(sampler.name)
    total = len(sigmas) - 1
    last_x0: list[torch.Tensor] = []

    patches = patches_for(getattr(model, "patches", ()), "transformer")  # LoRAs: patched, restored exactly
    with memory.use(model.transformer), apply_patches(model.transformer, patches), \
            use_control_nets(memory, guider.positive, guider.negative, model), \
            sampling_speedups(model, memory, progress) as speedups:  # ControlNets; step cache, compiled blocks
        denoiser_cls = Flux2Denoiser if is_flux2(model) else FluxDenoiser
        denoiser = denoiser_cls(model, guider.positive, guider.negative, guider.cfg, schedule, device, raw.shape[0])
        add_model_inputs(denoiser)  # Fill channels, reference latents, Redux attention bias
        speedups.attach(denoiser, len(sigmas) - 1)
        denoise: Callable = denoiser
        mask_at = step_mask_function(model, mask.to(device) if mask is not None else None, sigmas,
                                     schedule.sigma_min)  # DifferentialDiffusion varies it per step
        if mask is not None:
            denoise = _masked(denoiser, mask_at, padded_latent_in.to(device), padded_noise.to(device))
            x = x * mask + (1.0 - mask) * (sigma0 * padded_noise + (1.0 - sigma0) * padded_latent_in)

        family = "flux2" if is_flux2(model) else "flux1"

        def on_step(i: int, _x: torch.Tensor, x0: torch.Tensor) -> None:
            last_x0[:] = [x0]
            if progress is not None:
                progress(i + 1, total, LatentPreview(x0[..., :height, :width], family))

        # sigmas stay on the CPU: samplers read them as scalars, which must not wait for the GPU
        out = run_sampler(denoise, x.to(device), sigmas, noise=step_noise, on_step=on_step,
                          **dict(sampler.options))
    if mask is not None:
        mask = mask_at(float(sigmas[-2])).to(out.device)  # the mask of the last step
        out = out * mask + (1.0 - mask) * padded_latent_in.to(out.device)
    last_sigma = float(sigmas[-1])
    if last_sigma != 0.0:
        out = out / (1.0 - last_sigma)
    out = out[..., :height, :width].float().cpu()
    denoised = last_x0[0][..., :height, :width].float().cpu() if last_x0 else out
    return SampleResult(samples=fmt.process_out(out), denoised=fmt.process_out(denoised), steps_run=total)


def _no_padding(latents: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    return latents, (latents.shape[-2], latents.shape[-1])


def _masked(denoiser: Callable, mask_at: Callable, latent_in: torch.Tensor, noise: torch.Tensor) -> Callable:
    """Inpainting: outside the mask the model sees the input latent noised to the current sigma."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(torch.float32)
        mask = mask_at(float(sigma))
        keep = s * noise + (1.0 - s) * latent_in
        x = x * mask + (1.0 - mask) * keep
        return denoiser(x, sigma) * mask + latent_in * (1.0 - mask)

    return denoise
