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


CONTROL_LORA = "flux1-depth-dev-tiny-lora.safetensors"


@functools.lru_cache(maxsize=None)
def hand_merged_control_pipeline():
    """FluxControlPipeline over dev with the zoo's control LoRA merged by hand from its diffusers-named deltas:
    W + up @ down (img_in widened with zero columns first), the norm scales replaced. diffusers' own control-LoRA
    conversion cannot be the reference: it hard-codes FLUX.1's full size and swaps the final modulation's
    halves on the wrong matrix (docs/flux.md)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlPipeline, FluxTransformer2DModel

    from engine.models.common.configs import load_config
    from engine.zoo.control import tiny_control_lora
    from tests.support.conditioning import base_pipeline
    from tests.support.flux import zoo_base

    base = FluxTransformer2DModel.from_pretrained(str(zoo_base() / "models/diffusers/flux1-dev-tiny/transformer"))
    state = {key: value.clone() for key, value in base.state_dict().items()}
    groups, norms = tiny_control_lora()
    for names, down, ups in groups:
        for name, up in zip(names, ups):
            weight = state[f"{name}.weight"]
            weight = torch.nn.functional.pad(weight, (0, down.shape[1] - weight.shape[1]))
            state[f"{name}.weight"] = weight + up @ down
    state.update(norms)
    transformer = FluxTransformer2DModel.from_config({**base.config, "in_channels": 128, "out_channels": 64})
    transformer.load_state_dict(state)
    parts = {name: getattr(base_pipeline(), name) for name in ("vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                               "tokenizer_2")}
    pipe = FluxControlPipeline(transformer=transformer.eval(), **parts, scheduler=FlowMatchEulerDiscreteScheduler
                               .from_config(load_config("flux1-dev-scheduler")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_graph(control_image: str, *, strength: float = 1.0, seed: int = 42) -> dict:
    graph = control_graph("flux1-dev-tiny.safetensors", control_image, seed=seed)
    graph["11"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": CONTROL_LORA,
                                                                  "strength_model": strength}}
    graph["10"]["inputs"]["model"] = ["11", 0]
    return graph


def test_control_lora_matches_a_hand_merge_in_flux_control_pipeline(runtime):
    ours, _ = run_graph(runtime, lora_graph("control_photo.png", seed=9))
    control, _ = input_image("control_photo.png")
    expected = reference_control(hand_merged_control_pipeline(), control, seed=9, steps=4, guidance=10.0)
    assert max_diff(ours, expected) <= TOLERANCE


def test_the_control_image_moves_the_control_lora_output(runtime):
    first, _ = run_graph(runtime, lora_graph("control_photo.png"))
    second, _ = run_graph(runtime, lora_graph("control_photo_2.png"))
    assert mean_diff(first, second) >= SENSITIVITY


def test_removing_the_control_lora_restores_the_base_weights_bit_for_bit():
    from engine.models.flux1.transformer import load_flux_transformer
    from engine.models.lora.loader import apply_lora
    from engine.models.lora.patch import apply_patches, patches_for
    from tests.support.flux import zoo_base

    models = zoo_base() / "models"
    model = load_flux_transformer(models / "diffusion_models/flux1-dev-tiny.safetensors")
    module = model.transformer
    originals = {name: (param, param.data_ptr(), param.data.clone()) for name, param in module.named_parameters()}
    patched = apply_lora(models / "loras" / CONTROL_LORA, model, None, 1.0, 0.0)
    assert patched.report == []  # every module and norm scale of the file was applied
    with apply_patches(module, patches_for(patched.model.patches, "transformer")):
        assert module.x_embedder.in_features == 128 and module.x_embedder.weight.shape == (64, 128)
        assert not torch.equal(module.get_parameter("transformer_blocks.0.attn.norm_q.weight"),
                               originals["transformer_blocks.0.attn.norm_q.weight"][2])
    with apply_patches(module, ()):
        assert module.x_embedder.in_features == 64
        for name, param in module.named_parameters():
            parameter, storage, copy = originals[name]
            assert param is parameter and param.data_ptr() == storage, name  # the very tensors, swapped back
            assert torch.equal(param.data, copy) and param.dtype == copy.dtype, name


def test_the_same_cached_model_runs_as_before_after_a_control_lora_run(runtime):
    from tests.support.flux import txt2img_prompt

    plain = txt2img_prompt("dev", steps=2, key="plain")
    before, _ = run_graph(runtime, plain, key="plain")
    run_graph(runtime, lora_graph("control_photo.png"))
    after, _ = run_graph(runtime, plain, key="plain")  # the cached UNETLoader model, its LoRA restored
    assert torch.equal(before, after)
