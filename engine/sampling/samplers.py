"""Samplers for rectified-flow models, written in the data-prediction (x0) form.

A sampler gets `denoise(x, sigma) -> x0 estimate`, the start `x` (noise already mixed in), the sigmas
(decreasing, usually ending in 0), a `StepNoise` for stochastic samplers and `on_step(i, x, x0)` called
once per step. In rectified flow x_sigma = (1 - sigma) x0 + sigma * noise, so alpha(sigma) = 1 - sigma and
the probability-flow ODE is dx/dsigma = (x - x0) / sigma (the velocity).

- euler, ddim: one Euler step of the ODE per sigma (ddim is Euler on this parameterisation).
- heun: Karras et al. 2022, Algorithm 1's 2nd-order correction (Euler on the last step to sigma 0).
- euler_ancestral: step deterministically to sigma_down, rescale, then add fresh noise so the marginal is
  the one of sigma_next: with a = (1 - s1) / (1 - sd), noise std sqrt(s1^2 - a^2 sd^2), and
  sd = s1 (1 + (s1 / s0 - 1) eta) (eta = 1: sd = s1^2 / s0).
- dpmpp_2m: DPM-Solver++(2M) (Lu et al. 2022) with lambda = log(alpha / sigma) = log((1 - s) / s).
- dpmpp_2m_sde: DPM-Solver++(2M) SDE, midpoint variant, eta = 1.
- lcm: Luo et al. 2023: jump to the x0 estimate, then re-noise to the next sigma.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OnStep = Callable[[int, torch.Tensor, torch.Tensor], None]


class Sampler(Protocol):
    def __call__(self, denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise: Callable | None,
                 on_step: OnStep) -> torch.Tensor: ...


def _lambda(sigma: float) -> float:
    """Half log-SNR of rectified flow, log((1 - sigma) / sigma), with the limits at 1 and 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log((1.0 - sigma) / sigma)


def _need_noise(noise: Callable | None, name: str) -> Callable:
    if noise is None:
        raise ValueError(f"sampler {name} is stochastic and needs a step-noise source")
    return noise


def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                 on_step: OnStep) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        velocity = (x - x0) / sigma
        x = x + velocity * (sigma_next - sigma)
        on_step(i, x, x0)
    return x


def sample_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                on_step: OnStep) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        velocity = (x - x0) / sigma
        dt = sigma_next - sigma
        if float(sigma_next) == 0.0:
            x = x + velocity * dt
        else:
            x_euler = x + velocity * dt
            velocity_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
            x = x + (velocity + velocity_next) / 2 * dt
        on_step(i, x, x0)
    return x


def sample_euler_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                           on_step: OnStep, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    noise = _need_noise(noise, "euler_ancestral")
    for i in range(len(sigmas) - 1):
        s0, s1 = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, sigmas[i])
        if s1 == 0.0:
            x = x0
        else:
            s_down = s1 * (1.0 + (s1 / s0 - 1.0) * eta)
            ratio = s_down / s0
            x = ratio * x + (1.0 - ratio) * x0
            if eta > 0.0:
                scale = (1.0 - s1) / (1.0 - s_down)
                renoise = math.sqrt(max(s1 ** 2 - (scale * s_down) ** 2, 0.0))
                x = scale * x + noise(x) * s_noise * renoise
        on_step(i, x, x0)
    return x


def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                    on_step: OnStep) -> torch.Tensor:
    previous_x0, previous_h = None, None
    for i in range(len(sigmas) - 1):
        s0, s1 = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, sigmas[i])
        if s1 == 0.0:
            x = x0
        else:
            h = _lambda(s1) - _lambda(s0)
            blend = x0
            if previous_x0 is not None and math.isfinite(previous_h) and math.isfinite(h):
                r = previous_h / h
                blend = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * previous_x0
            x = (s1 / s0) * x - (1.0 - s1) * math.expm1(-h) * blend
            previous_h = h
        previous_x0 = x0
        on_step(i, x, x0)
    return x


def sample_dpmpp_2m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                        on_step: OnStep, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    noise = _need_noise(noise, "dpmpp_2m_sde")
    previous_x0, previous_h = None, None
    for i in range(len(sigmas) - 1):
        s0, s1 = float(sigmas[i]), float(sigmas[i + 1])
        x0 = denoise(x, sigmas[i])
        if s1 == 0.0:
            x = x0
        else:
            h = _lambda(s1) - _lambda(s0)
            eta_h = eta * h
            keep = (s1 / s0) * math.exp(-eta_h) if math.isfinite(eta_h) else 0.0
            gain = (1.0 - s1) * -math.expm1(-h - eta_h)
            x = keep * x + gain * x0
            if previous_x0 is not None and math.isfinite(previous_h) and math.isfinite(h):
                r = previous_h / h
                x = x + 0.5 * gain * (1.0 / r) * (x0 - previous_x0)
            if eta > 0.0:
                x = x + noise(x) * s1 * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise
            previous_h = h
        previous_x0 = x0
        on_step(i, x, x0)
    return x


def sample_lcm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
               on_step: OnStep) -> torch.Tensor:
    noise = _need_noise(noise, "lcm")
    for i in range(len(sigmas) - 1):
        s1 = float(sigmas[i + 1])
        x0 = denoise(x, sigmas[i])
        x = x0 if s1 == 0.0 else s1 * noise(x0) + (1.0 - s1) * x0
        on_step(i, x, x0)
    return x


# In ComfyUI's order (its SAMPLERS list), restricted to those implemented here.
SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "lcm": sample_lcm,
    "ddim": sample_euler,
}
SAMPLER_NAMES = tuple(SAMPLERS)


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {list(SAMPLERS)}")
    return SAMPLERS[name]
