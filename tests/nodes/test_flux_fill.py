"""FLUX Fill inpainting and outpainting: parity with diffusers' FluxFillPipeline, the inpaint nodes' maths,
bad masks, DifferentialDiffusion, and the shipped fill workflows.

Parity settings: InpaintModelConditioning with noise_mask off (FluxFillPipeline keeps nothing of the input
latent by itself), KSampler euler/simple, FluxGuidance = guidance_scale. FluxFillPipeline runs as a script
would call it (its default max_sequence_length 512, its own generator order); our graph asks for the same
with the nodes' documented options: CLIPTextEncode `t5_max_length=512` and InpaintModelConditioning
`noise_order="diffusers"` (the generator samples the image latent, then draws the noise, then samples the
masked image's latent). ComfyUI's default order (noise first, the masked latent's mode) is checked against
diffusers with its latents taken as the mode.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from tests.support.conditioning import (SENSITIVITY, TOLERANCE, as_image, decode_and_capture, input_image,
                                        load_workflow, loaders, max_diff, mean_diff, reference_pipeline,
                                        run_graph, runtime_with_inputs, sampler, saved_png)
from tests.support.segmentation import present_class

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

PROMPT = "a red apple on a wooden table"


@pytest.fixture(scope="module")
def runtime():
    return runtime_with_inputs()


@functools.lru_cache(maxsize=None)
def fill_pipeline():
    from diffusers import FluxFillPipeline

    return reference_pipeline(FluxFillPipeline, "flux1-fill-tiny-transformer", "flux1-fill-scheduler")


def reference_fill(image: torch.Tensor, mask: torch.Tensor, *, seed: int, steps: int, guidance: float,
                   **options) -> torch.Tensor:
    """FluxFillPipeline as a script calls it (`options` only for the check of ComfyUI's defaults)."""
    height, width = image.shape[1], image.shape[2]
    out = fill_pipeline()(prompt=PROMPT, image=image.permute(0, 3, 1, 2), mask_image=mask[:, None], height=height,
                          width=width, num_inference_steps=steps, guidance_scale=guidance,
                          generator=torch.Generator("cpu").manual_seed(seed), output_type="pt", **options).images
    return as_image(out)


DIFFUSERS_OPTIONS = {"t5_max_length": 512, "noise_order": "diffusers"}


def fill_graph(image_node: dict, *, mask_from: list, pixels_from: list, seed: int = 42, steps: int = 4,
               guidance: float = 30.0, noise_mask: bool = False, unet: str = "flux1-fill-tiny.safetensors",
               t5_max_length: int = 0, noise_order: str = "comfyui") -> dict:
    graph = loaders(unet)
    graph.update({
        "4": image_node,
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0],
                                                         "t5_max_length": t5_max_length}},
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": guidance}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "8": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "vae": ["3", 0], "pixels": pixels_from, "mask": mask_from,
            "noise_mask": noise_mask, "noise_order": noise_order}},
        "10": sampler(["1", 0], ["8", 0], ["8", 1], ["8", 2], seed=seed, steps=steps),
    })
    return decode_and_capture(graph, ["10", 0])


def load_image(name: str) -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def test_fill_inpainting_matches_flux_fill_pipeline(runtime):
    ours, _ = run_graph(runtime, fill_graph(load_image("inpaint_example.png"), mask_from=["4", 1],
                                            pixels_from=["4", 0], seed=7, **DIFFUSERS_OPTIONS))
    image, mask = input_image("inpaint_example.png")
    expected = reference_fill(image, mask, seed=7, steps=4, guidance=30.0)
    assert max_diff(ours, expected) <= TOLERANCE


