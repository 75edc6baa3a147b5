"""FLUX Redux: parity with diffusers' FluxPriorReduxPipeline followed by FluxPipeline, strength types,
several images, loader layouts and files given to the wrong loader.

Parity settings: CLIPVisionEncode crop "none" (or "center" on a square image; both resize with PIL's bicubic
filter like SiglipImageProcessor), StyleModelApply strength 1.0 multiply. FluxPriorReduxPipeline is given the
tiny text encoders (without them it pads with full-size zero embeddings, trap) and the prompt embeddings of
FluxPipeline.encode_prompt(max_sequence_length=256), our T5 length for short prompts.
"""

from __future__ import annotations

import functools
import shutil

import pytest
import torch
from PIL import Image

from tests.support.conditioning import (INPUTS, SENSITIVITY, TOLERANCE, as_image, base_pipeline, decode_and_capture,
                                        load_workflow, loaders, max_diff, mean_diff, run_graph, runtime_with_inputs,
                                        sampler, saved_png)
from tests.support.flux import zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

PROMPT = "a cozy reading corner"
STYLE = "redux_style.png"


@pytest.fixture(scope="module")
def runtime():
    return runtime_with_inputs()


@functools.lru_cache(maxsize=None)
def prior_pipeline():
    from diffusers import FluxPriorReduxPipeline
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessorPil, SiglipVisionModel

    models = zoo_base() / "models"
    base = base_pipeline()
    return FluxPriorReduxPipeline(
        image_encoder=SiglipVisionModel.from_pretrained(str(models / "clip_vision/siglip-vision-tiny")),
        feature_extractor=SiglipImageProcessorPil.from_pretrained(str(models / "clip_vision/siglip-vision-tiny")),
        image_embedder=ReduxImageEncoder.from_pretrained(str(models / "style_models/flux1-redux-tiny-embedder")),
        text_encoder=base.text_encoder, tokenizer=base.tokenizer, text_encoder_2=base.text_encoder_2,
        tokenizer_2=base.tokenizer_2)


def reference_redux(image_name: str = STYLE):
    prompt_embeds, pooled, _ = base_pipeline().encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=256)
    with Image.open(INPUTS / image_name) as picture:
        return prior_pipeline()(picture.convert("RGB"), prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled)


