"""EasyCache and LazyCache decide as ComfyUI's nodes document, checked against values worked out by hand.

A stand-in denoiser returns chosen constant outputs for chosen constant inputs, so every mean absolute
change is a plain number: the expected decisions and accumulated rates below are arithmetic on those
numbers, following the rule in engine/sampling/step_cache/easycache.py's docstring.
"""

from __future__ import annotations

import pytest
import torch

from engine.sampling.schedules import flow_schedule
from engine.models.common.handles import FluxSampling
from engine.sampling.step_cache.run import make_cache, _Attacher
from engine.sampling.step_cache.settings import EasyCacheSettings, LazyCacheSettings


class StandIn:
    """The parts of FluxDenoiser a step cache touches; `outputs[side]` is the velocity of each call."""

    def __init__(self, outputs: dict[str, list[float]], cfg: bool = False) -> None:
        self.positive, self.negative = [object()], ([object()] if cfg else [])
        self.outputs = {k: list(v) for k, v in outputs.items()}
        self.schedule = flow_schedule(FluxSampling(use_dynamic_shifting=False, shift=1.0))
        self.calls: list[str] = []

    def __call__(self, x, sigma):
        return self.denoise(x, sigma)

    def denoise(self, x, sigma):
        v = self.velocity(self.positive[0], x, None, None)
        if self.negative:
            self.velocity(self.negative[0], x, None, None)  # only its cache decisions matter here
        return x - float(sigma) * v

    def velocity(self, entry, tokens, timestep, img_ids):
        side = "positive" if entry is self.positive[0] else "negative"
        self.calls.append(side)
        return torch.full_like(tokens, self.outputs[side].pop(0))

    @staticmethod
    def unpack(tokens, height, width):
        return tokens


def _attach(settings, denoiser, steps):
    cache = make_cache(settings)
    _Attacher(cache).attach(denoiser, steps)
    return cache


def _x(value: float) -> torch.Tensor:
    return torch.full((1, 2, 16, 16), value)


# sigmas 0.9 ... 0.5; inputs fall by 0.1 a step except the fourth (by 0.2 from the last computed)
SIGMAS = [0.9, 0.8, 0.7, 0.6, 0.5]
INPUTS = [1.0, 0.9, 0.8, 0.7, 0.6]


def test_easycache_decisions_and_rates_by_hand():
    # call 1: compute (no history); x_prev 1.0, out_prev 2.0, norm 2.0
    # call 2: input change 0.1, no rate yet -> compute; rate = |1.8 - 2.0| / 0.1 = 2, norm 1.8
    # call 3: input change |0.8 - 0.9| = 0.1; c = 2 * 0.1 / 1.8 = 0.1111 < 0.2 -> skip: 0.8 + (1.8 - 0.9) = 1.7
    # call 4: input change |0.7 - 0.9| = 0.2 (x_prev stays at the last computed call); c += 2 * 0.2 / 1.8
    #         = 0.3333 >= 0.2 -> compute, c = 0; rate = |1.5 - 1.8| / 0.2 = 1.5, norm 1.5
    # call 5: input change 0.1; c = 1.5 * 0.1 / 1.5 = 0.1 < 0.2 -> skip: 0.6 + (1.5 - 0.7) = 1.4
    denoiser = StandIn({"positive": [2.0, 1.8, 1.5]})
    cache = _attach(EasyCacheSettings(reuse_threshold=0.2, start_percent=0.0, end_percent=1.0), denoiser, 5)
    x0 = [denoiser(_x(x), torch.tensor(s)) for x, s in zip(INPUTS, SIGMAS)]
    assert cache.stats[("positive", 0)].decisions == [True, True, False, True, False]
    assert [round(h["cumulative"], 4) for h in cache.tracker.history] == [0.1111, 0.3333, 0.1]
    assert float(x0[2].mean()) == pytest.approx(0.8 - 0.7 * 1.7)
    assert float(x0[4].mean()) == pytest.approx(0.6 - 0.5 * 1.4)
    assert cache.summary()["skipped_steps"] == 2 and cache.summary()["transformer_evaluations"] == 3


