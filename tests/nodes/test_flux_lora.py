"""FLUX LoRA: every layout against diffusers' load_lora_weights on FluxPipeline, stacking, strengths, exact
restore, no reload on strength changes, and bad files.

The zoo ships LoRA 1 in four layouts (BFL/ComfyUI with lora_A/lora_B + alpha, ComfyUI with lora_up/lora_down,
kohya with alpha, diffusers/PEFT) holding the same deltas, and LoRA 2 in kohya and PEFT layouts. diffusers
cannot read the tiny BFL and kohya files (its kohya converter hard-codes the 3072 width and it ignores
BFL-layout lora_A/lora_B keys), so every layout is compared with diffusers reading the PEFT file of the same
LoRA, applied unfused with `set_adapters(weights)`. Our conversion at full width is compared with diffusers'
kohya converter separately.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.support.conditioning import (SENSITIVITY, TOLERANCE, as_image, decode_and_capture, load_workflow, loaders,
                                        max_diff, mean_diff, run_graph, runtime_with_inputs, sampler, saved_png)
from tests.support.flux import zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

PROMPT = "a watercolor painting of a lighthouse"
LAYOUTS = ("comfy", "comfy-updown", "kohya", "peft")


@pytest.fixture(scope="module")
def runtime():
    return runtime_with_inputs()


@functools.lru_cache(maxsize=None)
def lora_pipeline():
    """A FluxPipeline of its own (adapters would leak into other tests' shared pipeline) with both LoRAs."""
    from diffusers import FluxPipeline

    models = zoo_base() / "models"
    pipe = FluxPipeline.from_pretrained(str(models / "diffusers/flux1-dev-tiny"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(models / "loras/flux1-dev-tiny-lora-peft.safetensors"), adapter_name="one")
    pipe.load_lora_weights(str(models / "loras/flux1-dev-tiny-lora2-peft.safetensors"), adapter_name="two")
    return pipe


def reference(weights: dict[str, float], seed: int = 31, steps: int = 3) -> torch.Tensor:
    pipe = lora_pipeline()
    pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
    images = pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=steps, guidance_scale=3.5,
                  max_sequence_length=256, generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images
    return as_image(images)


def lora_graph(loras: list[tuple[str, float]], *, seed: int = 31, steps: int = 3, model_only: bool = False) -> dict:
    graph = loaders("flux1-dev-tiny.safetensors")
    model, clip = ["1", 0], ["2", 0]
    for number, (name, strength) in enumerate(loras):
        node_id = f"{40 + number}"
        if model_only:
            graph[node_id] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": model, "lora_name": name, "strength_model": strength}}
            model = [node_id, 0]
        else:
            graph[node_id] = {"class_type": "LoraLoader", "inputs": {
                "model": model, "clip": clip, "lora_name": name, "strength_model": strength, "strength_clip": strength}}
            model, clip = [node_id, 0], [node_id, 1]
    graph["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}}
    graph["7"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 3.5}}
    graph["8"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}}
    graph["9"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["10"] = sampler(model, ["7", 0], ["8", 0], ["9", 0], seed=seed, steps=steps)
    return decode_and_capture(graph, ["10", 0])


@pytest.mark.parametrize("strength", [1.0, 0.5])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_matches_diffusers_load_lora_weights(runtime, layout, strength):
    ours, _ = run_graph(runtime, lora_graph([(f"flux1-dev-tiny-lora-{layout}.safetensors", strength)]))
    assert max_diff(ours, reference({"one": strength})) <= TOLERANCE


@pytest.mark.parametrize("first,second,weights", [
    ("flux1-dev-tiny-lora-comfy.safetensors", "flux1-dev-tiny-lora2-kohya.safetensors", (0.5, 1.0)),
    ("flux1-dev-tiny-lora-kohya.safetensors", "flux1-dev-tiny-lora2-peft.safetensors", (1.0, -0.5))])
def test_two_stacked_loras_match_diffusers(runtime, first, second, weights):
    ours, _ = run_graph(runtime, lora_graph([(first, weights[0]), (second, weights[1])]))
    assert max_diff(ours, reference({"one": weights[0], "two": weights[1]})) <= TOLERANCE


def test_strengths_and_loras_move_the_image_and_the_base_comes_back_exactly(runtime):
    base, _ = run_graph(runtime, lora_graph([]))
    full, _ = run_graph(runtime, lora_graph([("flux1-dev-tiny-lora-kohya.safetensors", 1.0)]))
    half, _ = run_graph(runtime, lora_graph([("flux1-dev-tiny-lora-kohya.safetensors", 0.5)]))
    assert mean_diff(base, full) >= SENSITIVITY and mean_diff(full, half) >= SENSITIVITY
    again, _ = run_graph(runtime, lora_graph([]))
    assert torch.equal(again, base)  # the patched weights were restored bit for bit


def test_changing_a_strength_or_removing_the_lora_never_reloads_the_model(runtime):
    run_graph(runtime, lora_graph([("flux1-dev-tiny-lora-comfy.safetensors", 1.0)], seed=5))
    _, changed = run_graph(runtime, lora_graph([("flux1-dev-tiny-lora-comfy.safetensors", 0.25)], seed=5))
    assert {"1", "2", "3"} <= set(changed.cached) and "40" in changed.executed
    _, removed = run_graph(runtime, lora_graph([], seed=5))
    assert {"1", "2", "3"} <= set(removed.cached)


def test_patches_restore_bit_for_bit_and_are_kept_between_runs(runtime):
    from engine.models.flux1.transformer import load_flux_transformer
    from engine.models.lora.loader import apply_lora
    from engine.models.lora.patch import applied_patches, apply_patches, patches_for, restore_weights

    path = runtime.folders.model_path("diffusion_models", "flux1-dev-tiny.safetensors")
    model = load_flux_transformer(path)
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    lora = runtime.folders.model_path("loras", "flux1-dev-tiny-lora-comfy.safetensors")
    patched = apply_lora(lora, model, None, 0.7, 0.0).model
    (patch,) = patches_for(patched.patches, "transformer")
    with apply_patches(model.transformer, [patch]):
        changed = [k for k, v in model.transformer.state_dict().items() if not torch.equal(v, before[k])]
        delta = patch.deltas[0]
        name = f"{delta.module}.weight"
        expected = before[name].float() + patch.strength * delta.scale * (delta.up.float() @ delta.down.float())
        assert torch.allclose(model.transformer.state_dict()[name].float(), expected, atol=1e-2, rtol=1e-2)
    assert len(changed) == len(patch.deltas) and applied_patches(model.transformer) == (patch.key,)
    with apply_patches(model.transformer, [patch.with_strength(-1.5)]):
        pass
    assert restore_weights(model.transformer) and not restore_weights(model.transformer)
    assert all(torch.equal(v, before[k]) for k, v in model.transformer.state_dict().items())


def test_model_only_loader_leaves_the_text_encoders_and_says_so(tmp_path):
    from engine.core.context import NodeContext
    from engine.core.folders import FolderPaths
    from nodes.flux.lora import lora_loader_model_only
    from tests.support.flux import zoo_base as base

    folders = FolderPaths(base())
    from engine.models.flux1.transformer import load_flux_transformer

    model = load_flux_transformer(folders.model_path("diffusion_models", "flux1-dev-tiny.safetensors"))
    result = lora_loader_model_only(NodeContext(folders=folders), model, "flux1-dev-tiny-lora-kohya.safetensors", 1.0)
    assert result.ui["text"] == ["LoRA flux1-dev-tiny-lora-kohya.safetensors: 3 text-encoder modules skipped "
                                 "(model-only loader)"]
    assert len(result.outputs[0].patches) == 1 and not model.patches


# ----- bad files

def _write(tmp_path, name: str, state: dict) -> object:
    from engine.models.common.safetensors_io import save_safetensors

    return save_safetensors(state, tmp_path / name)


@pytest.fixture(scope="module")
def dev_model(runtime):
    from engine.models.flux1.transformer import load_flux_transformer

    return load_flux_transformer(runtime.folders.model_path("diffusion_models", "flux1-dev-tiny.safetensors"))


def test_a_lora_for_another_architecture_is_refused_naming_the_file(tmp_path, dev_model):
    from engine.models.lora.loader import apply_lora
    from engine.models.common.safetensors_io import ModelFileError

    sdxl = _write(tmp_path, "sdxl_style.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)})
    with pytest.raises(ModelFileError, match=r"sdxl_style\.safetensors.*Stable Diffusion 1.x/2.x/XL"):
        apply_lora(sdxl, dev_model, None, 1.0, 0.0)
    wide = _write(tmp_path, "flux_full_size.safetensors", {  # a real-width FLUX LoRA on the tiny model
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(9216, 4)})
    with pytest.raises(ModelFileError, match=r"flux_full_size\.safetensors.*made for another model"):
        apply_lora(wide, dev_model, None, 1.0, 0.0)


def test_keys_that_match_nothing_are_reported_or_refused(tmp_path, dev_model, caplog):
    from engine.models.lora.loader import apply_lora
    from engine.models.common.safetensors_io import ModelFileError, open_safetensors

    zoo = zoo_base() / "models/loras"
    state = open_safetensors(zoo / "flux1-dev-tiny-lora-kohya.safetensors").load()
    state["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(4, 64)
    state["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(64, 4)
    state["lora_unet_double_blocks_0_img_mlp_0.dora_scale"] = torch.ones(1, 64)
    partial = _write(tmp_path, "partial.safetensors", state)
    with caplog.at_level("WARNING", logger="fluxgraph.lora"):
        result = apply_lora(partial, dev_model, None, 1.0, 0.0)
    assert "2 of " in result.report[0] and "lora_unet_no_such_layer" in result.report[0] and "dora_scale" in caplog.text
    nothing = _write(tmp_path, "nothing.safetensors", {"foo.lora_A.weight": torch.zeros(2, 8),
                                                       "foo.lora_B.weight": torch.zeros(8, 2)})
    with pytest.raises(ModelFileError, match=r"nothing\.safetensors.*none of its 1 LoRA modules match"):
        apply_lora(nothing, dev_model, None, 1.0, 0.0)


def test_full_width_conversion_equals_diffusers_kohya_converter():
    """At the real FLUX widths (where diffusers' converter works) both give the same deltas."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from engine.models.lora.keys import convert_lora

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1)  # real widths, on meta: no memory
    gen = torch.Generator().manual_seed(0)
    shapes = {"double_blocks_0_img_attn_qkv": (9216, 3072), "double_blocks_0_txt_mod_lin": (18432, 3072),
              "single_blocks_0_linear1": (21504, 3072), "single_blocks_0_linear2": (3072, 15360),
              "final_layer_adaLN_modulation_1": (6144, 3072)}
    state = {}
    for name, (out, inp) in shapes.items():
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(2, inp, generator=gen)
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out, 2, generator=gen)
        state[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    ours = convert_lora(dict(state), {"transformer": model}, "full.safetensors").patches["transformer"]
    theirs = _convert_kohya_flux_lora_to_diffusers(dict(state))
    assert len(ours.deltas) == len(theirs) // 2 == 10
    for delta in ours.deltas:
        key = delta.module if delta.module.startswith("norm_out") else f"transformer.{delta.module}"
        probe = torch.randn(delta.down.shape[1], 3, generator=gen)
        mine = delta.scale * (delta.up @ (delta.down @ probe))
        ref = theirs[f"{key}.lora_B.weight"] @ (theirs[f"{key}.lora_A.weight"] @ probe)
        if delta.module == "norm_out.linear":
            ref = ref * 4.0 / 2  # diffusers drops the final layer's alpha (alpha / rank = 2); kohya applies it
        assert torch.allclose(mine, ref, rtol=1e-4, atol=1e-3), delta.module


# ----- the shipped workflow

def test_lora_workflow_runs_with_two_stacked_loras(runtime):
    workflow = load_workflow("flux_lora.json")
    workflow["10"]["inputs"]["steps"] = 3
    _, result = run_graph(runtime, workflow, key="lora")
    assert saved_png(runtime, result, "12").shape[:2] == (64, 64)
