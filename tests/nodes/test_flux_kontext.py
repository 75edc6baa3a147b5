"""FLUX Kontext editing with reference images: parity with diffusers' FluxKontextPipeline for one reference,
the token layout and position ids of each multi-reference method, and the helper nodes.

Parity settings: FluxKontextPipeline with `_auto_resize=False` and `max_area = width * height` (otherwise
it resizes the reference and the output, trap), the reference at its own size (a multiple of 16), euler /
simple, FluxGuidance = guidance_scale; our graph: VAEEncode -> ReferenceLatent -> KSampler on an empty
latent of the output size.
"""

from __future__ import annotations

import functools

import pytest
import torch

from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from tests.support.conditioning import (SENSITIVITY, TOLERANCE, as_image, decode_and_capture, input_image,
                                        load_workflow, loaders, max_diff, mean_diff, reference_pipeline,
                                        run_graph, runtime_with_inputs, sampler, saved_png)
from tests.support.reference import normalise, object_info_reference, without_extensions

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

PROMPT = "make the sky red"


@pytest.fixture(scope="module")
def runtime():
    return runtime_with_inputs()


@functools.lru_cache(maxsize=None)
def kontext_pipeline():
    from diffusers import FluxKontextPipeline

    return reference_pipeline(FluxKontextPipeline, "flux1-kontext-tiny-transformer", "flux1-kontext-scheduler")


def edit_graph(references: list[str], *, width: int = 64, height: int = 64, seed: int = 11, steps: int = 4,
               method: str | None = None, batch: int = 1) -> dict:
    graph = loaders("flux1-kontext-dev-tiny.safetensors")
    graph["5"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0]}}
    conditioning: list = ["5", 0]
    for number, name in enumerate(references):
        load, encode, refer = f"{40 + number}", f"{50 + number}", f"{60 + number}"
        graph[load] = {"class_type": "LoadImage", "inputs": {"image": name}}
        graph[encode] = {"class_type": "VAEEncode", "inputs": {"pixels": [load, 0], "vae": ["3", 0]}}
        graph[refer] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": conditioning,
                                                                    "latent": [encode, 0]}}
        conditioning = [refer, 0]
    if method is not None:
        graph["7"] = {"class_type": "FluxKontextMultiReferenceLatentMethod",
                      "inputs": {"conditioning": conditioning, "reference_latents_method": method}}
        conditioning = ["7", 0]
    graph["6"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": conditioning, "guidance": 2.5}}
    graph["8"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}}
    graph["9"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": width, "height": height,
                                                                  "batch_size": batch}}
    graph["10"] = sampler(["1", 0], ["6", 0], ["8", 0], ["9", 0], seed=seed, steps=steps)
    return decode_and_capture(graph, ["10", 0])


def test_one_reference_edit_matches_flux_kontext_pipeline(runtime):
    ours, _ = run_graph(runtime, edit_graph(["kontext_reference_2.png"]))  # an 80x48 reference, 64x64 output
    reference, _ = input_image("kontext_reference_2.png")
    expected = kontext_pipeline()(
        prompt=PROMPT, image=reference.permute(0, 3, 1, 2), height=64, width=64, num_inference_steps=4,
        guidance_scale=2.5, max_sequence_length=256, generator=torch.Generator("cpu").manual_seed(11),
        output_type="pt", _auto_resize=False, max_area=64 * 64).images
    assert max_diff(ours, as_image(expected)) <= TOLERANCE


def test_the_reference_image_and_a_second_reference_move_the_edit(runtime):
    one, _ = run_graph(runtime, edit_graph(["kontext_reference_2.png"], steps=3))
    other, _ = run_graph(runtime, edit_graph(["kontext_reference_1.png"], steps=3))
    two, _ = run_graph(runtime, edit_graph(["kontext_reference_2.png", "kontext_reference_1.png"], steps=3))
    assert mean_diff(one, other) >= SENSITIVITY
    assert mean_diff(one, two) >= SENSITIVITY


