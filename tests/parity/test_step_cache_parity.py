"""Our step caches make the same skip decisions as diffusers 0.42's hooks and give the same image.

The same tiny weights go through our graph (a cache node between UNETLoader and KSampler / CFGGuider) and
through diffusers' pipeline with `transformer.enable_cache(<Config>)`. A probe (tests/support/step_cache.py)
records for every transformer call whether the last block's attention ran, on both sides. Thresholds are
chosen so the random tiny model really skips (its first block changes 60-120 % between steps: see
docs/flux.md), and each test asserts skips happened and that the cache moved the image, so agreement means
something. TaylorSeer runs with float32 factors here; its bfloat16 default is checked at a looser bound.
"""

from __future__ import annotations

import pytest
import torch

from tests.parity.test_flux_parity import diffusers_text
from tests.parity.test_flux_parity import reference_images as flux1_reference
from tests.parity.test_flux_parity import reference_pipeline as flux1_pipeline
from tests.support import flux2 as f2
from tests.support.flux import make_runtime, run_prompt, txt2img_prompt
from tests.support.step_cache import tail_probe, with_cache

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TOLERANCE = 1e-5  # max abs, images in 0..1
STEPS = 8
MOVED = 1e-3  # mean abs change the cache must cause against the uncached image


def _taylor(interval: int, before: int, order: int, dtype: str = "float32", lite: bool = False) -> dict:
    return {"cache_interval": interval, "disable_cache_before_step": before, "disable_cache_after_step": -1,
            "max_order": order, "taylor_factors_dtype": dtype, "use_lite_mode": lite}


def _config(node: str, inputs: dict, steps: int = STEPS):
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    if node == "FirstBlockCache":
        return FirstBlockCacheConfig(threshold=inputs["threshold"])
    if node == "MagCache":
        return MagCacheConfig(threshold=inputs["threshold"], max_skip_steps=inputs["max_skip_steps"],
                              retention_ratio=inputs["retention_ratio"], num_inference_steps=steps,
                              mag_ratios=FLUX_MAG_RATIOS)
    return TaylorSeerCacheConfig(cache_interval=inputs["cache_interval"],
                                 disable_cache_before_step=inputs["disable_cache_before_step"],
                                 max_order=inputs["max_order"], use_lite_mode=inputs["use_lite_mode"],
                                 taylor_factors_dtype=getattr(torch, inputs["taylor_factors_dtype"]))


def _with_hook(transformer, config, run):
    transformer.enable_cache(config)
    try:
        with tail_probe() as calls:
            image = run()
    finally:
        transformer.disable_cache()
    return image, calls


FLUX1_CASES = {
    "first_block": ("FirstBlockCache", {"threshold": 1.0}),
    "mag": ("MagCache", {"threshold": 0.3, "max_skip_steps": 3, "retention_ratio": 0.2}),
    "taylorseer": ("TaylorSeerCache", _taylor(2, 2, 1)),
    "taylorseer_order2": ("TaylorSeerCache", _taylor(3, 2, 2)),
    "taylorseer_lite": ("TaylorSeerCache", _taylor(2, 2, 1, lite=True)),
}


@pytest.fixture(scope="module")
def runtime():
    return make_runtime()


def _flux1_graph(cfg: float = 1.0, negative: str | None = None) -> dict:
    return diffusers_text(txt2img_prompt(steps=STEPS, seed=5, cfg=cfg, negative=negative))


@pytest.mark.parametrize("case", list(FLUX1_CASES))
def test_flux1_cache_matches_the_diffusers_hook(runtime, case):
    node, inputs = FLUX1_CASES[case]
    uncached, _ = run_prompt(runtime, _flux1_graph())
    with tail_probe() as ours_calls:
        ours, _ = run_prompt(runtime, with_cache(_flux1_graph(), node, **inputs))
    expected, ref_calls = _with_hook(flux1_pipeline("dev").transformer, _config(node, inputs),
                                     lambda: flux1_reference("dev", width=64, height=64, batch=1, seed=5, steps=STEPS))
    assert ours_calls == ref_calls
    assert 1 <= ours_calls.count(False) and ours_calls.count(True) >= 2, ours_calls
    assert float((ours - expected).abs().max()) <= TOLERANCE
    assert float((ours - uncached).abs().mean()) >= MOVED


def test_flux1_taylorseer_bfloat16_factors_match_the_hook(runtime):
    """diffusers' default factor dtype: the decisions are equal; bfloat16 rounding of factors computed from
    outputs that differ by ~1e-6 flips a few roundings, hence the looser image bound."""
    inputs = _taylor(3, 2, 2, dtype="bfloat16")
    with tail_probe() as ours_calls:
        ours, _ = run_prompt(runtime, with_cache(_flux1_graph(), "TaylorSeerCache", **inputs))
    expected, ref_calls = _with_hook(flux1_pipeline("dev").transformer, _config("TaylorSeerCache", inputs),
                                     lambda: flux1_reference("dev", width=64, height=64, batch=1, seed=5, steps=STEPS))
    assert ours_calls == ref_calls and False in ours_calls
    assert float((ours - expected).abs().max()) <= 1e-4


