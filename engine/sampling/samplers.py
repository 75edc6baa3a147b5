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
# One step of a sampler: (x, x0 estimate, sigma, sigma_next) -> x at sigma_next.
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


def _run(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, on_step: OnStep, step: Step) -> torch.Tensor:
    """The loop every sampler shares: estimate x0 at sigma i, let `step` move x to sigma i + 1, report."""
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        x = step(x, x0, sigmas[i], sigmas[i + 1])
        on_step(i, x, x0)
    return x


def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                 on_step: OnStep) -> torch.Tensor:
    def step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        velocity = (x - x0) / sigma
        return x + velocity * (sigma_next - sigma)

    return _run(denoise, x, sigmas, on_step, step)


def sample_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                on_step: OnStep) -> torch.Tensor:
    def step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        velocity = (x - x0) / sigma
        dt = sigma_next - sigma
        if float(sigma_next) == 0.0:
            return x + velocity * dt
        x_euler = x + velocity * dt
        velocity_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
        return x + (velocity + velocity_next) / 2 * dt

    return _run(denoise, x, sigmas, on_step, step)


def sample_euler_ancestral(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                           on_step: OnStep, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    noise = _need_noise(noise, "euler_ancestral")

    def step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        s0, s1 = float(sigma), float(sigma_next)
        if s1 == 0.0:
            return x0
        s_down = s1 * (1.0 + (s1 / s0 - 1.0) * eta)
        ratio = s_down / s0
        x = ratio * x + (1.0 - ratio) * x0
        if eta > 0.0:
            scale = (1.0 - s1) / (1.0 - s_down)
            renoise = math.sqrt(max(s1 ** 2 - (scale * s_down) ** 2, 0.0))
            x = scale * x + noise(x) * s_noise * renoise
        return x

    return _run(denoise, x, sigmas, on_step, step)


# A DPM++ 2M update: (x, x0, previous x0, sigma, sigma_next, h, r) -> x at sigma_next, where h is the log-SNR
# step and r the previous h / h (None on the first step, or when either step is infinite: first order).
MultistepUpdate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float, float, float, float | None],
                           torch.Tensor]


class _Multistep:
    """The step the DPM++ 2M samplers share: a jump to x0 on the last step, otherwise `update` with the
    log-SNR step h and its ratio to the previous one; remembers each step's x0 estimate and h."""

    def __init__(self, update: MultistepUpdate) -> None:
        self.update = update
        self.previous_x0: torch.Tensor | None = None
        self.previous_h: float | None = None

    def __call__(self, x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
                 sigma_next: torch.Tensor) -> torch.Tensor:
        s0, s1 = float(sigma), float(sigma_next)
        if s1 == 0.0:
            x = x0
        else:
            h = _lambda(s1) - _lambda(s0)
            r = None
            if self.previous_x0 is not None and math.isfinite(self.previous_h) and math.isfinite(h):
                r = self.previous_h / h
            x = self.update(x, x0, self.previous_x0, s0, s1, h, r)
            self.previous_h = h
        self.previous_x0 = x0
        return x


def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                    on_step: OnStep) -> torch.Tensor:
    def update(x: torch.Tensor, x0: torch.Tensor, previous_x0: torch.Tensor | None, s0: float, s1: float, h: float,
               r: float | None) -> torch.Tensor:
        blend = x0
        if r is not None:
            blend = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * previous_x0
        return (s1 / s0) * x - (1.0 - s1) * math.expm1(-h) * blend

    return _run(denoise, x, sigmas, on_step, _Multistep(update))


def sample_dpmpp_2m_sde(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
                        on_step: OnStep, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    noise = _need_noise(noise, "dpmpp_2m_sde")

    def update(x: torch.Tensor, x0: torch.Tensor, previous_x0: torch.Tensor | None, s0: float, s1: float, h: float,
               r: float | None) -> torch.Tensor:
        eta_h = eta * h
        keep = (s1 / s0) * math.exp(-eta_h) if math.isfinite(eta_h) else 0.0
        gain = (1.0 - s1) * -math.expm1(-h - eta_h)
        x = keep * x + gain * x0
        if r is not None:
            x = x + 0.5 * gain * (1.0 / r) * (x0 - previous_x0)
        if eta > 0.0:
            x = x + noise(x) * s1 * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise
        return x

    return _run(denoise, x, sigmas, on_step, _Multistep(update))


def sample_lcm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, *, noise=None,
               on_step: OnStep) -> torch.Tensor:
    noise = _need_noise(noise, "lcm")

    def step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        s1 = float(sigma_next)
        return x0 if s1 == 0.0 else s1 * noise(x0) + (1.0 - s1) * x0

    return _run(denoise, x, sigmas, on_step, step)


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
