"""Our graph and diffusers' FluxPipeline give the same image from the same tiny weights, prompt and noise.

Settings that reproduce FluxPipeline's sigma schedule exactly: sampler `euler` with scheduler `simple`
(KSampler, or KSamplerSelect + BasicScheduler with ModelSamplingFlux(width, height) set to the image size),
steps = num_inference_steps, and no ModelSamplingFlux on KSampler (its shift then follows the latent's
size, as FluxPipeline's `calculate_shift`). With cfg 1 there is no negative pass; with cfg > 1 and a
negative prompt it matches FluxPipeline's `true_cfg_scale` with `negative_prompt`. FLUX.1 dev's distilled
guidance is FluxGuidance's value (FluxPipeline's `guidance_scale`). The text side: FluxPipeline runs with its
own default `max_sequence_length` (512) and our CLIPTextEncode nodes ask for it with `t5_max_length=512`
(engine/sampling/text.py); ComfyUI's default length (256 for short prompts) is checked against
`max_sequence_length=256` in one test. The noise matches FluxPipeline called with
`generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]` (engine/sampling/noise.py).

Our graph loads the BFL-layout single files of the tiny zoo (UNETLoader, DualCLIPLoader, VAELoader); the
reference pipeline loads the zoo's diffusers folder, so the loaders' key conversion is checked too.
Everything runs in float32; the tolerance is 1e-4 (max abs, images in 0..1).
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.support.flux import PROMPT, make_runtime, run_prompt, txt2img_prompt, zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

TOLERANCE = 1e-4
SENSITIVITY = 0.01  # mean abs change an input must cause, so a parity pass is meaningful


@functools.lru_cache(maxsize=None)
def reference_pipeline(variant: str):
    from diffusers import FluxPipeline

    folder = zoo_base() / "models" / "diffusers" / f"flux1-{variant}-tiny"
    pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(variant: str, *, width: int, height: int, batch: int, seed: int, steps: int,
                     prompt: str = PROMPT, guidance: float = 3.5, cfg: float = 1.0,
                     negative: str | None = None, **diffusers_options) -> torch.Tensor:
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    extra = {"negative_prompt": negative, "true_cfg_scale": cfg} if negative is not None else {}
    images = reference_pipeline(variant)(
        prompt=[prompt] * batch, width=width, height=height, num_inference_steps=steps, guidance_scale=guidance,
        generator=generators, output_type="pt", **extra, **diffusers_options).images
    return images.permute(0, 2, 3, 1)  # -> IMAGE layout [B, H, W, C]


DIFFUSERS_T5_LENGTH = 512  # FluxPipeline's default max_sequence_length


def diffusers_text(graph: dict) -> dict:
    """Every CLIPTextEncode of the graph asks for diffusers' T5 length (the documented node option)."""
    for node in graph.values():
        if node["class_type"] == "CLIPTextEncode":
            node["inputs"]["t5_max_length"] = DIFFUSERS_T5_LENGTH
    return graph


@pytest.fixture(scope="module")
def runtime():
    return make_runtime()


@pytest.mark.parametrize("variant", ["dev", "schnell"])
@pytest.mark.parametrize("width,height", [(64, 64), (80, 48)])
def test_graph_matches_flux_pipeline(runtime, variant, width, height):
    steps = 4 if variant == "schnell" else 5
    guidance = 3.5 if variant == "dev" else None
    ours, _ = run_prompt(runtime, diffusers_text(txt2img_prompt(variant, width=width, height=height, batch=2,
                                                                seed=123, steps=steps, guidance=guidance)))
    expected = reference_images(variant, width=width, height=height, batch=2, seed=123, steps=steps)
    assert ours.shape == expected.shape == (2, height, width, 3)
    assert float((ours - expected).abs().max()) <= TOLERANCE
    assert float((ours[0] - ours[1]).abs().mean()) >= SENSITIVITY  # the two items really differ


def test_cfg_with_a_negative_prompt_matches_true_cfg(runtime):
    ours, _ = run_prompt(runtime, diffusers_text(txt2img_prompt("dev", batch=1, seed=5, steps=3, cfg=2.5,
                                                                negative="blurry, low quality")))
    expected = reference_images("dev", width=64, height=64, batch=1, seed=5, steps=3, cfg=2.5,
                                negative="blurry, low quality")
    assert float((ours - expected).abs().max()) <= TOLERANCE


