"""FLUX.1 Depth / Canny (full models) through our graph and through diffusers' FluxControlPipeline.

Our graph: UNETLoader (the zoo's BFL single file, detected as "depth"/"canny" from its 128-channel `img_in`
and its name) + InstructPixToPixConditioning (the control image's latent on the conditionings) + KSampler
euler/simple. The reference loads the zoo's diffusers transformer folder. FluxControlPipeline *samples* the
control image's VAE posterior with the generator before drawing the noise; ComfyUI's node (and ours) takes the
posterior's mode, like VAEEncode. The reference runs with the mode (DiagonalGaussianDistribution.sample patched
to return it), which also leaves the generator to the noise alone, as ours.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from tests.support.conditioning import (SENSITIVITY, TOLERANCE, decode_and_capture, input_image, loaders, max_diff,
                                        mean_diff, reference_pipeline, run_graph, runtime_with_inputs, sampler)
from tests.support.flux import PROMPT

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def runtime():
    return runtime_with_inputs()


@functools.lru_cache(maxsize=None)
def control_pipeline(kind: str):
    from diffusers import FluxControlPipeline

    return reference_pipeline(FluxControlPipeline, f"flux1-{kind}-tiny-transformer", "flux1-dev-scheduler")


@contextlib.contextmanager
def posterior_mode():
    """The VAE's posterior sampled as its mode (ComfyUI's encoding), without touching the generator."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    original = DiagonalGaussianDistribution.sample
    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mode()
    try:
        yield
    finally:
        DiagonalGaussianDistribution.sample = original


def reference_control(pipe, control: torch.Tensor, *, seed: int, steps: int, guidance: float,
                      width: int = 64, height: int = 64) -> torch.Tensor:
    with posterior_mode():
        # a tensor control image goes to the VAE as it is: -1..1, as the pipeline's image processor makes PILs
        out = pipe(prompt=PROMPT, control_image=control.permute(0, 3, 1, 2) * 2 - 1, height=height, width=width,
                   num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images
    return out.permute(0, 2, 3, 1)


def control_graph(unet: str, control_image: str, *, seed: int = 42, steps: int = 4, guidance: float = 10.0,
                  latent_from_conditioning: bool = True) -> dict:
    graph = loaders(unet)
    graph.update({
        "4": {"class_type": "LoadImage", "inputs": {"image": control_image}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0], "t5_max_length": 512}},
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": guidance}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "8": {"class_type": "InstructPixToPixConditioning", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "vae": ["3", 0], "pixels": ["4", 0]}},
        "9": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    })
    latent = ["8", 2] if latent_from_conditioning else ["9", 0]
    graph["10"] = sampler(["1", 0], ["8", 0], ["8", 1], latent, seed=seed, steps=steps)
    return decode_and_capture(graph, ["10", 0])


@pytest.mark.parametrize("kind", ["depth", "canny"])
def test_depth_and_canny_models_match_flux_control_pipeline(runtime, kind):
    ours, _ = run_graph(runtime, control_graph(f"flux1-{kind}-dev-tiny.safetensors", "control_photo.png", seed=5))
    control, _ = input_image("control_photo.png")
    expected = reference_control(control_pipeline(kind), control, seed=5, steps=4, guidance=10.0)
    assert ours.shape == expected.shape == (1, 64, 64, 3)
    assert max_diff(ours, expected) <= TOLERANCE


def test_the_control_image_moves_the_output(runtime):
    first, _ = run_graph(runtime, control_graph("flux1-depth-dev-tiny.safetensors", "control_photo.png"))
    second, _ = run_graph(runtime, control_graph("flux1-depth-dev-tiny.safetensors", "control_photo_2.png"))
    assert mean_diff(first, second) >= SENSITIVITY


def test_the_empty_latent_of_instruct_pix_to_pix_equals_an_empty_latent(runtime):
    from_node, _ = run_graph(runtime, control_graph("flux1-canny-dev-tiny.safetensors", "control_photo.png"))
    empty, _ = run_graph(runtime, control_graph("flux1-canny-dev-tiny.safetensors", "control_photo.png",
                                                latent_from_conditioning=False))
    assert max_diff(from_node, empty) == 0.0
