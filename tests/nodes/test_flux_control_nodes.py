"""Structural-control nodes: declarations as ComfyUI declares them, SetFirstSigma, Depth/Canny detection.

InstructPixToPixConditioning, the ControlNet nodes and Canny are not in the object_info captures
(tests/fixtures/comfy_reference); their expected declarations below are written from ComfyUI's node sources
(nodes.py, comfy_extras/nodes_canny.py, nodes_ip2p.py), DepthAnythingV2Preprocessor's from
comfyui_controlnet_aux, less its model list (ours lists models/depth).
"""

from __future__ import annotations

import pytest
import torch

from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from engine.models.common.detect import detect_flux_variant
from tests.support.reference import normalise

UNION_TYPES = ["auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
               "segment", "tile", "repaint"]
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}
COMFYUI_DECLARATIONS = {
    "InstructPixToPixConditioning": {
        "input": {"required": {"positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "vae": ["VAE"],
                               "pixels": ["IMAGE"]}},
        "output": ["CONDITIONING", "CONDITIONING", "LATENT"], "output_name": ["positive", "negative", "latent"],
        "category": "conditioning/instructpix2pix"},
    "ControlNetLoader": {
        "input": {"required": {"control_net_name": [[]]}}, "output": ["CONTROL_NET"],
        "output_name": ["CONTROL_NET"], "category": "loaders", "display_name": "Load ControlNet Model"},
    "ControlNetApplyAdvanced": {
        "input": {"required": {"positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
                               "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
                               "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}],
                               "start_percent": ["FLOAT", {"default": 0.0, **PERCENT}],
                               "end_percent": ["FLOAT", {"default": 1.0, **PERCENT}]},
                  "optional": {"vae": ["VAE"]}},
        "output": ["CONDITIONING", "CONDITIONING"], "output_name": ["positive", "negative"],
        "category": "conditioning/controlnet", "display_name": "Apply ControlNet"},
    "ControlNetApply": {  # ComfyUI's deprecated "Apply ControlNet (OLD)"
        "input": {"required": {"conditioning": ["CONDITIONING"], "control_net": ["CONTROL_NET"], "image": ["IMAGE"],
                               "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]}},
        "output": ["CONDITIONING"], "category": "conditioning/controlnet", "deprecated": True,
        "display_name": "Apply ControlNet (OLD)"},
    "SetUnionControlNetType": {
        "input": {"required": {"control_net": ["CONTROL_NET"], "type": [UNION_TYPES]}},
        "output": ["CONTROL_NET"], "output_name": ["CONTROL_NET"], "category": "conditioning/controlnet"},
    "Canny": {
        "input": {"required": {"image": ["IMAGE"],
                               "low_threshold": ["FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}],
                               "high_threshold": ["FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99,
                                                            "step": 0.01}]}},
        "output": ["IMAGE"], "output_name": ["IMAGE"], "category": "image/preprocessors"},
    "DepthAnythingV2Preprocessor": {
        "input": {"required": {"image": ["IMAGE"], "ckpt_name": [[]]},
                  "optional": {"resolution": ["INT", {"default": 512, "min": 64, "max": 16384, "step": 64}]}},
        "output": ["IMAGE"], "output_name": ["IMAGE"],
        "category": "ControlNet Preprocessors/Normal and Depth Estimators"},
}


@pytest.fixture(scope="module")
def registry():
    registry = NodeRegistry().discover("nodes")
    assert "nodes.flux" not in registry.failed, registry.failed.get("nodes.flux")
    return registry


@pytest.mark.parametrize("name", sorted(COMFYUI_DECLARATIONS))
def test_declarations_match_comfyuis(registry, name, tmp_path):
    if name not in registry:
        pytest.fail(f"{name} is not registered")
    ours = normalise(registry[name].object_info(FolderPaths(tmp_path)))
    expected = COMFYUI_DECLARATIONS[name]
    for key, value in expected.items():
        assert ours[key] == value, key
    order = {section: list(specs) for section, specs in expected["input"].items()}
    assert ours["input_order"] == order


def test_set_first_sigma_replaces_only_the_first(registry):
    from nodes.flux.control import set_first_sigma

    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0])
    (out,) = set_first_sigma(None, sigmas, 136.0)
    assert out.tolist() == [136.0, 0.6000000238418579, 0.30000001192092896, 0.0]
    assert sigmas[0] == 1.0  # the input is not changed in place


@pytest.mark.parametrize("hint,variant", [("flux1-depth-dev.safetensors", "depth"),
                                          ("flux1-canny-dev.safetensors", "canny"),
                                          ("my-control-model.safetensors", "control")])
def test_128_channel_models_are_depth_canny_or_control_by_their_name(hint, variant):
    shapes = {"x_embedder.weight": (3072, 128), "time_text_embed.guidance_embedder.linear_1.weight": (3072, 256)}
    assert detect_flux_variant(shapes, hint) == variant


def test_the_metadata_can_name_the_kind():
    shapes = {"x_embedder.weight": (3072, 128), "time_text_embed.guidance_embedder.linear_1.weight": (3072, 256)}
    assert detect_flux_variant(shapes, "model.safetensors", {"modelspec.title": "FLUX.1 Canny [dev]"}) == "canny"
