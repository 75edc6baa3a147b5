"""EasyCache and LazyCache as ComfyUI's nodes of those names decide (documented behaviour, own code).

Both run between `start_percent` and `end_percent` of the schedule (end_t < sigma <= start_t, the sigmas of
the model's `percent_to_sigma`); outside it every call computes. They watch an input and an output,
subsampled every `subsample_factor`-th latent row and column:
- after a computed call: diff = output - input is kept (the cached change); with an earlier computed call
  the rate k = mean|out - out_prev| / mean|in - in_prev| is kept, and norm = mean|output|;
- at a call in range, with k and norm known: c += k * mean|in - in_prev| / norm; while c < reuse_threshold
  the call returns input + diff (skip), else c resets to 0 and the call computes.
(in_prev / out_prev are the last *computed* call's: a skipped call does not move them.)

EasyCache watches each transformer call: input = the latent, output = the velocity. The first branch called
in range (the positive prompt) decides; the other branches of the same step follow its decision with their
own cached change. LazyCache watches the whole x0 estimate after CFG, with one state.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from engine.sampling.step_cache.base import Branch, StepCache, log, mean_abs


class _Tracker:
    """The watched input/output history and the accumulated change of one EasyCache / LazyCache run."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.x_prev: torch.Tensor | None = None
        self.out_prev: torch.Tensor | None = None
        self.norm: torch.Tensor | None = None
        self.rate: torch.Tensor | None = None
        self.cumulative: Any = 0.0
        self.input_change: torch.Tensor | None = None
        self.history: list[dict[str, float]] = []  # per decision: the values it used (verbose, tests)

    def subsample(self, t: torch.Tensor) -> torch.Tensor:
        f = self.settings.subsample_factor
        return t[..., ::f, ::f] if f > 1 else t

    def should_skip(self, x: torch.Tensor, name: str) -> bool:
        """At a call in range: update the accumulated change; True to reuse the cached change."""
        self.input_change = None
        if self.x_prev is not None:
            self.input_change = mean_abs(self.subsample(x) - self.x_prev)
        if self.norm is None or self.rate is None:
            return False
        self.cumulative = self.cumulative + (self.rate * self.input_change) / self.norm
        skip = bool(self.cumulative < self.settings.reuse_threshold)
        self.history.append({"input_change": float(self.input_change), "rate": float(self.rate),
                             "norm": float(self.norm), "cumulative": float(self.cumulative), "skip": skip})
        if self.settings.verbose:
            log.info("%s [verbose] - %s step; cumulative_change_rate: %.6g, reuse_threshold: %s", name,
                     "skipping" if skip else "NOT skipping", float(self.cumulative), self.settings.reuse_threshold)
        if not skip:
            self.cumulative = 0.0
        return skip

    def computed(self, x: torch.Tensor, output: torch.Tensor) -> None:
        """After a computed call: the rate (when an input change was measured) and the new references."""
        if self.norm is not None:
            output_change = mean_abs(self.subsample(output) - self.out_prev)
            if self.input_change is not None:
                self.rate = output_change / self.input_change
        self.x_prev = self.subsample(x).clone()
        self.out_prev = self.subsample(output).clone()
        self.norm = mean_abs(output)


class _Range:
    def __init__(self, denoiser: Any, settings: Any) -> None:
        self.start_t = denoiser.schedule.percent_to_sigma(settings.start_percent)
        self.end_t = denoiser.schedule.percent_to_sigma(settings.end_percent)

    def past_end(self, sigma: float) -> bool:
        return not sigma > self.end_t

    def active(self, sigma: float) -> bool:
        return sigma <= self.start_t


class EasyCache(StepCache):
    name = "EasyCache"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.tracker = _Tracker(settings)
        self.first: Branch | None = None
        self.skip_current_step = False
        self.diffs: dict[Branch, torch.Tensor] = {}

    def prepare(self, denoiser: Any, total_steps: int) -> None:
        super().prepare(denoiser, total_steps)
        self.range = _Range(denoiser, self.settings)

    def begin_step(self, x: torch.Tensor, sigma: float) -> None:
        super().begin_step(x, sigma)
        self.skip_current_step = False  # a new step: the first branch decides again

    def velocity(self, branch: Branch, original: Callable, *args: Any) -> torch.Tensor:
        tokens = args[1]
        sigma = self.sigma
        if self.range.past_end(sigma):
            self.record(branch, True)
            return original(*args)
        is_first = branch == self.first
        x = self._latent(tokens.float())
        if is_first:
            self.tracker.input_change = None
        if self.range.active(sigma):
            if self.skip_current_step:
                return self._reuse(branch, tokens)
            if self.first is None:
                self.first, is_first = branch, True
            if is_first and self.tracker.should_skip(x, self.name):
                self.skip_current_step = True
                return self._reuse(branch, tokens)
        output = original(*args)
        self.record(branch, True)
        self.diffs[branch] = output - tokens.float()
        if is_first:
            self.tracker.computed(x, self._latent(output))
        return output

    def _latent(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens back in the latent's [B, C, H, W] layout, where the subsampling picks rows and columns."""
        height, width = self.latent_size
        return self.denoiser.unpack(tokens, height, width)

    def _reuse(self, branch: Branch, tokens: torch.Tensor) -> torch.Tensor:
        self.record(branch, False)
        return tokens.float() + self.diffs[branch]


class LazyCache(StepCache):
    name = "LazyCache"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.tracker = _Tracker(settings)
        self.diff: torch.Tensor | None = None

    def prepare(self, denoiser: Any, total_steps: int) -> None:
        super().prepare(denoiser, total_steps)
        self.range = _Range(denoiser, self.settings)

    def velocity(self, branch: Branch, original: Callable, *args: Any) -> torch.Tensor:
        self.full_calls += 1  # runs only when the x0 estimate is computed
        return original(*args)

    def denoise(self, original: Callable, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma)
        branch = ("x0", 0)
        if self.range.past_end(s):
            self.record(branch, True, transformer_call=False)
            return original(x, sigma)
        if self.range.active(s) and self.tracker.x_prev is not None and self.tracker.should_skip(x, self.name):
            self.record(branch, False, transformer_call=False)
            return x + self.diff
        if not self.range.active(s):
            self.tracker.input_change = None
        output = original(x, sigma)
        self.record(branch, True, transformer_call=False)
        self.diff = output - x
        self.tracker.computed(x, output)
        return output