@pytest.mark.parametrize("method", ["offset", "index", "uxo/uno"])
def test_each_method_samples_and_they_differ(runtime, method):
    refs = ["kontext_reference_1.png", "kontext_reference_2.png"]
    out, _ = run_graph(runtime, edit_graph(refs, steps=2, method=method))
    default, _ = run_graph(runtime, edit_graph(refs, steps=2))
    if method == "offset":
        assert max_diff(out, default) == 0.0  # offset is FLUX.1 Kontext's default
    else:
        assert mean_diff(out, default) >= 1e-3


# ----- token layout and position ids (references: A 8x8 latent pixels, B 6 high x 10 wide; sampled 8x8)

def test_reference_positions_of_each_method():
    from engine.sampling.reference import reference_positions

    sizes = [(8, 8), (6, 10)]
    assert reference_positions((8, 8), sizes, "offset") == [(1, 0, 0), (1, 4, 0)]  # B below A
    assert reference_positions((8, 8), [(6, 10), (8, 8)], "offset") == [(1, 0, 0), (1, 3, 0)]  # below B
    assert reference_positions((8, 8), [(8, 8), (10, 4)], "offset") == [(1, 0, 0), (1, 0, 4)]  # tall: right
    assert reference_positions((8, 8), sizes, "index") == [(1, 0, 0), (2, 0, 0)]
    assert reference_positions((8, 8), sizes, "uxo/uno") == [(0, 4, 4), (0, 8, 8)]  # diagonally after
    with pytest.raises(ValueError, match="FLUX.2"):
        reference_positions((8, 8), sizes, "index_timestep_zero")


def test_reference_tokens_follow_the_sampled_ones_with_their_ids():
    from engine.sampling.conditioning import make_conditioning, parse_flux_conditioning
    from engine.sampling.latents import FLUX1_LATENT, image_ids, pack_latents
    from engine.sampling.reference import ReferenceInputs, add_reference_latent, set_reference_method

    a, b = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 6, 10)
    cond = make_conditioning(torch.zeros(1, 4, 48), torch.zeros(1, 128))
    cond = set_reference_method(add_reference_latent(add_reference_latent(cond, a), b), "offset")
    (entry,) = parse_flux_conditioning(cond, "positive", 48, 128)
    tokens = torch.randn(2, 16, 64)  # batch 2: the references are shared by both items
    kwargs = {"hidden_states": tokens, "img_ids": image_ids(8, 8)}
    ReferenceInputs()(entry, kwargs, tokens)
    hidden, ids = kwargs["hidden_states"], kwargs["img_ids"]
    assert hidden.shape == (2, 16 + 16 + 15, 64) and ids.shape == (47, 3)
    assert torch.equal(hidden[:, :16], tokens)
    assert torch.equal(hidden[0, 16:32], pack_latents(FLUX1_LATENT.process_in(a))[0])
    assert torch.equal(hidden[1, 32:], pack_latents(FLUX1_LATENT.process_in(b))[0])
    assert ids[16].tolist() == [1, 0, 0] and ids[31].tolist() == [1, 3, 3]
    assert ids[32].tolist() == [1, 4, 0] and ids[46].tolist() == [1, 6, 4]  # B: 3 x 5 tokens from row 4


def test_reference_latent_appends_without_mutating_and_passes_through_without_latent():
    from nodes.flux.reference import flux_kontext_multi_reference_latent_method, reference_latent

    cond = [[torch.zeros(1, 4, 48), {"pooled_output": torch.zeros(1, 128)}]]
    assert reference_latent(None, cond)[0] is cond
    (one,) = reference_latent(None, cond, {"samples": torch.ones(1, 16, 8, 8)})
    (two,) = reference_latent(None, one, {"samples": torch.ones(1, 16, 4, 4)})
    assert "reference_latents" not in cond[0][1] and len(one[0][1]["reference_latents"]) == 1
    assert [r.shape[-1] for r in two[0][1]["reference_latents"]] == [8, 4]
    (method,) = flux_kontext_multi_reference_latent_method(None, two, "uxo/uno")
    assert method[0][1]["reference_latents_method"] == "uxo" and "reference_latents_method" not in two[0][1]
    with pytest.raises(ValueError, match="LATENT"):
        reference_latent(None, cond, torch.zeros(1, 16, 8, 8))


