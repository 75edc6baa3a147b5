"""Sigma schedules: `simple` is FluxPipeline's schedule exactly; the others follow their published formulas.

The expected values here are computed independently (numpy, straight from the formulas in the papers and
in diffusers' FluxPipeline), not by calling the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.models.common.handles import FluxSampling
from engine.sampling import schedules as S

DEV = FluxSampling()
SCHNELL = FluxSampling(use_dynamic_shifting=False, shift=1.0)


def flux_sigma(t: np.ndarray, mu: float) -> np.ndarray:
    return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))


def with_zero(values) -> np.ndarray:
    return np.concatenate([np.asarray(values, dtype=np.float64), [0.0]])


def pipeline_sigmas(variant: str, steps: int, width: int, height: int) -> torch.Tensor:
    """The sigmas FluxPipeline.__call__ uses, computed through its own helpers."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    from engine.models.common.configs import load_config

    config = load_config(f"flux1-{variant}-scheduler")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    seq_len = (height // 16) * (width // 16)
    mu = calculate_shift(seq_len, config["base_image_seq_len"], config["max_image_seq_len"],
                         config["base_shift"], config["max_shift"])
    retrieve_timesteps(scheduler, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler.sigmas


@pytest.mark.parametrize("seq_len", [64, 256, 1024, 4096, 16384])
def test_calculate_shift_matches_diffusers(seq_len):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert S.calculate_shift(seq_len) == pytest.approx(calculate_shift(seq_len), abs=1e-12)


@pytest.mark.parametrize("variant,sampling", [("dev", DEV), ("schnell", SCHNELL)])
@pytest.mark.parametrize("steps,width,height", [(4, 256, 256), (28, 1024, 1024), (7, 512, 768), (1, 64, 48)])
def test_simple_is_flux_pipeline_schedule_exactly(variant, sampling, steps, width, height):
    ours = S.scheduler_sigmas("simple", S.flow_schedule(sampling, (width, height)), steps)
    expected = pipeline_sigmas(variant, steps, width, height)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, expected.float())


def test_dynamic_shift_follows_the_image_size_and_model_sampling_flux_fixes_it():
    small = S.flow_schedule(DEV, (256, 256))
    large = S.flow_schedule(DEV, (1024, 1024))
    assert small.mu == pytest.approx(0.5) and large.mu == pytest.approx(1.15)
    fixed = FluxSampling(width=1024, height=1024)
    assert S.flow_schedule(fixed, (256, 256)).mu == pytest.approx(1.15)
    # BasicScheduler sees no latent: a 1024x1024 image's shift (ComfyUI's default for dev)
    assert S.flow_schedule(DEV, None).mu == pytest.approx(1.15)
    # ComfyUI's ModelSamplingFlux formula: width * height / (8 * 8 * 2 * 2) tokens
    odd = S.flow_schedule(FluxSampling(width=1000, height=600, max_shift=2.0, base_shift=0.25), None)
    slope = (2.0 - 0.25) / (4096 - 256)
    assert odd.mu == pytest.approx(1000 * 600 / 256 * slope + 0.25 - slope * 256)


@pytest.mark.parametrize("schedule", [S.FlowSchedule(mu=0.8), S.FlowSchedule(shift=3.0), S.FlowSchedule()])
def test_timestep_inverts_sigma(schedule):
    t = torch.linspace(0.001, 1.0, 50, dtype=torch.float64)
    assert torch.allclose(schedule.timestep(schedule.sigma(t)), t, atol=1e-12)
    assert schedule.sigma_max == pytest.approx(1.0)


def test_linear_shift_formula():
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    assert torch.allclose(S.FlowSchedule(shift=3.0).sigma(t), 3 * t / (1 + 2 * t))
    assert torch.allclose(S.FlowSchedule(shift=1.0).sigma(t), t)


MU = 0.9
SCHED = S.FlowSchedule(mu=MU)
SIGMA_MIN = flux_sigma(np.array(1e-3), MU)


def test_normal_and_sgm_uniform():
    steps = 6
    t_normal = np.linspace(1.0, 1e-3, steps)
    t_sgm = np.linspace(1.0, 1e-3, steps + 1)[:-1]
    np.testing.assert_allclose(S.scheduler_sigmas("normal", SCHED, steps).numpy(),
                               with_zero(flux_sigma(t_normal, MU)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(S.scheduler_sigmas("sgm_uniform", SCHED, steps).numpy(),
                               with_zero(flux_sigma(t_sgm, MU)), rtol=1e-6, atol=1e-7)


def test_karras_equation_5():
    steps, rho = 8, 7.0
    i = np.arange(steps)
    expected = (1.0 ** (1 / rho) + i / (steps - 1) * (SIGMA_MIN ** (1 / rho) - 1.0 ** (1 / rho))) ** rho
    np.testing.assert_allclose(S.scheduler_sigmas("karras", SCHED, steps).numpy(), with_zero(expected),
                               rtol=1e-6, atol=1e-8)


def test_exponential_is_log_linear():
    steps = 5
    expected = np.exp(np.linspace(math.log(1.0), math.log(SIGMA_MIN), steps))
    np.testing.assert_allclose(S.scheduler_sigmas("exponential", SCHED, steps).numpy(), with_zero(expected),
                               rtol=1e-6, atol=1e-8)


def test_kl_optimal():
    steps = 6
    u = np.linspace(0, 1, steps)
    expected = np.tan((1 - u) * math.atan(1.0) + u * math.atan(SIGMA_MIN))
    np.testing.assert_allclose(S.scheduler_sigmas("kl_optimal", SCHED, steps).numpy(), with_zero(expected),
                               rtol=1e-6, atol=1e-8)


def test_beta_uses_beta_quantiles_on_the_training_grid():
    from scipy.stats import beta

    steps = 10
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    idx = np.rint(beta.ppf(quantiles, 0.6, 0.6) * 999)
    expected = flux_sigma((idx + 1) / 1000, MU)
    np.testing.assert_allclose(S.scheduler_sigmas("beta", SCHED, steps).numpy(), with_zero(expected),
                               rtol=1e-6, atol=1e-8)
    # the Beta(0.6, 0.6) density is U-shaped: steps cluster at both ends of the trajectory
    gaps = np.diff(idx)
    assert abs(gaps[0]) < abs(gaps[len(gaps) // 2]) and abs(gaps[-1]) < abs(gaps[len(gaps) // 2])


def test_beta_drops_repeated_grid_points():
    sigmas = S.scheduler_sigmas("beta", S.FlowSchedule(mu=0.5), 2000)
    assert len(sigmas) <= 1001
    assert bool((sigmas[:-1] > sigmas[1:]).all())


@pytest.mark.parametrize("name", S.SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 3, 20])
def test_every_scheduler_is_decreasing_from_one_to_zero(name, steps):
    sigmas = S.scheduler_sigmas(name, S.FlowSchedule(mu=1.15), steps)
    assert len(sigmas) == steps + 1
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == 0.0
    assert bool((sigmas[:-1] > sigmas[1:]).all())


def test_denoise_takes_the_tail_of_a_longer_schedule():
    full = S.scheduler_sigmas("simple", SCHED, 10)
    assert torch.equal(S.denoise_sigmas("simple", SCHED, 5, 0.5), full[-6:])
    assert torch.equal(S.denoise_sigmas("simple", SCHED, 5, 1.0), S.scheduler_sigmas("simple", SCHED, 5))
    assert len(S.denoise_sigmas("simple", SCHED, 5, 0.0)) == 0


def test_step_range_window():
    full = S.scheduler_sigmas("simple", SCHED, 8)
    first = S.step_range_sigmas(full, 0, 3, force_full_denoise=False)
    assert torch.equal(first, full[:4])
    finished = S.step_range_sigmas(full, 0, 3, force_full_denoise=True)
    assert finished[-1] == 0.0 and torch.equal(finished[:-1], full[:3])
    assert torch.equal(S.step_range_sigmas(full, 3, 10000, force_full_denoise=True), full[3:])
    assert len(S.step_range_sigmas(full, 8, 10000, force_full_denoise=True)) == 0


def test_unknown_scheduler_names_the_available_ones():
    with pytest.raises(ValueError, match="available.*simple"):
        S.scheduler_sigmas("ddim_uniform", SCHED, 4)
