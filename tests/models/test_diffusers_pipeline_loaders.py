"""A diffusers pipeline folder placed under models/diffusers is offered by the loaders (docs/models.md):
UNETLoader / CLIPLoader / VAELoader list it as "diffusers/<folder>", DiffusersLoader (ComfyUI's) loads it whole."""

from __future__ import annotations

import pytest
import torch

from tests.support.flux import make_runtime, run_prompt, txt2img_prompt

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def runtime():
    return make_runtime()


def _choices(runtime, node: str, input_name: str) -> list[str]:
    return runtime.registry[node].object_info(runtime.folders)["input"]["required"][input_name][0]


def test_pipeline_folders_are_listed_with_a_clear_name(runtime) -> None:
    assert _choices(runtime, "DiffusersLoader", "model_path") == [
        "flux1-dev-tiny", "flux1-schnell-tiny", "flux2-dev-tiny", "flux2-klein-4b-tiny"]  # not bare transformers
    for node, input_name in [("UNETLoader", "unet_name"), ("CLIPLoader", "clip_name"), ("VAELoader", "vae_name")]:
        choices = _choices(runtime, node, input_name)
        assert {"diffusers/flux1-dev-tiny", "diffusers/flux2-klein-4b-tiny"} <= set(choices), node
        assert "diffusers/flux1-fill-tiny-transformer" not in choices  # no model_index.json: not a pipeline
    assert "diffusers/flux1-dev-tiny" not in _choices(runtime, "CheckpointLoaderSimple", "ckpt_name")
    # the /models listing and the CLI's `models list` keep ComfyUI's plain folder contents
    assert not any(name.startswith("diffusers/") for name in runtime.folders.list_models("vae", include_dirs=True))


def test_separate_loaders_and_diffusers_loader_run_a_pipeline_folder(runtime) -> None:
    reference, _ = run_prompt(runtime, txt2img_prompt("dev", steps=2))
    graph = txt2img_prompt("dev", steps=2)
    graph["1"]["inputs"]["unet_name"] = "diffusers/flux1-dev-tiny"
    graph["2"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "diffusers/flux1-dev-tiny", "type": "flux"}}
    graph["3"]["inputs"]["vae_name"] = "diffusers/flux1-dev-tiny"
    separate, _ = run_prompt(runtime, graph)
    assert torch.allclose(reference, separate, atol=1e-5)  # same weights in another layout

    graph = txt2img_prompt("dev", steps=2)
    graph["1"] = {"class_type": "DiffusersLoader", "inputs": {"model_path": "flux1-dev-tiny"}}
    graph["6"]["inputs"]["clip"] = ["1", 1]
    graph["8"]["inputs"]["vae"] = ["1", 2]
    del graph["2"], graph["3"]
    whole, _ = run_prompt(runtime, graph)
    assert torch.allclose(reference, whole, atol=1e-5)


def test_a_pipeline_name_cannot_climb_out_of_the_diffusers_folder(runtime) -> None:
    graph = txt2img_prompt("dev")
    graph["1"]["inputs"]["unet_name"] = "diffusers/../../secret"
    checked = runtime.validate(graph)
    assert not checked.ok and "1" in checked.node_errors
    with pytest.raises(FileNotFoundError):
        runtime.folders.model_path("vae", "diffusers/no-such-pipeline")


def test_diffusers_loader_is_declared_as_comfyui_declares_it(runtime) -> None:
    """ComfyUI's DiffusersLoader (documented at docs.comfy.org/built-in-nodes/DiffusersLoader): one combo
    `model_path` of the diffusers folders holding model_index.json; outputs MODEL, CLIP, VAE; deprecated loaders."""
    info = runtime.registry["DiffusersLoader"].object_info(runtime.folders)
    assert list(info["input"]["required"]) == ["model_path"] and not info["input"].get("optional")
    assert info["output"] == ["MODEL", "CLIP", "VAE"]
    assert info["category"] == "advanced/loaders/deprecated"
