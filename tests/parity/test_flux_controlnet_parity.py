"""FLUX.1 ControlNets through our graph and through diffusers' FluxControlNetPipeline.

Our graph: UNETLoader (dev, BFL file) + ControlNetLoader (the zoo's single files: InstantX layout, union
included, and XLabs layout) [+ SetUnionControlNetType] + ControlNetApplyAdvanced (one or two, stacked) +
KSampler euler/simple. The reference loads the zoo's diffusers folders (FluxControlNetModel, or
FluxMultiControlNetModel for two, with list-valued control_guidance_start/end: with scalars diffusers drops
every condition after the first). The reference encodes the control image with the VAE posterior's mode, as
ComfyUI and we do (see test_flux_control_parity.py).
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.parity.test_flux_control_parity import posterior_mode
from tests.support.conditioning import (SENSITIVITY, TOLERANCE, base_pipeline, decode_and_capture, input_image,
                                        loaders, max_diff, mean_diff, run_graph, runtime_with_inputs, sampler)
from tests.support.flux import PROMPT, zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FILES = {"plain": "flux-tiny-controlnet.safetensors", "union": "flux-tiny-controlnet-union.safetensors",
         "xlabs": "flux-tiny-controlnet-xlabs.safetensors"}
UNION_MODES = {"depth": 1, "canny/lineart/anime_lineart/mlsd": 3}  # ComfyUI's SetUnionControlNetType numbers
GUIDANCE = 3.5


@pytest.fixture(scope="module")
def runtime():
    return runtime_with_inputs()


@functools.lru_cache(maxsize=None)
def reference_controlnet(kind: str):
    from diffusers import FluxControlNetModel

    return FluxControlNetModel.from_pretrained(str(zoo_base() / f"models/diffusers/flux-tiny-controlnet-{kind}"))


def reference(kinds: list[str], images: list[str], modes: list[int | None], strengths: list[float], *,
              seed: int, steps: int = 4) -> torch.Tensor:
    from diffusers import FluxControlNetPipeline, FluxMultiControlNetModel

    base = base_pipeline()
    nets = [reference_controlnet(kind) for kind in kinds]
    controlnet = nets[0] if len(nets) == 1 else FluxMultiControlNetModel(nets)
    pipe = FluxControlNetPipeline(controlnet=controlnet, **{name: getattr(base, name) for name in (
        "transformer", "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")})
    pipe.set_progress_bar_config(disable=True)
    controls = [input_image(name)[0].permute(0, 3, 1, 2) * 2 - 1 for name in images]  # tensors go in as -1..1
    single = len(nets) == 1
    with posterior_mode():
        out = pipe(prompt=PROMPT, control_image=controls[0] if single else controls,
                   control_mode=modes[0] if single else modes,
                   controlnet_conditioning_scale=strengths[0] if single else strengths,
                   control_guidance_start=[0.0] * len(nets), control_guidance_end=[1.0] * len(nets),
                   height=64, width=64, num_inference_steps=steps, guidance_scale=GUIDANCE,
                   generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images
    return out.permute(0, 2, 3, 1)


def controlnet_graph(applied: list[tuple[str, str, str | None, float]], *, seed: int = 42, steps: int = 4,
                     start: float = 0.0, end: float = 1.0) -> dict:
    """`applied`: (kind, control image, union type or None, strength) per ControlNetApplyAdvanced, in order."""
    graph = loaders("flux1-dev-tiny.safetensors")
    graph.update({
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0], "t5_max_length": 512}},
        "6": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["5", 0], "guidance": GUIDANCE}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["5", 0]}},
        "9": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    })
    positive, negative = ["6", 0], ["7", 0]
    for number, (kind, image, union_type, strength) in enumerate(applied):
        base = 30 + 10 * number
        graph[str(base)] = {"class_type": "LoadImage", "inputs": {"image": image}}
        graph[str(base + 1)] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": FILES[kind]}}
        net = [str(base + 1), 0]
        if union_type is not None:
            graph[str(base + 2)] = {"class_type": "SetUnionControlNetType",
                                    "inputs": {"control_net": net, "type": union_type}}
            net = [str(base + 2), 0]
        graph[str(base + 3)] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": net, "image": [str(base), 0],
            "strength": strength, "start_percent": start, "end_percent": end, "vae": ["3", 0]}}
        positive, negative = [str(base + 3), 0], [str(base + 3), 1]
    graph["10"] = sampler(["1", 0], positive, negative, ["9", 0], seed=seed, steps=steps)
    return decode_and_capture(graph, ["10", 0])


def test_a_controlnet_matches_flux_controlnet_pipeline(runtime):
    ours, _ = run_graph(runtime, controlnet_graph([("plain", "control_photo.png", None, 0.8)], seed=3))
    expected = reference(["plain"], ["control_photo.png"], [None], [0.8], seed=3)
    assert max_diff(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("union_type", sorted(UNION_MODES))
def test_a_union_controlnet_in_a_mode_matches_flux_controlnet_pipeline(runtime, union_type):
    ours, _ = run_graph(runtime, controlnet_graph([("union", "control_photo.png", union_type, 1.0)], seed=4))
    expected = reference(["union"], ["control_photo.png"], [UNION_MODES[union_type]], [1.0], seed=4)
    assert max_diff(ours, expected) <= TOLERANCE


def test_two_stacked_controlnets_match_flux_multi_controlnet(runtime):
    applied = [("plain", "control_photo.png", None, 0.7), ("union", "control_photo_2.png", "depth", 0.9)]
    ours, _ = run_graph(runtime, controlnet_graph(applied, seed=6))
    expected = reference(["plain", "union"], ["control_photo.png", "control_photo_2.png"], [None, 1], [0.7, 0.9],
                         seed=6)
    assert max_diff(ours, expected) <= TOLERANCE


def test_an_xlabs_controlnet_matches_flux_controlnet_pipeline(runtime):
    ours, _ = run_graph(runtime, controlnet_graph([("xlabs", "control_photo.png", None, 1.0)], seed=8))
    expected = reference(["xlabs"], ["control_photo.png"], [None], [1.0], seed=8)
    assert max_diff(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("kind", ["plain", "union", "xlabs"])
def test_the_control_image_moves_the_output(runtime, kind):
    union_type = "depth" if kind == "union" else None
    first, _ = run_graph(runtime, controlnet_graph([(kind, "control_photo.png", union_type, 1.0)]))
    second, _ = run_graph(runtime, controlnet_graph([(kind, "control_photo_2.png", union_type, 1.0)]))
    assert mean_diff(first, second) >= SENSITIVITY


def test_the_union_mode_and_the_percent_range_change_the_output(runtime):
    depth, _ = run_graph(runtime, controlnet_graph([("union", "control_photo.png", "depth", 1.0)]))
    canny, _ = run_graph(runtime, controlnet_graph([("union", "control_photo.png", "canny/lineart/anime_lineart/mlsd",
                                                     1.0)]))
    late, _ = run_graph(runtime, controlnet_graph([("union", "control_photo.png", "depth", 1.0)], start=0.5))
    assert mean_diff(depth, canny) >= SENSITIVITY
    assert mean_diff(depth, late) >= SENSITIVITY


def test_strength_zero_is_no_controlnet(runtime):
    from tests.support.flux import txt2img_prompt

    off, _ = run_graph(runtime, controlnet_graph([("plain", "control_photo.png", None, 0.0)]))
    graph = txt2img_prompt("dev", steps=4, key="plain")
    graph["6"]["inputs"]["t5_max_length"] = 512
    plain, _ = run_graph(runtime, graph, key="plain")
    assert torch.equal(off, plain)


def test_the_memory_manager_places_the_controlnet_for_the_run(runtime):
    run_graph(runtime, controlnet_graph([("union", "control_photo.png", "depth", 1.0)], steps=1))
    models = {entry["name"]: entry for entry in runtime.models.stats()["models"]}
    assert "FluxControlNetModel" in models, sorted(models)
    assert not models["FluxControlNetModel"]["in_use"]  # released after the run, like the transformer


def test_auto_runs_a_union_controlnet_without_a_mode(runtime):
    auto, _ = run_graph(runtime, controlnet_graph([("union", "control_photo.png", "auto", 1.0)], steps=2))
    depth, _ = run_graph(runtime, controlnet_graph([("union", "control_photo.png", "depth", 1.0)], steps=2))
    assert mean_diff(auto, depth) > 0  # no mode token is not mode 1
    again, _ = run_graph(runtime, controlnet_graph([("union", "control_photo.png", "depth", 1.0)], steps=2,
                                                   seed=43))
    expected = reference(["union"], ["control_photo.png"], [1], [1.0], seed=43, steps=2)
    assert max_diff(again, expected) <= TOLERANCE  # the cached module is a union model again after "auto"


def _as_old_node(graph: dict) -> dict:
    """The graph with its one ControlNetApplyAdvanced replaced by ComfyUI's old ControlNetApply (positive only)."""
    graph = {key: dict(value) for key, value in graph.items()}
    inputs = graph["33"]["inputs"]
    graph["33"] = {"class_type": "ControlNetApply", "inputs": {
        "conditioning": inputs["positive"], "control_net": inputs["control_net"], "image": inputs["image"],
        "strength": inputs["strength"]}}
    graph["10"] = {**graph["10"], "inputs": {**graph["10"]["inputs"], "positive": ["33", 0], "negative": ["7", 0]}}
    return graph


def test_the_old_controlnet_apply_node_equals_the_advanced_one_at_cfg_1(runtime):
    """Saved workflows still use ControlNetApply; FLUX.1 dev samples at cfg 1, so the negative never runs."""
    graph = controlnet_graph([("xlabs", "control_photo.png", None, 0.9)], seed=9, steps=2)
    assert graph["10"]["inputs"].get("cfg", 1.0) == 1.0
    advanced, _ = run_graph(runtime, graph)
    old, _ = run_graph(runtime, _as_old_node(graph))
    assert torch.equal(old, advanced)


def test_the_old_node_asks_for_controlnet_apply_advanced_when_a_vae_is_needed(runtime):
    graph = _as_old_node(controlnet_graph([("plain", "control_photo.png", None, 1.0)], steps=1))
    checked = runtime.validate(graph)
    result = runtime.executor.execute(checked.prompt, prompt_id="old-node")
    assert result.status == "error"
    assert "ControlNetApply" in str(result.errors) and "vae" in str(result.errors)