def test_comfyui_defaults_are_noise_first_and_256_tokens(runtime, monkeypatch):
    """Without the options: ComfyUI's order and length, i.e. diffusers with its latents taken as the mode and
    max_sequence_length=256, and not diffusers as a script calls it."""
    import diffusers.pipelines.flux.pipeline_flux_fill as fill_module

    ours, _ = run_graph(runtime, fill_graph(load_image("inpaint_example.png"), mask_from=["4", 1],
                                            pixels_from=["4", 0], seed=7))
    image, mask = input_image("inpaint_example.png")
    as_a_script = reference_fill(image, mask, seed=7, steps=4, guidance=30.0)
    assert max_diff(ours, as_a_script) > TOLERANCE
    monkeypatch.setattr(fill_module, "retrieve_latents",
                        functools.partial(fill_module.retrieve_latents, sample_mode="argmax"))
    comfy_like = reference_fill(image, mask, seed=7, steps=4, guidance=30.0, max_sequence_length=256)
    assert max_diff(ours, comfy_like) <= TOLERANCE


def test_fill_outpainting_matches_flux_fill_pipeline(runtime):
    graph = fill_graph(load_image("outpaint_example.png"), mask_from=["13", 1], pixels_from=["13", 0], seed=3,
                       **DIFFUSERS_OPTIONS)
    graph["13"] = {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["4", 0], "left": 16, "top": 0,
                                                                  "right": 16, "bottom": 16, "feathering": 0}}
    ours, _ = run_graph(runtime, graph)
    image, _ = input_image("outpaint_example.png")  # 48x48 -> 80x64, grey borders, mask 1 on the borders
    padded = torch.full((1, 64, 80, 3), 0.5)
    padded[:, :48, 16:64] = image
    mask = torch.ones(1, 64, 80)
    mask[:, :48, 16:64] = 0.0
    expected = reference_fill(padded, mask, seed=3, steps=4, guidance=30.0)
    assert ours.shape == (1, 64, 80, 3)
    assert max_diff(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("change", ["mask", "image"])
def test_the_mask_and_the_image_move_the_fill(runtime, change):
    base_graph = fill_graph(load_image("inpaint_example.png"), mask_from=["4", 1], pixels_from=["4", 0], steps=3)
    base, _ = run_graph(runtime, base_graph)
    graph = fill_graph(load_image("inpaint_example.png"), mask_from=["4", 1], pixels_from=["4", 0], steps=3)
    if change == "mask":  # a different area to fill
        graph["20"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 32}}
        graph["8"]["inputs"]["mask"] = ["20", 0]
    else:
        graph["8"]["inputs"]["pixels"] = ["21", 0]
        graph["21"] = {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}}
    changed, _ = run_graph(runtime, graph)
    assert mean_diff(base, changed) >= SENSITIVITY


# ----- the inpaint nodes' maths, called directly (latent-level checks)

@pytest.fixture(scope="module")
def parts(runtime):
    from engine.memory.manager import MemoryManager
    from engine.models.flux1.text_encoders import load_flux_text_encoders
    from engine.models.flux1.vae import load_flux_vae
    from engine.sampling.conditioning import make_conditioning
    from engine.sampling.text import encode_flux_prompt

    folders = runtime.folders
    memory = MemoryManager(device="cpu")
    vae = load_flux_vae(folders.model_path("vae", "ae-tiny.safetensors"))
    clip = load_flux_text_encoders([folders.model_path("text_encoders", n) for n in ("clip_l-tiny.safetensors",
                                                                                      "t5xxl-tiny.safetensors")],
                                   folders.model_dirs("tokenizers"))
    cond = make_conditioning(*encode_flux_prompt(clip, PROMPT, PROMPT, memory), guidance=3.5)
    return vae, cond, memory


def sample_dev(runtime, positive, latent, memory, steps=3, model_options=None):
    from engine.models.flux1.transformer import load_flux_transformer
    from engine.sampling.pipeline import Guider, RandomNoise, SamplerChoice, sample, schedule_for
    from engine.sampling.schedules import denoise_sigmas

    model = load_flux_transformer(runtime.folders.model_path("diffusion_models", "flux1-dev-tiny.safetensors"))
    for key, value in (model_options or {}).items():
        model = model.with_option(key, value)
    sigmas = denoise_sigmas("simple", schedule_for(model, latent["samples"]), steps, 1.0)
    return sample(Guider(model, positive, None, 1.0), SamplerChoice("euler"), sigmas, latent, RandomNoise(5),
                  memory=memory).samples


