"""Our FLUX.2 graphs and diffusers' Flux2KleinPipeline / Flux2Pipeline give the same images from the same tiny
weights, prompt and noise (float32, max abs difference <= 1e-4 on the decoded image).

Settings that reproduce the pipelines: sampler euler with Flux2Scheduler(steps, width, height) (or KSampler
with scheduler simple: the same schedule); klein distilled: cfg 1; klein base: CFGGuider with cfg =
guidance_scale and the negative prompt "" (the pipeline's unconditional prompt), references on both sides;
dev: FluxGuidance = guidance_scale. Noise matches the pipelines called with one CPU generator per image,
seeded seed + i. Reference images are LoadImage -> VAEEncode -> ReferenceLatent, given to the pipeline as the
same PIL images (sizes multiples of 16 under 1 megapixel, so its preprocessing does not resize them).
"""

from __future__ import annotations

import pytest
import torch

from tests.support.flux2 import (SENSITIVITY, TOLERANCE, flux2_graph, reference_images, reference_pipeline,
                                      write_reference_image)
from tests.support.flux import make_runtime, run_prompt

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def runtime():
    return make_runtime()


@pytest.fixture(scope="module")
def references(runtime):
    """Two reference images of different sizes in the runtime's input folder (names, PIL images)."""
    folder = runtime.folders.input_dir
    first = write_reference_image(folder, "flux2_ref_a.png", 64, 64, seed=1)
    second = write_reference_image(folder, "flux2_ref_b.png", 96, 80, seed=2)
    return ("flux2_ref_a.png", "flux2_ref_b.png"), [first, second]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def test_klein_text_to_image_matches_flux2_klein_pipeline(runtime):
    ours, _ = run_prompt(runtime, flux2_graph("klein", batch=2, seed=11, steps=3))
    expected = reference_images("klein", batch=2, seed=11, steps=3)
    assert _max_diff(ours, expected) <= TOLERANCE
    assert float((ours[0] - ours[1]).abs().mean()) >= SENSITIVITY  # the two seeds really differ


def test_klein_base_with_cfg_matches_the_pipeline(runtime):
    ours, _ = run_prompt(runtime, flux2_graph("klein-base", width=48, height=64, seed=4, steps=3, cfg=4.0))
    expected = reference_images("klein-base", width=48, height=64, seed=4, steps=3, cfg=4.0)
    assert _max_diff(ours, expected) <= TOLERANCE
    no_cfg, _ = run_prompt(runtime, flux2_graph("klein-base", width=48, height=64, seed=4, steps=3, cfg=1.0))
    assert float((ours - no_cfg).abs().mean()) >= SENSITIVITY  # CFG really acts


def test_klein_with_two_references_of_different_sizes_matches_the_pipeline(runtime, references):
    names, images = references
    ours, _ = run_prompt(runtime, flux2_graph("klein", seed=8, steps=3, references=names))
    expected = reference_images("klein", seed=8, steps=3, images=images)
    assert _max_diff(ours, expected) <= TOLERANCE
    one_ref, _ = run_prompt(runtime, flux2_graph("klein", seed=8, steps=3, references=names[:1]))
    assert float((ours - one_ref).abs().mean()) >= SENSITIVITY  # the second reference matters


def test_klein_base_cfg_with_a_reference_matches_the_pipeline(runtime, references):
    """With CFG the unconditional pass sees the references too (ReferenceLatent on the negative)."""
    names, images = references
    ours, _ = run_prompt(runtime, flux2_graph("klein-base", seed=2, steps=2, cfg=3.0, references=names[1:]))
    expected = reference_images("klein-base", seed=2, steps=2, cfg=3.0, images=images[1:])
    assert _max_diff(ours, expected) <= TOLERANCE


def test_dev_text_to_image_matches_flux2_pipeline(runtime):
    ours, _ = run_prompt(runtime, flux2_graph("dev", batch=2, seed=21, steps=3, guidance=4.0))
    expected = reference_images("dev", batch=2, seed=21, steps=3, guidance=4.0)
    assert _max_diff(ours, expected) <= TOLERANCE


def test_ksampler_simple_equals_the_flux2_schedule(runtime):
    ours, _ = run_prompt(runtime, flux2_graph("klein", seed=5, steps=4, sampler="ksampler"))
    expected = reference_images("klein", seed=5, steps=4)
    assert _max_diff(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("steps", [1, 4, 28, 50])
@pytest.mark.parametrize("width,height", [(64, 48), (1024, 1024), (1360, 768), (2048, 2048)])
def test_flux2_scheduler_sigmas_equal_the_pipelines(steps, width, height):
    import numpy as np
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

    from engine.sampling.flux2_schedule import flux2_sigmas

    scheduler = reference_pipeline("klein").scheduler
    seq_len = (width // 16) * (height // 16)
    retrieve_timesteps(scheduler, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps),
                       mu=compute_empirical_mu(image_seq_len=seq_len, num_steps=steps))
    assert torch.equal(flux2_sigmas(steps, width, height), scheduler.sigmas.float())


@pytest.mark.parametrize("change", [{"prompt": "a bowl of fruit on a wooden table"}, {"seed": 12},
                                    {"guidance": 1.5}])
def test_each_input_moves_the_dev_image(runtime, change):
    base, _ = run_prompt(runtime, flux2_graph("dev", seed=11, steps=2, guidance=4.0))
    changed, _ = run_prompt(runtime, flux2_graph("dev", steps=2, **{"seed": 11, "guidance": 4.0, **change}))
    assert float((base - changed).abs().mean()) >= SENSITIVITY, change


def test_changing_a_reference_image_moves_the_klein_image(runtime, references):
    names, _ = references
    write_reference_image(runtime.folders.input_dir, "flux2_ref_c.png", 64, 64, seed=9)
    first, _ = run_prompt(runtime, flux2_graph("klein", seed=8, steps=2, references=names[:1]))
    other, _ = run_prompt(runtime, flux2_graph("klein", seed=8, steps=2, references=("flux2_ref_c.png",)))
    assert float((first - other).abs().mean()) >= SENSITIVITY
