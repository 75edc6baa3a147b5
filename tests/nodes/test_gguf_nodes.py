"""The GGUF loader nodes (names and inputs of the community ComfyUI-GGUF pack) over the tiny zoo's files."""

from __future__ import annotations

import pytest
import torch

from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from tests.support.flux import make_runtime, run_prompt, txt2img_prompt, zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def runtime():
    return make_runtime()


def gguf_graph(prompt: str = "a photo of a cat sitting on a red sofa", t5: str = "t5xxl-tiny-Q8_0.gguf") -> dict:
    graph = txt2img_prompt("dev", seed=5, steps=3, prompt=prompt)
    graph["1"] = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "flux1-dev-tiny-Q4_K.gguf"}}
    graph["2"] = {"class_type": "DualCLIPLoaderGGUF", "inputs": {"clip_name1": "clip_l-tiny.safetensors",
                                                                "clip_name2": t5, "type": "flux"}}
    return graph


def test_declared_as_the_comfyui_gguf_pack_declares_them():
    registry = NodeRegistry().discover("nodes")
    info = registry.object_info(FolderPaths(zoo_base()))
    unet = info["UnetLoaderGGUF"]
    assert list(unet["input"]["required"]) == ["unet_name"] and unet["output"] == ["MODEL"]
    assert unet["category"] == "bootleg" and unet["display_name"] == "Unet Loader (GGUF)"
    assert unet["input"]["required"]["unet_name"][0] == ["flux1-dev-tiny-Q4_K.gguf", "flux1-dev-tiny-Q8_0.gguf"]
    assert list(info["CLIPLoaderGGUF"]["input"]["required"]) == ["clip_name", "type"]
    assert list(info["DualCLIPLoaderGGUF"]["input"]["required"]) == ["clip_name1", "clip_name2", "type"]
    clip_names = info["DualCLIPLoaderGGUF"]["input"]["required"]["clip_name1"][0]
    assert {"t5xxl-tiny-Q8_0.gguf", "clip_l-tiny.safetensors", "t5xxl-tiny.safetensors"} <= set(clip_names)
    assert "t5xxl-tiny-Q8_0.gguf" not in info["DualCLIPLoader"]["input"]["required"]["clip_name1"][0]


def test_gguf_graph_runs_and_follows_the_prompt(runtime):
    image, _ = run_prompt(runtime, gguf_graph())
    other, _ = run_prompt(runtime, gguf_graph(prompt="a watercolour of a lighthouse at night"))
    float_t5, _ = run_prompt(runtime, gguf_graph(t5="t5xxl-tiny.safetensors"))
    assert torch.isfinite(image).all()
    assert float((image - other).abs().mean()) >= 0.01
    assert 0 < float((image - float_t5).abs().mean()) < float((image - other).abs().mean())


def test_clip_loader_gguf_loads_a_t5_and_refuses_a_transformer(runtime):
    graph = gguf_graph()
    graph["2"] = {"class_type": "CLIPLoaderGGUF", "inputs": {"clip_name": "t5xxl-tiny-Q8_0.gguf", "type": "flux"}}
    graph["10"] = {"class_type": "CLIPTextEncodeFlux", "inputs": {
        "clip": ["2", 0], "clip_l": "", "t5xxl": "a photo of a cat", "guidance": 3.5}}
    graph["9"]["inputs"]["positive"] = ["10", 0]
    graph["7"]["inputs"]["conditioning"] = ["10", 0]
    for unused in ("4", "6"):
        graph.pop(unused)
    checked = runtime.validate(graph)
    assert checked.ok, checked.node_errors
    result = runtime.executor.execute(checked.prompt, prompt_id="t5-only")
    # the GGUF T5 loaded (node 2 ran); FLUX.1 also needs a clip_l, which the encoder node asks for by name
    assert result.status == "error" and result.errors[0]["node_id"] == "10"
    assert "2" in result.errors[0]["executed"] and "no CLIP-L" in result.errors[0]["exception_message"]
    wrong = gguf_graph()
    wrong["2"]["inputs"]["clip_name2"] = "flux1-dev-tiny-Q8_0.gguf"
    checked = runtime.validate(wrong)
    assert not checked.ok and "2" in checked.node_errors  # not in text_encoders/: not offered at all
    models = zoo_base() / "models"
    misplaced = models / "text_encoders/flux1-dev-misplaced-tiny-Q8_0.gguf"
    misplaced.write_bytes((models / "diffusion_models/flux1-dev-tiny-Q8_0.gguf").read_bytes())
    try:
        wrong["2"]["inputs"]["clip_name2"] = misplaced.name
        checked = runtime.validate(wrong)
        message = str(checked.node_errors["2"]["errors"])
        assert "FLUX.1 diffusion transformer" in message and misplaced.name in message
    finally:
        misplaced.unlink()


def test_the_advanced_unet_loader_takes_the_packs_options_and_loads_the_same_model(runtime):
    info = NodeRegistry().discover("nodes").object_info(FolderPaths(zoo_base()))["UnetLoaderGGUFAdvanced"]
    required = info["input"]["required"]
    assert list(required) == ["unet_name", "dequant_dtype", "patch_dtype", "patch_on_device"]
    assert required["dequant_dtype"][0] == ["default", "target", "float32", "float16", "bfloat16"]
    assert required["patch_on_device"] == ["BOOLEAN", {"default": False}]
    assert info["display_name"] == "Unet Loader (GGUF/Advanced)" and info["output"] == ["MODEL"]
    plain, _ = run_prompt(runtime, gguf_graph())
    graph = gguf_graph()
    graph["1"] = {"class_type": "UnetLoaderGGUFAdvanced", "inputs": {
        "unet_name": "flux1-dev-tiny-Q4_K.gguf", "dequant_dtype": "float16", "patch_dtype": "target",
        "patch_on_device": True}}
    advanced, _ = run_prompt(runtime, graph)
    assert torch.equal(plain, advanced)  # one exact dequantization path whatever the options say


def test_a_gguf_file_given_to_a_safetensors_loader_is_pointed_to_the_gguf_loaders(runtime):
    graph = txt2img_prompt("dev", seed=5, steps=3)
    graph["1"]["inputs"]["unet_name"] = "flux1-dev-tiny-Q8_0.gguf"
    graph["2"]["inputs"]["clip_name2"] = "t5xxl-tiny-Q8_0.gguf"
    checked = runtime.validate(graph)
    unet = checked.node_errors["1"]["errors"][0]["details"]
    clip = checked.node_errors["2"]["errors"][0]["details"]
    assert "this input offers no '.gguf' files" in unet
    assert "is not among" in clip and "load with CLIPLoaderGGUF / DualCLIPLoaderGGUF" in clip