def test_a_reference_image_with_alpha_uses_its_colour(runtime):
    from engine.memory.manager import MemoryManager
    from engine.models.flux1.vae import load_flux_vae
    from engine.sampling.vae import encode

    vae = load_flux_vae(runtime.folders.model_path("vae", "ae-tiny.safetensors"))
    image, _ = input_image("kontext_reference_1.png")
    rgba = torch.cat([image, torch.zeros(1, 64, 64, 1)], dim=-1)
    memory = MemoryManager(device="cpu")
    assert torch.equal(encode(vae, rgba, memory), encode(vae, image, memory))


# ----- helper nodes

def test_flux_kontext_image_scale_picks_the_closest_training_size():
    from nodes.flux.kontext import flux_kontext_image_scale, kontext_size

    assert kontext_size(100, 50) == (1456, 720)
    assert kontext_size(640, 640) == (1024, 1024)
    assert kontext_size(300, 500) == (800, 1328)
    (out,) = flux_kontext_image_scale(None, torch.rand(1, 60, 90, 3))
    assert out.shape == (1, 832, 1248, 3)


def test_image_stitch_directions_sizes_spacing_and_alpha():
    from nodes.core.image_stitch import image_stitch

    left, right = torch.zeros(1, 32, 16, 3), torch.ones(2, 16, 16, 3)
    (out,) = image_stitch(None, left, "right", True, 4, "red", right)
    assert out.shape == (2, 32, 16 + 4 + 32, 3)  # image2 scaled to image1's height, batch matched
    assert out[0, 0, 16].tolist() == [1.0, 0.0, 0.0] and float(out[0, :, :16].max()) == 0.0
    (up,) = image_stitch(None, left, "up", False, 0, "white", right)
    assert up.shape == (2, 48, 16, 3) and float(up[:, :16].min()) == 1.0  # image2 on top
    (padded,) = image_stitch(None, left, "left", False, 0, "white", right)
    assert padded.shape == (2, 32, 32, 3) and float(padded[:, :8, :16].max()) == 0.0  # centered on black
    (alpha,) = image_stitch(None, left, "down", True, 0, "white", torch.ones(1, 8, 8, 4))
    assert alpha.shape == (1, 48, 16, 4) and float(alpha[:, :32, :, 3].min()) == 1.0  # opaque alpha added
    assert image_stitch(None, left, "down", True, 0, "white")[0] is left


# ----- the shipped workflow

def test_kontext_edit_workflow_runs_with_two_references(runtime):
    workflow = load_workflow("flux_kontext_edit.json")
    workflow["10"]["inputs"]["steps"] = 3
    _, result = run_graph(runtime, workflow, key="kontext")
    assert saved_png(runtime, result, "12").shape[:2] == (64, 64)


# ----- declarations of every conditioning node equal ComfyUI's

CONDITIONING_NODES = [
    "ReferenceLatent", "FluxKontextImageScale", "FluxKontextMultiReferenceLatentMethod", "ImageStitch",
    "InpaintModelConditioning", "SetLatentNoiseMask", "VAEEncodeForInpaint", "DifferentialDiffusion",
    "CLIPVisionLoader", "CLIPVisionEncode", "StyleModelLoader", "StyleModelApply", "LoraLoader",
    "LoraLoaderModelOnly",
]


@pytest.mark.parametrize("name", CONDITIONING_NODES)
def test_conditioning_node_declarations_match_comfyui(name, tmp_path):
    ours = NodeRegistry().discover("nodes").object_info(FolderPaths(tmp_path))  # no model files: empty combos
    assert normalise(without_extensions(ours[name])) == normalise(object_info_reference()[name])