@pytest.mark.parametrize("case", ["first_block", "mag", "taylorseer"])
def test_flux1_cfg_branches_keep_their_own_cache_state(runtime, case):
    """With true CFG diffusers keeps one state per cache context ("cond" / "uncond"); ours keeps one per
    branch: the interleaved decisions and the image agree."""
    node, inputs = FLUX1_CASES[case]
    with tail_probe() as ours_calls:
        ours, _ = run_prompt(runtime, with_cache(_flux1_graph(cfg=2.0, negative="blurry"), node, **inputs))
    expected, ref_calls = _with_hook(
        flux1_pipeline("dev").transformer, _config(node, inputs),
        lambda: flux1_reference("dev", width=64, height=64, batch=1, seed=5, steps=STEPS, cfg=2.0, negative="blurry"))
    assert len(ours_calls) == 2 * STEPS
    assert ours_calls == ref_calls and False in ours_calls
    assert float((ours - expected).abs().max()) <= TOLERANCE


FLUX2_CASES = {
    "mag": ("MagCache", {"threshold": 0.3, "max_skip_steps": 3, "retention_ratio": 0.2}),
    "taylorseer": ("TaylorSeerCache", _taylor(2, 2, 1)),
    "taylorseer_lite": ("TaylorSeerCache", _taylor(3, 1, 1, lite=True)),
}


def _flux2_graph() -> dict:
    return f2.flux2_graph("klein", steps=STEPS, seed=4)


@pytest.mark.parametrize("case", list(FLUX2_CASES))
def test_flux2_cache_matches_the_diffusers_hook(runtime, case):
    node, inputs = FLUX2_CASES[case]
    uncached, _ = run_prompt(runtime, _flux2_graph())
    with tail_probe() as ours_calls:
        ours, _ = run_prompt(runtime, with_cache(_flux2_graph(), node, **inputs))
    expected, ref_calls = _with_hook(f2.reference_pipeline("klein").transformer, _config(node, inputs),
                                     lambda: f2.reference_images("klein", steps=STEPS, seed=4))
    assert ours_calls == ref_calls
    assert 1 <= ours_calls.count(False) and ours_calls.count(True) >= 2, ours_calls
    assert float((ours - expected).abs().max()) <= TOLERANCE
    assert float((ours - uncached).abs().mean()) >= MOVED


def test_flux2_first_block_cache_where_the_diffusers_hook_fails(runtime):
    """diffusers 0.42's First-Block-Cache raises on FLUX.2 (its last single block returns the joined
    text+image sequence, which it subtracts from a list); ours splits the stored residual into its text
    and image parts. No reference to compare with: the run skips, and the image stays near the uncached one
    (the random first block changes 100-350 % between steps on FLUX.2, hence the threshold)."""
    transformer = f2.reference_pipeline("klein").transformer
    with pytest.raises(TypeError):
        _with_hook(transformer, _config("FirstBlockCache", {"threshold": 1.0}),
                   lambda: f2.reference_images("klein", steps=STEPS, seed=4))
    uncached, _ = run_prompt(runtime, _flux2_graph())
    with tail_probe() as calls:
        ours, _ = run_prompt(runtime, with_cache(_flux2_graph(), "FirstBlockCache", threshold=1.7))
    assert False in calls and calls.count(True) >= 2, calls
    assert torch.isfinite(ours).all()
    assert MOVED <= float((ours - uncached).abs().mean()) <= 0.2


@pytest.mark.parametrize("case", ["mag", "taylorseer"])
def test_flux2_cfg_branches_match_the_diffusers_hook(runtime, case):
    """FLUX.2 klein base with CFG (the pipeline's "cond" / "uncond" cache contexts; our branches). Same
    decisions; the image at the FLUX.2 parity suite's tolerance (cfg 4 scales the float rounding of both
    passes, as in the uncached CFG parity test)."""
    node, inputs = FLUX2_CASES[case]
    graph = lambda: f2.flux2_graph("klein-base", steps=STEPS, seed=4, cfg=4.0)  # noqa: E731
    with tail_probe() as ours_calls:
        ours, _ = run_prompt(runtime, with_cache(graph(), node, **inputs))
    expected, ref_calls = _with_hook(f2.reference_pipeline("klein-base").transformer, _config(node, inputs),
                                     lambda: f2.reference_images("klein-base", steps=STEPS, seed=4, cfg=4.0))
    assert len(ours_calls) == 2 * STEPS and ours_calls == ref_calls and False in ours_calls
    assert float((ours - expected).abs().max()) <= f2.TOLERANCE