def test_custom_sampling_graph_matches_flux_pipeline(runtime):
    """SamplerCustomAdvanced + ModelSamplingFlux(width, height) + BasicScheduler reproduces it too."""
    graph = txt2img_prompt("dev", width=80, height=48, batch=1, seed=9, steps=4)
    del graph["9"]
    graph.update({
        "30": {"class_type": "ModelSamplingFlux", "inputs": {"model": ["1", 0], "max_shift": 1.15,
                                                             "base_shift": 0.5, "width": 80, "height": 48}},
        "31": {"class_type": "RandomNoise", "inputs": {"noise_seed": 9}},
        "32": {"class_type": "BasicGuider", "inputs": {"model": ["30", 0], "conditioning": ["4", 0]}},
        "33": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "34": {"class_type": "BasicScheduler", "inputs": {"model": ["30", 0], "scheduler": "simple", "steps": 4,
                                                          "denoise": 1.0}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["31", 0], "guider": ["32", 0],
                                                                "sampler": ["33", 0], "sigmas": ["34", 0],
                                                                "latent_image": ["5", 0]}},
    })
    ours, _ = run_prompt(runtime, diffusers_text(graph))
    expected = reference_images("dev", width=80, height=48, batch=1, seed=9, steps=4)
    assert float((ours - expected).abs().max()) <= TOLERANCE


def test_comfyuis_default_t5_length_is_max_sequence_length_256(runtime):
    """Without the option the T5 prompt is padded to 256 tokens, as ComfyUI does: FluxPipeline with
    max_sequence_length=256, and not its default 512."""
    ours, _ = run_prompt(runtime, txt2img_prompt("dev", batch=1, seed=21, steps=3))
    at_256 = reference_images("dev", width=64, height=64, batch=1, seed=21, steps=3, max_sequence_length=256)
    at_512 = reference_images("dev", width=64, height=64, batch=1, seed=21, steps=3)
    assert float((ours - at_256).abs().max()) <= TOLERANCE
    assert float((ours - at_512).abs().max()) > TOLERANCE  # the length matters: the option is needed


@pytest.mark.parametrize("change", [{"prompt": "a bowl of fruit on a wooden table"}, {"seed": 43},
                                    {"guidance": 1.0}])
def test_each_input_moves_the_image(runtime, change):
    base, _ = run_prompt(runtime, txt2img_prompt("dev", seed=42, steps=3))
    changed, _ = run_prompt(runtime, txt2img_prompt("dev", steps=3, **{"seed": 42, **change}))
    assert float((base - changed).abs().mean()) >= SENSITIVITY, change


def test_an_image_does_not_depend_on_its_batch_position(runtime):
    batch, _ = run_prompt(runtime, txt2img_prompt("schnell", batch=2, seed=77, steps=2, guidance=None))
    single, _ = run_prompt(runtime, txt2img_prompt("schnell", batch=1, seed=78, steps=2, guidance=None))
    assert float((batch[1:] - single).abs().max()) <= 1e-5


def test_changing_only_the_seed_reruns_only_noise_sampler_and_decode():
    runtime = make_runtime()
    first = txt2img_prompt("dev", seed=1, steps=2)
    _, result = run_prompt(runtime, first)
    assert {"1", "2", "3", "6"} <= set(result.executed)
    _, again = run_prompt(runtime, txt2img_prompt("dev", seed=2, steps=2))
    assert set(again.executed) == {"9", "8", "20"}  # KSampler, VAEDecode, the capture node
    assert {"1", "2", "3", "4", "5", "6", "7"} <= set(again.cached)


def test_changing_only_the_seed_in_a_custom_sampling_graph_reruns_the_noise_node():
    runtime = make_runtime()

    def graph(seed: int) -> dict:
        g = txt2img_prompt("schnell", guidance=None, steps=2)
        del g["9"]
        g.update({
            "31": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "32": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["6", 0]}},
            "33": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "34": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple",
                                                              "steps": 2, "denoise": 1.0}},
            "9": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["31", 0], "guider": ["32", 0], "sampler": ["33", 0], "sigmas": ["34", 0],
                "latent_image": ["5", 0]}},
        })
        return g

    run_prompt(runtime, graph(1))
    _, again = run_prompt(runtime, graph(2))
    assert set(again.executed) == {"31", "9", "8", "20"}


@pytest.mark.gpu
def test_the_same_seed_gives_the_same_image_on_cuda_and_cpu():
    from engine.memory.manager import MemoryManager

    cpu_image, _ = run_prompt(make_runtime(), txt2img_prompt("dev", seed=11, steps=3))
    gpu_runtime = make_runtime()
    gpu_runtime.executor.models = MemoryManager(device="cuda")
    gpu_image, _ = run_prompt(gpu_runtime, txt2img_prompt("dev", seed=11, steps=3))
    assert float((cpu_image - gpu_image).abs().max()) <= 1e-3  # float32 kernels differ slightly