def test_easycache_negative_branch_follows_the_positive_decision_with_its_own_change():
    denoiser = StandIn({"positive": [2.0, 1.8, 1.5], "negative": [3.0, 2.5, 2.0]}, cfg=True)
    cache = _attach(EasyCacheSettings(reuse_threshold=0.2, start_percent=0.0, end_percent=1.0), denoiser, 5)
    outputs = []
    original = cache.velocity

    def spy(branch, forward, *args):
        outputs.append((branch[0], float(original(branch, forward, *args).mean())))
        return outputs[-1][1]

    cache.velocity = spy
    for x, s in zip(INPUTS, SIGMAS):
        denoiser(_x(x), torch.tensor(s))
    assert cache.stats[("negative", 0)].decisions == [True, True, False, True, False]
    negatives = [v for side, v in outputs if side == "negative"]
    assert negatives[2] == pytest.approx(0.8 + (2.5 - 0.9))  # its own cached change, not the positive's
    assert negatives[4] == pytest.approx(0.6 + (2.0 - 0.7))
    assert denoiser.calls.count("negative") == 3


def test_easycache_threshold_zero_and_range_never_skip():
    for settings in (EasyCacheSettings(reuse_threshold=0.0, start_percent=0.0, end_percent=1.0),
                     EasyCacheSettings(reuse_threshold=3.0, start_percent=0.5, end_percent=0.55)):
        denoiser = StandIn({"positive": [2.0, 1.8, 1.5, 1.4, 1.3]})
        cache = _attach(settings, denoiser, 5)
        for x, s in zip(INPUTS, SIGMAS):
            denoiser(_x(x), torch.tensor(s))
        assert cache.stats[("positive", 0)].decisions == [True] * 5


def test_easycache_range_uses_the_schedules_percent_to_sigma():
    # shift 1: percent_to_sigma(p) = 1 - p; start 0.25 -> 0.75, end 0.45 -> 0.55: only sigmas 0.7 and 0.6 are
    # in range (0.55 < sigma <= 0.75); with two computed calls needed first, nothing in range can skip, and
    # calls outside the range never skip even at a huge threshold
    denoiser = StandIn({"positive": [2.0, 1.8, 1.5, 1.4, 1.3]})
    cache = _attach(EasyCacheSettings(reuse_threshold=3.0, start_percent=0.25, end_percent=0.45), denoiser, 5)
    for x, s in zip(INPUTS, SIGMAS):
        denoiser(_x(x), torch.tensor(s))
    assert cache.stats[("positive", 0)].decisions == [True] * 5
    assert cache.first == ("positive", 0) and cache.tracker.history == []


def test_lazycache_decisions_on_the_x0_estimate_by_hand():
    # LazyCache watches x -> x0 (x0 = x - sigma * v): with v = 2.0, 1.8, 1.5 for the computed calls
    # call 1 (x 1.0, s 0.9): x0 = -0.8; norm 0.8
    # call 2 (x 0.9, s 0.8): x0 = 0.9 - 1.44 = -0.54; input change 0.1, no rate -> compute;
    #         rate = |-0.54 + 0.8| / 0.1 = 2.6, norm 0.54
    # call 3 (x 0.8): c = 2.6 * 0.1 / 0.54 = 0.4815 -> computes at threshold 0.4, skips at 0.5
    for threshold, expected in ((0.4, [True, True, True]), (0.5, [True, True, False])):
        denoiser = StandIn({"positive": [2.0, 1.8, 1.5]})
        cache = _attach(LazyCacheSettings(reuse_threshold=threshold, start_percent=0.0, end_percent=1.0),
                        denoiser, 3)
        out = [denoiser(_x(x), torch.tensor(s)) for x, s in zip(INPUTS[:3], SIGMAS[:3])]
        assert cache.stats[("x0", 0)].decisions == expected
        assert cache.tracker.history[0]["cumulative"] == pytest.approx(2.6 * 0.1 / 0.54, rel=1e-5)
        if not expected[-1]:
            assert float(out[2].mean()) == pytest.approx(0.8 + (-0.54 - 0.9), rel=1e-5)
            assert denoiser.calls == ["positive", "positive"]