def test_noise_mask_keeps_the_unmasked_latent_with_a_dev_model(runtime, parts):
    from engine.sampling.fill import inpaint_model_conditioning

    vae, cond, memory = parts
    image, mask = input_image("inpaint_example.png")
    positive, _, latent = inpaint_model_conditioning(cond, cond, vae, image, mask, True, memory)
    out = sample_dev(runtime, positive, latent, memory)
    cells = torch.nn.functional.interpolate(mask[:, None], size=out.shape[-2:], mode="bilinear") == 0
    kept = cells.expand_as(out)
    # the input outside the mask (up to the model-space round trip (x - shift) * scale and back)
    assert torch.allclose(out[kept], latent["samples"][kept], atol=1e-6)
    assert float((out - latent["samples"])[~kept].abs().mean()) > SENSITIVITY


def test_an_empty_mask_changes_nothing_and_warns(runtime, parts, caplog):
    from engine.sampling.fill import inpaint_model_conditioning

    vae, cond, memory = parts
    image, _ = input_image("inpaint_example.png")
    with caplog.at_level(logging.WARNING, logger="fluxgraph.inpaint"):
        positive, _, latent = inpaint_model_conditioning(cond, cond, vae, image, torch.zeros(1, 64, 64), True,
                                                         memory)
    assert "the mask is empty" in caplog.text
    assert torch.allclose(sample_dev(runtime, positive, latent, memory, steps=2), latent["samples"], atol=1e-6)


def test_a_mask_of_another_size_is_resized_and_batches_must_agree(parts):
    from engine.sampling.fill import CONCAT_MASK, inpaint_model_conditioning

    vae, cond, memory = parts
    image, _ = input_image("inpaint_example.png")
    small = torch.zeros(1, 16, 16)
    small[:, 4:12, 4:12] = 1.0
    positive, _, latent = inpaint_model_conditioning(cond, cond, vae, image, small, True, memory)
    assert positive[0][1][CONCAT_MASK].shape == (1, 1, 64, 64) == latent["noise_mask"].shape
    assert float(positive[0][1][CONCAT_MASK][0, 0, 32, 32]) == 1.0
    with pytest.raises(ValueError, match="2 masks for 3 images"):
        inpaint_model_conditioning(cond, cond, vae, image.repeat(3, 1, 1, 1), small.repeat(2, 1, 1), True, memory)
    with pytest.raises(ValueError, match="mask must be a MASK"):
        inpaint_model_conditioning(cond, cond, vae, image, torch.zeros(2, 2, 16, 16), True, memory)


def test_an_image_with_alpha_is_used_by_its_colour_channels(parts):
    from engine.sampling.fill import CONCAT_LATENT, inpaint_model_conditioning

    vae, cond, memory = parts
    image, mask = input_image("inpaint_example.png")
    rgba = torch.cat([image, torch.rand(1, 64, 64, 1)], dim=-1)
    with_alpha, _, latent_alpha = inpaint_model_conditioning(cond, cond, vae, rgba, mask, True, memory)
    plain, _, latent = inpaint_model_conditioning(cond, cond, vae, image, mask, True, memory)
    assert torch.equal(with_alpha[0][1][CONCAT_LATENT], plain[0][1][CONCAT_LATENT])
    assert torch.equal(latent_alpha["samples"], latent["samples"])


def test_vae_encode_for_inpaint_greys_the_hole_and_grows_the_mask(parts):
    from engine.sampling.fill import grey_out, vae_encode_for_inpaint
    from engine.sampling.vae import encode

    vae, _, memory = parts
    image, _ = input_image("inpaint_example.png")
    mask = torch.zeros(1, 64, 64)
    mask[:, 24:40, 24:40] = 1.0
    latent = vae_encode_for_inpaint(vae, image, mask, 6, memory)
    grown = latent["noise_mask"][0, 0]
    assert set(grown.unique().tolist()) == {0.0, 1.0}
    # a 6x6 square kernel (ComfyUI's): the 16 px square grows to 21 px, 2 px before and 3 px after
    assert float(grown.sum()) == 21 * 21 and float(grown[22:43, 22:43].min()) == 1.0
    assert torch.equal(latent["samples"], encode(vae, grey_out(image, mask[:, None]), memory))