def redux_graph(styles: list[tuple[str, float, str]], *, crop: str = "none", seed: int = 21, steps: int = 4,
                vision: str = "sigclip-vision-tiny.safetensors", style_model: str = "flux1-redux-tiny.safetensors"):
    graph = loaders("flux1-dev-tiny.safetensors")
    graph["5"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": vision}}
    graph["7"] = {"class_type": "StyleModelLoader", "inputs": {"style_model_name": style_model}}
    graph["8"] = {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0]}}
    conditioning: list = ["8", 0]
    for number, (name, strength, kind) in enumerate(styles):
        load, encode, apply = f"{40 + number}", f"{50 + number}", f"{60 + number}"
        graph[load] = {"class_type": "LoadImage", "inputs": {"image": name}}
        graph[encode] = {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["5", 0], "image": [load, 0],
                                                                      "crop": crop}}
        graph[apply] = {"class_type": "StyleModelApply", "inputs": {
            "conditioning": conditioning, "style_model": ["7", 0], "clip_vision_output": [encode, 0],
            "strength": strength, "strength_type": kind}}
        conditioning = [apply, 0]
    graph["13"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": conditioning, "guidance": 3.5}}
    graph["14"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["8", 0]}}
    graph["15"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    graph["10"] = sampler(["1", 0], ["13", 0], ["14", 0], ["15", 0], seed=seed, steps=steps)
    return decode_and_capture(graph, ["10", 0])


@pytest.mark.parametrize("vision,style_model,crop", [
    ("sigclip-vision-tiny.safetensors", "flux1-redux-tiny.safetensors", "none"),
    ("siglip-vision-tiny", "flux1-redux-tiny-embedder", "center")])
def test_redux_image_embeddings_equal_the_prior_pipeline(runtime, vision, style_model, crop):
    from engine.memory.manager import MemoryManager
    from engine.models.redux.embedder import load_style_model, style_tokens
    from engine.models.redux.siglip import encode_images, load_clip_vision
    from tests.support.conditioning import input_image

    folders, memory = runtime.folders, MemoryManager(device="cpu")
    output = encode_images(load_clip_vision(folders.model_path("clip_vision", vision)), input_image(STYLE)[0],
                           crop, memory)
    tokens = style_tokens(load_style_model(folders.model_path("style_models", style_model)), output, memory)
    expected = reference_redux().prompt_embeds[:, -tokens.shape[1]:]
    assert tokens.shape == (1, 16, 48)  # 4 x 4 SigLIP patches, T5 width
    assert float((tokens - expected).abs().max()) <= 1e-5


def test_redux_image_matches_prior_pipeline_then_flux_pipeline(runtime):
    ours, _ = run_graph(runtime, redux_graph([(STYLE, 1.0, "multiply")]))
    prior = reference_redux()
    expected = base_pipeline()(prompt_embeds=prior.prompt_embeds, pooled_prompt_embeds=prior.pooled_prompt_embeds,
                               height=64, width=64, num_inference_steps=4, guidance_scale=3.5, output_type="pt",
                               generator=torch.Generator("cpu").manual_seed(21)).images
    assert max_diff(ours, as_image(expected)) <= TOLERANCE


def test_strength_types_several_images_and_the_style_image_matter(runtime, tmp_path):
    def run(styles, steps=3):
        return run_graph(runtime, redux_graph(styles, steps=steps))[0]

    plain = run_graph(runtime, {k: v for k, v in redux_graph([], steps=3).items() if k not in ("5", "7")})[0]
    multiply = run([(STYLE, 1.0, "multiply")])
    assert max_diff(run([(STYLE, 1.0, "attn_bias")]), multiply) == 0.0  # bias log(1) = 0: nothing to add
    assert max_diff(run([(STYLE, 0.0, "attn_bias")]), plain) <= 1e-4  # -inf bias hides the image tokens
    assert mean_diff(run([(STYLE, 0.5, "attn_bias")]), multiply) >= 1e-3
    # scaling the tokens acts through the attention values only (q/k are RMS-normalised): a smaller effect
    assert mean_diff(run([(STYLE, 0.5, "multiply")]), multiply) >= 1e-3
    assert mean_diff(multiply, plain) >= SENSITIVITY
    assert mean_diff(run([("kontext_reference_1.png", 1.0, "multiply")]), multiply) >= SENSITIVITY
    assert mean_diff(run([(STYLE, 1.0, "multiply"), ("kontext_reference_1.png", 1.0, "multiply")]),
                     multiply) >= SENSITIVITY


def test_style_apply_appends_every_image_and_records_the_bias_ranges():
    from engine.sampling.redux import ATTENTION_BIAS, apply_style_tokens, attention_bias_mask

    cond = [[torch.zeros(1, 5, 8), {"pooled_output": torch.zeros(1, 4)}]]
    tokens = torch.ones(2, 3, 8)  # two images of 3 tokens
    (entry,) = apply_style_tokens(cond, tokens, 2.0, "multiply")
    assert entry[0].shape == (1, 11, 8) and float(entry[0][0, 5:].min()) == 2.0 and ATTENTION_BIAS not in entry[1]
    (biased,) = apply_style_tokens(cond, tokens, 0.5, "attn_bias")
    assert biased[1][ATTENTION_BIAS] == [(5, 11, pytest.approx(-0.6931, abs=1e-4))]
    (twice,) = apply_style_tokens([biased], tokens[:1], 2.0, "attn_bias")
    assert [r[:2] for r in twice[1][ATTENTION_BIAS]] == [(5, 11), (11, 14)] and "redux" not in str(cond)
    mask = attention_bias_mask(twice[1][ATTENTION_BIAS], 14, 16)[0, 0]
    assert float(mask[0, 5]) < 0 and float(mask[5, 5]) == 0.0 and float(mask[15, 12]) > 0  # image query row 15
    # as ComfyUI: a later image's tokens see the earlier ones unbiased, the earlier ones see it biased
    assert float(mask[11, 5]) == 0.0 and float(mask[5, 12]) > 0 and float(mask[12, 12]) == 0.0
    with pytest.raises(ValueError, match="strength_type"):
        apply_style_tokens(cond, tokens, 1.0, "add")
    with pytest.raises(ValueError, match="does not fit this text encoder"):
        apply_style_tokens(cond, torch.ones(1, 3, 9), 1.0, "multiply")


def test_files_given_to_the_wrong_loader_are_refused_with_the_right_loader(runtime, tmp_path):
    from engine.models.lora.loader import load_lora
    from engine.models.redux.embedder import load_style_model
    from engine.models.common.safetensors_io import ModelFileError
    from engine.models.redux.siglip import load_clip_vision

    folders = runtime.folders
    redux = folders.model_path("style_models", "flux1-redux-tiny.safetensors")
    siglip = folders.model_path("clip_vision", "sigclip-vision-tiny.safetensors")
    with pytest.raises(ModelFileError, match="holds a FLUX Redux image embedder; load it with StyleModelLoader"):
        load_clip_vision(redux)
    with pytest.raises(ModelFileError, match="holds a SigLIP vision model; load it with CLIPVisionLoader"):
        load_style_model(siglip)
    with pytest.raises(ModelFileError, match="expected a LoRA, but the file holds a FLUX Redux"):
        load_lora(redux, {"transformer": None})
    lora = folders.model_path("loras", "flux1-dev-tiny-lora-kohya.safetensors")
    with pytest.raises(ModelFileError, match="holds a LoRA; load it with LoraLoader"):
        load_style_model(lora)
    copy = tmp_path / "flux1-redux-dev.safetensors"
    shutil.copy(redux, copy)
    with pytest.raises(ModelFileError, match=str(copy.name)):  # messages name the file
        load_clip_vision(copy)


def test_redux_workflow_runs_on_the_tiny_zoo(runtime):
    workflow = load_workflow("flux_redux.json")
    workflow["10"]["inputs"]["steps"] = 3
    _, result = run_graph(runtime, workflow, key="redux")
    assert saved_png(runtime, result, "12").shape[:2] == (64, 64)
