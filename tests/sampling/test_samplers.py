"""Samplers on an analytic flow problem, noise rules and latent packing.

For data x0 ~ N(mu, s^2) the optimal denoiser is linear and the probability-flow ODE of rectified flow
moves the noise x_1 = z exactly to mu + s * z. So the ODE samplers' error against that endpoint must fall
at their order (1 for Euler, 2 for Heun and DPM-Solver++(2M)), and the stochastic samplers must produce
the right distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.sampling import latents as L
from engine.sampling import noise as N
from engine.sampling import samplers as SM
from engine.sampling.schedules import FlowSchedule, scheduler_sigmas

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

MU, STD = 0.3, 0.5


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.double()
    alpha = 1.0 - s
    gain = alpha * STD ** 2 / (alpha ** 2 * STD ** 2 + s ** 2)
    return (MU + gain * (x.double() - alpha * MU)).to(x.dtype)


def run(name: str, steps: int, z: torch.Tensor, seeds=(7,)) -> torch.Tensor:
    sigmas = scheduler_sigmas("simple", FlowSchedule(mu=1.0), steps).double()
    noise = N.StepNoise(list(seeds))
    return SM.get_sampler(name)(gaussian_denoiser, z.clone(), sigmas, noise=noise, on_step=lambda *a: None)


@pytest.fixture(scope="module")
def z() -> torch.Tensor:
    return torch.randn(1, 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("name,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_ode_samplers_converge_at_their_order(name, order, z):
    target = MU + STD * z
    errors = [float((run(name, steps, z) - target).abs().mean()) for steps in (8, 16, 32)]
    assert errors[2] < errors[1] < errors[0]
    ratio = errors[1] / errors[2]
    # halving the step size divides the error by about 2**order (at least 0.7 of that)
    assert ratio > 2 ** order * 0.7, (errors, ratio)
    assert errors[2] < (0.05 if order == 1 else 0.01)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde"])
def test_stochastic_samplers_sample_the_data_distribution(name):
    z = torch.randn(1, 20_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coarse, fine = run(name, 30, z), run(name, 200, z)
    for out in (coarse, fine):
        assert float(out.mean()) == pytest.approx(MU, abs=0.01)
    # the spread converges to the data's as the steps shrink (ancestral steps are first order)
    assert abs(float(fine.std()) - STD) < abs(float(coarse.std()) - STD) + 0.005
    assert float(fine.std()) == pytest.approx(STD, abs=0.02)
    # and they really are stochastic: the endpoint is not the ODE's deterministic map
    assert float((fine - (MU + STD * z)).abs().mean()) > 0.05


@pytest.mark.parametrize("name", SM.SAMPLER_NAMES)
def test_a_single_point_distribution_is_reached_exactly(name):
    """With a Dirac data distribution every sampler must land on it, whatever the path."""
    target = torch.full((1, 64), 0.7, dtype=torch.float64)
    sigmas = scheduler_sigmas("karras", FlowSchedule(mu=1.15), 6).double()
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = SM.get_sampler(name)(lambda x, s: target.clone(), x, sigmas, noise=N.StepNoise([5]),
                               on_step=lambda *a: None)
    assert torch.allclose(out, target, atol=1e-9)


def test_on_step_is_called_once_per_step_with_the_x0_estimate():
    calls = []
    sigmas = scheduler_sigmas("simple", FlowSchedule(mu=1.0), 5).double()
    x = torch.randn(1, 8, dtype=torch.float64)
    SM.sample_heun(gaussian_denoiser, x, sigmas, on_step=lambda i, x, x0: calls.append((i, x0.shape)))
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4]


def test_stochastic_samplers_refuse_to_run_without_noise():
    with pytest.raises(ValueError, match="step-noise"):
        SM.sample_euler_ancestral(gaussian_denoiser, torch.zeros(1, 2), torch.tensor([1.0, 0.5, 0.0]),
                                  noise=None, on_step=lambda *a: None)


def test_unknown_sampler_lists_the_available_ones():
    with pytest.raises(ValueError, match="available.*euler"):
        SM.get_sampler("uni_pc")


# ----- noise

def test_item_seeds_count_up_and_wrap_at_2_64():
    assert N.item_seeds(5, 3) == [5, 6, 7]
    assert N.item_seeds(2 ** 64 - 1, 2) == [2 ** 64 - 1, 0]
    assert N.item_seeds(10, 2, batch_index=[4, 9]) == [14, 19]
    with pytest.raises(ValueError, match="batch_index"):
        N.item_seeds(1, 2, batch_index=[0])


def test_an_items_noise_does_not_depend_on_its_batch_position():
    batch = N.initial_noise((3, 16, 4, 6), N.item_seeds(100, 3))
    for i in range(3):
        alone = N.initial_noise((1, 16, 4, 6), [100 + i])
        assert torch.equal(batch[i:i + 1], alone)
    steps_batch = N.StepNoise([100, 101])(torch.zeros(2, 3, 2, 2))
    steps_alone = N.StepNoise([101])(torch.zeros(1, 3, 2, 2))
    assert torch.equal(steps_batch[1:], steps_alone)
    assert not torch.equal(steps_alone, N.initial_noise((1, 3, 2, 2), [101]))


def test_noise_matches_diffusers_randn_tensor_with_cpu_generators():
    from diffusers.utils.torch_utils import randn_tensor

    gens = [torch.Generator("cpu").manual_seed(42 + i) for i in range(2)]
    expected = randn_tensor((2, 16, 6, 8), generator=gens, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(N.initial_noise((2, 16, 6, 8), N.item_seeds(42, 2)), expected)


def test_noise_is_cast_after_drawing_so_dtypes_agree():
    a = N.initial_noise((1, 4, 2, 2), [9], dtype=torch.bfloat16)
    b = N.initial_noise((1, 4, 2, 2), [9]).to(torch.bfloat16)
    assert torch.equal(a, b)


# ----- packing

def test_pack_and_ids_match_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 6, 10)
    assert torch.equal(L.pack_latents(x), FluxPipeline._pack_latents(x, 2, 16, 6, 10))
    assert torch.equal(L.unpack_latents(L.pack_latents(x), 6, 10), x)
    unpacked = FluxPipeline._unpack_latents(L.pack_latents(x), 48, 80, 8)
    assert torch.equal(unpacked, x)
    assert torch.equal(L.image_ids(6, 10), FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32))
    assert torch.equal(L.text_ids(7), torch.zeros(7, 3))


def test_padding_for_odd_latents_round_trips():
    x = torch.randn(1, 16, 5, 7)
    padded, (h, w) = L.pad_to_patch(x)
    assert padded.shape[-2:] == (6, 8) and (h, w) == (5, 7)
    assert torch.equal(padded[..., :h, :w], x)
    same, _ = L.pad_to_patch(torch.randn(1, 16, 4, 4))
    assert same.shape[-2:] == (4, 4)


def test_latent_format_round_trips_and_empty_latents_widen():
    raw = torch.randn(1, 16, 2, 2)
    assert torch.allclose(L.FLUX1_LATENT.process_out(L.FLUX1_LATENT.process_in(raw)), raw, atol=1e-6)
    widened = L.fit_latent_channels(torch.zeros(2, 4, 3, 3), L.FLUX1_LATENT)
    assert widened.shape == (2, 16, 3, 3)
    with pytest.raises(ValueError, match="4 channels.*expects 16"):
        L.fit_latent_channels(torch.ones(1, 4, 3, 3), L.FLUX1_LATENT)


def test_image_size_check():
    assert L.check_image_size(1024, 768) is None
    assert "multiples of 16" in L.check_image_size(1000, 768)
    assert "megapixels" in L.check_image_size(4096, 2048)
    assert L.check_image_size(2048, 2048) is None
    assert np.isclose(L.MAX_PIXELS, 2048 * 2048)