def test_set_latent_noise_mask_copies_the_latent():
    from nodes.flux.inpaint import set_latent_noise_mask

    samples = {"samples": torch.zeros(1, 16, 8, 8), "batch_index": [3]}
    (out,) = set_latent_noise_mask(None, samples, torch.ones(64, 64))
    assert out["noise_mask"].shape == (1, 1, 64, 64) and out["batch_index"] == [3]
    assert "noise_mask" not in samples


def test_differential_diffusion_thresholds_the_soft_mask_over_time(runtime, parts):
    from engine.sampling.fill import DIFFERENTIAL_DIFFUSION, step_mask_function
    from engine.models.common.handles import FluxModel

    soft = torch.linspace(0, 1, 11).view(1, 1, 1, 11)
    model = FluxModel(transformer=None, variant="dev").with_option(DIFFERENTIAL_DIFFUSION, 1.0)
    sigmas = torch.tensor([1.0, 0.6, 0.2, 0.0])
    at = step_mask_function(model, soft, sigmas, sigma_min=0.1)
    assert at(1.0).tolist() == [[[[0.0] * 10 + [1.0]]]]  # the first step repaints only where the mask is 1
    assert at(0.55).sum() == 6  # (0.55 - 0.1) / 0.9 = 0.5: mask values >= 0.5
    half = step_mask_function(model.with_option(DIFFERENTIAL_DIFFUSION, 0.5), soft, sigmas, 0.1)
    assert torch.allclose(half(0.55), 0.5 * at(0.55) + 0.5 * soft)
    assert step_mask_function(FluxModel(transformer=None, variant="dev"), soft, sigmas, 0.1)(0.5) is soft
    # and it changes what a soft mask does when sampling
    vae, cond, memory = parts
    image, _ = input_image("inpaint_example.png")
    feathered = torch.linspace(0, 1, 64).view(1, 1, 64).expand(1, 64, 64).contiguous()
    from engine.sampling.fill import inpaint_model_conditioning

    positive, _, latent = inpaint_model_conditioning(cond, cond, vae, image, feathered, True, memory)
    plain = sample_dev(runtime, positive, latent, memory)
    differential = sample_dev(runtime, positive, latent, memory, model_options={DIFFERENTIAL_DIFFUSION: 1.0})
    assert mean_diff(plain, differential) > 1e-3


# ----- the shipped workflows

@pytest.mark.parametrize("name,size", [("flux_fill_inpaint.json", (64, 64)), ("flux_fill_outpaint.json", (64, 80))])
def test_fill_workflows_run_on_the_tiny_zoo(runtime, name, size):
    workflow = load_workflow(name)
    workflow["10"]["inputs"]["steps"] = 3
    _, result = run_graph(runtime, workflow, key=name)
    assert saved_png(runtime, result, "12").shape[:2] == size


def test_segment_fill_workflow_fills_the_chosen_class(runtime):
    import numpy as np

    from engine.zoo.segmentation import write_tiny_segmenter

    write_tiny_segmenter(runtime.folders.models_dir)
    workflow = load_workflow("segment_fill.json")
    workflow["22"]["inputs"].update(class_name=present_class(runtime), grow=0, feather=0)  # labels are random
    workflow["10"]["inputs"]["steps"] = 3
    workflow["30"] = {"class_type": "MaskToImage", "inputs": {"mask": ["22", 0]}}
    workflow["31"] = {"class_type": "SaveImage", "inputs": {"images": ["30", 0], "filename_prefix": "m"}}
    _, result = run_graph(runtime, workflow, key="segment_fill")
    out, mask = saved_png(runtime, result, "12"), saved_png(runtime, result, "31")[..., 0]
    original = np.asarray(input_image("segment_example.png")[0][0] * 255).round()
    changed = np.abs(out[..., :3].astype(float) - original).max(axis=-1) > 0
    assert out.shape[:2] == (128, 128) and 0.05 < changed.mean() < 0.95
    assert not changed[mask == 0].any()  # outside the class mask the original is composited back
