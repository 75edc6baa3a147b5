"""The FLUX.2 nodes (ComfyUI's declarations, sizes), the shipped FLUX.2 workflows on the tiny zoo, and the errors
a FLUX.2 graph gives for bad references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.core.context import NodeContext
from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from tests.support.flux2 import SENSITIVITY, flux2_graph, write_reference_image
from tests.support.flux import make_runtime, run_prompt
from tests.support.reference import load_reference, normalise

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runtime():
    return make_runtime()


@pytest.mark.parametrize("name", ["EmptyFlux2LatentImage", "Flux2Scheduler"])
def test_object_info_matches_comfyui(name, tmp_path):
    registry = NodeRegistry().discover("nodes")
    assert "nodes.flux2" not in registry.failed, registry.failed.get("nodes.flux2")
    ours = normalise(registry[name].object_info(FolderPaths(tmp_path)))
    assert ours == normalise(load_reference("object_info_more.json")[name])


def test_clip_loader_offers_flux2_in_comfyuis_order(tmp_path):
    info = NodeRegistry().discover("nodes")["CLIPLoader"].object_info(FolderPaths(tmp_path))
    assert info["input"]["required"]["type"][0] == ["flux", "flux2"]


def test_empty_flux2_latent_and_its_size_checks():
    from nodes.flux2.latent import _validate_size, empty_flux2_latent_image

    (latent,) = empty_flux2_latent_image(NodeContext(), 96, 64, 2)
    assert latent["samples"].shape == (2, 128, 4, 6) and not latent["samples"].any()
    assert _validate_size(96, 64) is True
    assert "multiple of 16" in _validate_size(100, 64)
    assert "megapixels" in _validate_size(4096, 4096)
    (floored,) = empty_flux2_latent_image(NodeContext(), 100, 70, 1)  # a linked size is floored
    assert floored["samples"].shape == (1, 128, 4, 6)


def test_flux2_scheduler_node_gives_the_empirical_schedule():
    from engine.sampling.flux2_schedule import compute_empirical_mu
    from nodes.flux2.latent import flux2_scheduler

    (sigmas,) = flux2_scheduler(NodeContext(), 4, 1024, 1024)
    assert sigmas.shape == (5,) and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    mu = compute_empirical_mu(4096, 4)
    t = torch.tensor(0.5, dtype=torch.float64)
    expected = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + (1 / t - 1))
    assert abs(float(sigmas[2]) - float(expected)) < 1e-6
    assert compute_empirical_mu(5000, 4) == compute_empirical_mu(5000, 50)  # large images: step-independent


@pytest.mark.parametrize("name", ["flux2_klein_txt2img.json", "flux2_dev_txt2img.json", "flux2_klein_edit.json"])
def test_shipped_workflows_run_on_the_tiny_zoo(runtime, name):
    workflow = json.loads((ROOT / "workflows" / name).read_text())
    if name == "flux2_klein_edit.json":
        write_reference_image(runtime.folders.input_dir, "flux2_reference_1.png", 120, 90, seed=3)
        write_reference_image(runtime.folders.input_dir, "flux2_reference_2.png", 80, 112, seed=4)
    for node in workflow.values():  # smaller and shorter than shipped, to keep the test fast
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyFlux2LatentImage", "Flux2Scheduler"):
            inputs.update({k: 64 for k in ("width", "height") if not isinstance(inputs[k], list)})
        if node["class_type"] == "Flux2Scheduler":
            inputs["steps"] = 2
        if node["class_type"] == "SaveImage":
            node["class_type"], node["inputs"] = "CaptureImage", {"images": inputs["images"], "key": name}
    image, _ = run_prompt(runtime, workflow, key=name)
    assert image.ndim == 4 and image.shape[-1] == 3 and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    if name == "flux2_klein_edit.json":  # output size = reference 1 (4:3) scaled to 0.06 MP on the 16-pixel grid
        height, width = image.shape[1:3]
        assert height % 16 == 0 and width % 16 == 0 and abs(width / height - 4 / 3) < 0.1
        assert abs(width * height / 2**20 - 0.06) < 0.01


def test_the_9b_workflow_names_the_released_files():
    workflow = json.loads((ROOT / "workflows" / "flux2_klein_9b_txt2img.json").read_text())
    names = {node["class_type"]: node["inputs"] for node in workflow.values()}
    assert names["UNETLoader"]["unet_name"] == "flux-2-klein-9b.safetensors"
    assert names["CLIPLoader"] == {"clip_name": "qwen_3_8b.safetensors", "type": "flux2", "device": "default"}


def test_a_too_small_reference_image_is_refused(runtime):
    write_reference_image(runtime.folders.input_dir, "flux2_small.png", 48, 96, seed=5)
    graph = flux2_graph("klein", steps=1, references=("flux2_small.png",))
    checked = runtime.validate(graph)
    result = runtime.executor.execute(checked.prompt, prompt_id="small")
    assert result.status == "error"
    assert "48x96 pixels; FLUX.2 reference images must be at least 64 pixels" in str(result.error)


def test_a_flux1_reference_latent_is_refused(runtime):
    """A reference encoded by the FLUX.1 VAE has 16 channels: the message says which VAE to use."""
    write_reference_image(runtime.folders.input_dir, "flux2_ok.png", 64, 64, seed=6)
    graph = flux2_graph("klein", steps=1, references=("flux2_ok.png",))
    graph["40"] = {"class_type": "VAELoader", "inputs": {"vae_name": "ae-tiny.safetensors"}}
    graph["31"]["inputs"]["vae"] = ["40", 0]
    result = runtime.executor.execute(runtime.validate(graph).prompt, prompt_id="flux1ref")
    assert result.status == "error" and "encode the image with the FLUX.2 VAE" in str(result.error)


def test_klein_ignores_guidance_but_dev_uses_it(runtime):
    klein, _ = run_prompt(runtime, flux2_graph("klein", steps=2, seed=1))
    klein_guided, _ = run_prompt(runtime, flux2_graph("klein", steps=2, seed=1, guidance=9.0))
    assert torch.equal(klein, klein_guided)
    dev_default, _ = run_prompt(runtime, flux2_graph("dev", steps=2, seed=1))  # no FluxGuidance: 4.0
    dev_four, _ = run_prompt(runtime, flux2_graph("dev", steps=2, seed=1, guidance=4.0))
    dev_two, _ = run_prompt(runtime, flux2_graph("dev", steps=2, seed=1, guidance=2.0))
    assert torch.equal(dev_default, dev_four)
    assert float((dev_four - dev_two).abs().mean()) >= SENSITIVITY


def test_tiled_decode_matches_plain_decode_for_flux2(runtime):
    """VAEDecodeTiled works on FLUX.2 latents (16 pixels per latent pixel); one tile = the plain decode."""
    from engine.memory.manager import MemoryManager
    from engine.models.flux2.vae import load_flux2_vae
    from engine.sampling.vae import decode, decode_tiled

    vae = load_flux2_vae(runtime.folders.model_path("vae", "flux2-vae-tiny.safetensors"))
    latents = torch.randn(1, 128, 4, 6, generator=torch.Generator().manual_seed(0))
    memory = MemoryManager(device="cpu")
    plain = decode(vae, latents, memory)
    assert plain.shape == (1, 64, 96, 3)
    assert torch.allclose(decode_tiled(vae, latents, memory, tile_size=512, overlap=64), plain, atol=1e-6)
    tiled = decode_tiled(vae, latents, memory, tile_size=64, overlap=32)
    assert tiled.shape == plain.shape and float((tiled - plain).abs().mean()) < 0.2


@pytest.mark.parametrize("edit", [False, True])
def test_official_style_graph_with_primitives_and_a_switch(runtime, edit):
    """As ComfyUI's FLUX.2 templates wire it: PrimitiveInt sizes, PrimitiveStringMultiline prompt, and a
    PrimitiveBoolean + ComfySwitchNode choosing between text-to-image and editing with three references
    (only the chosen branch runs)."""
    names = tuple(f"flux2_switch_{i}.png" for i in range(3))
    for index, name in enumerate(names):
        write_reference_image(runtime.folders.input_dir, name, 64 + 16 * index, 64, seed=20 + index)
    graph = flux2_graph("klein", steps=2, seed=9, references=names, key=f"switch-{edit}")
    graph.update({
        "50": {"class_type": "PrimitiveInt", "inputs": {"value": 64}},
        "51": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a red fox\nin the snow"}},
        "52": {"class_type": "PrimitiveBoolean", "inputs": {"value": edit}},
        "53": {"class_type": "ComfySwitchNode", "inputs": {"switch": ["52", 0], "on_false": ["4", 0],
                                                            "on_true": ["40", 0]}},
    })
    graph["4"]["inputs"]["text"] = ["51", 0]
    for node_id in ("6", "10"):
        graph[node_id]["inputs"].update(width=["50", 0], height=["50", 0])
    graph["8"]["inputs"].update(positive=["53", 0], negative=["5", 0])  # cfg 1: the negative is not sampled
    image, result = run_prompt(runtime, graph, key=f"switch-{edit}")
    assert image.shape == (1, 64, 64, 3)
    assert ("30" in result.executed) == edit  # the reference branch runs only when chosen
    if edit:
        plain, _ = run_prompt(runtime, flux2_graph("klein", width=64, height=64, steps=2, seed=9,
                                                   prompt="a red fox\nin the snow"))
        assert float((image - plain).abs().mean()) >= SENSITIVITY
