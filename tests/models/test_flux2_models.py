"""FLUX.2 loading: every layout gives the same tensors, sizes and variants come from the weights, and the wrong
family or a missing tokenizer gets a clear error naming the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.models.common.safetensors_io import ModelFileError, open_safetensors, save_safetensors
from tests.support.flux import make_runtime, zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster


def models():
    return zoo_base() / "models"


def _same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def tiny():
    from engine.zoo.flux2_tiny import tiny_flux2

    return {variant: tiny_flux2(variant) for variant in ("klein", "dev")}


# ----- key conversion and layouts

def test_transformer_keys_round_trip_and_every_layout_loads_the_same_tensors(tiny):
    from engine.models.flux2.keys import bfl_to_diffusers, diffusers_to_bfl
    from engine.models.flux2.transformer import load_flux2_transformer

    state = tiny["klein"].transformer.state_dict()
    round_trip = bfl_to_diffusers(diffusers_to_bfl(state))
    assert sorted(round_trip) == sorted(state) and all(torch.equal(round_trip[k], state[k]) for k in state)
    comfy = load_flux2_transformer(models() / "diffusion_models/flux2-klein-4b-tiny.safetensors")
    folder = load_flux2_transformer(models() / "diffusers/flux2-klein-4b-tiny")
    _same_state(comfy.transformer, tiny["klein"].transformer)
    _same_state(folder.transformer, tiny["klein"].transformer)
    dev = load_flux2_transformer(models() / "diffusion_models/flux2-dev-tiny.safetensors")
    _same_state(dev.transformer, tiny["dev"].transformer)
    assert (comfy.family, comfy.variant, comfy.guidance_embeds) == ("flux2", "flux2-klein-4b", False)
    assert folder.variant == "flux2-klein-4b"  # model_index.json says is_distilled: true
    assert (dev.variant, dev.guidance_embeds) == ("flux2-dev", True)


def test_our_converter_equals_diffusers_single_file_converter():
    """diffusers' FLUX.2 converter (which has no hard-coded widths) gives the same tensors on every key."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    from engine.models.flux2.keys import bfl_to_diffusers

    state = open_safetensors(models() / "diffusion_models/flux2-dev-tiny.safetensors").load()
    ours = bfl_to_diffusers(dict(state))
    theirs = convert_flux2_transformer_checkpoint_to_diffusers(dict(state))
    assert sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_vae_layouts_load_the_same_tensors_and_round_trip_images(tiny):
    from engine.models.flux2.vae import load_flux2_vae

    single = load_flux2_vae(models() / "vae/flux2-vae-tiny.safetensors")
    folder = load_flux2_vae(models() / "diffusers/flux2-dev-tiny")
    _same_state(single.vae.inner, tiny["klein"].vae)
    _same_state(folder.vae.inner, tiny["klein"].vae)
    assert single.vae.config.latent_channels == 128 and single.vae.spatial_scale == 16
    pixels = torch.rand(1, 3, 48, 64) * 2 - 1
    latents = single.vae.encode(pixels).latent_dist.mode()
    assert latents.shape == (1, 128, 3, 4)
    raw = tiny["klein"].vae.encode(pixels).latent_dist.mode()  # the pipeline's patchify + batch-norm by hand
    patches = raw.view(1, 32, 3, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(1, 128, 3, 4)
    bn = tiny["klein"].vae.bn
    expected = (patches - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-4)
    assert torch.allclose(latents, expected, atol=1e-5)
    decoded = single.vae.decode(latents)[0]
    assert torch.allclose(decoded, tiny["klein"].vae.decode(raw).sample, atol=1e-5)


@pytest.mark.parametrize("architecture,file,folder", [
    ("qwen3", "qwen3-4b-tiny.safetensors", "flux2-klein-4b-tiny"),
    ("mistral", "mistral3-small-tiny.safetensors", "flux2-dev-tiny")])
def test_text_encoder_layouts_load_the_same_truncated_model(tiny, architecture, file, folder):
    from engine.models.flux2.text_encoders import HIDDEN_LAYERS, load_flux2_text_encoder

    roots = [models() / "tokenizers"]
    single = load_flux2_text_encoder(models() / "text_encoders" / file, roots)
    pipeline = load_flux2_text_encoder(models() / "diffusers" / folder)  # its own tokenizer/ folder
    own = load_flux2_text_encoder(models() / "diffusers" / folder / "text_encoder")
    assert single.architecture == pipeline.architecture == architecture
    _same_state(single.model, pipeline.model)
    _same_state(single.model, own.model)
    assert single.model.config.num_hidden_layers == max(HIDDEN_LAYERS[architecture]) + 1  # extra layers dropped
    reference = tiny["klein" if architecture == "qwen3" else "dev"].text_encoder
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        full = reference(input_ids=ids, output_hidden_states=True).hidden_states
        ours = single.model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in HIDDEN_LAYERS[architecture]:
        assert torch.allclose(ours[layer], full[layer], atol=1e-5), layer
    assert single.width == 3 * reference.config.get_text_config().hidden_size


def test_a_too_shallow_text_encoder_is_refused(tmp_path):
    from engine.models.flux2.text_encoders import load_flux2_text_encoder

    sf = open_safetensors(models() / "text_encoders/qwen3-4b-tiny.safetensors")
    state = {k: v for k, v in sf.load().items() if not any(f"layers.{i}." in k for i in range(20, 40))}
    path = save_safetensors(state, tmp_path / "qwen3-shallow.safetensors")
    with pytest.raises(ModelFileError, match=r"has 20 layers.*\[9, 18, 27\].*at least 28") as info:
        load_flux2_text_encoder(path, [models() / "tokenizers"])
    assert "qwen3-shallow.safetensors" in str(info.value)


def test_a_missing_tokenizer_says_what_to_put_where(tmp_path):
    from engine.models.flux2.text_encoders import load_flux2_text_encoder
    from engine.models.common.tokenizer_files import TokenizerMissingError

    with pytest.raises(TokenizerMissingError) as info:
        load_flux2_text_encoder(models() / "text_encoders/mistral3-small-tiny.safetensors", [tmp_path])
    message = str(info.value)
    assert "mistral3-small-tiny.safetensors" in message and str(tmp_path / "mistral3") in message
    assert "FLUX.2-dev" in message
    folder = tmp_path / "qwen3"  # a tokenizer of the wrong size is rejected, and said so
    shutil.copytree(models() / "tokenizers/mistral3-tiny", folder)
    with pytest.raises(TokenizerMissingError, match="Found but not usable"):
        load_flux2_text_encoder(models() / "text_encoders/qwen3-4b-tiny.safetensors", [tmp_path])


# ----- variants and dimensions from the weights

@pytest.mark.parametrize("name,metadata,joint,distilled,expected", [
    ("flux-2-klein-4b.safetensors", {}, 7680, None, "flux2-klein-4b"),
    ("flux-2-klein-base-9b-fp8.safetensors", {}, 12288, None, "flux2-klein-base-9b"),
    ("my_finetune.safetensors", {}, 12288, None, "flux2-klein-9b"),
    ("my_finetune.safetensors", {"modelspec.title": "FLUX.2 klein base"}, 7680, None, "flux2-klein-base-4b"),
    ("diffusers-folder", {}, 96, False, "flux2-klein-base"),
    ("odd-size.safetensors", {}, 96, None, "flux2-klein"),
])
def test_klein_variants_come_from_names_metadata_and_widths(name, metadata, joint, distilled, expected):
    from engine.models.flux2.variants import detect_flux2_variant

    config = {"guidance_embeds": False, "joint_attention_dim": joint}
    assert detect_flux2_variant(config, name, metadata, distilled) == expected
    assert detect_flux2_variant({**config, "guidance_embeds": True}, name, metadata) == "flux2-dev"


def test_dimensions_are_inferred_from_shapes_so_other_sizes_load(tmp_path):
    from diffusers import Flux2Transformer2DModel

    from engine.models.flux2.keys import diffusers_to_bfl
    from engine.models.flux2.transformer import load_diffusion_model
    from engine.zoo.flux1_tiny import seeded_init_

    model = seeded_init_(Flux2Transformer2DModel(
        in_channels=128, num_layers=1, num_single_layers=3, attention_head_dim=24, num_attention_heads=3,
        joint_attention_dim=40, timestep_guidance_channels=32, mlp_ratio=2.0, axes_dims_rope=(6, 6, 6, 6),
        guidance_embeds=True), 5)
    path = save_safetensors(diffusers_to_bfl(model.state_dict()), tmp_path / "odd.safetensors")
    loaded = load_diffusion_model(path)
    config = loaded.transformer.config
    assert (config.num_layers, config.num_single_layers, config.num_attention_heads, config.mlp_ratio,
            config.joint_attention_dim, list(config.axes_dims_rope)) == (1, 3, 3, 2.0, 40, [6, 6, 6, 6])
    _same_state(loaded.transformer, model)


def test_unet_loading_dispatches_on_the_family():
    from engine.models.flux2.transformer import load_diffusion_model

    assert load_diffusion_model(models() / "diffusion_models/flux1-dev-tiny.safetensors").family == "flux1"
    assert load_diffusion_model(models() / "diffusion_models/flux2-dev-tiny.safetensors").family == "flux2"


# ----- the wrong family: at validation (CLIP loaders, by their type) and in the loaders

@pytest.mark.parametrize("class_type,inputs,named,holds", [
    ("CLIPLoader", {"clip_name": "t5xxl-tiny.safetensors", "type": "flux2"}, "t5xxl-tiny.safetensors",
     "a FLUX.1 T5-XXL text encoder (a FLUX.1 model)"),
    ("CLIPLoader", {"clip_name": "qwen3-4b-tiny.safetensors", "type": "flux"}, "qwen3-4b-tiny.safetensors",
     "a Qwen3 text encoder (FLUX.2 klein) (a FLUX.2 model)"),
    ("DualCLIPLoader", {"clip_name1": "mistral3-small-tiny.safetensors", "clip_name2": "clip_l-tiny.safetensors",
                        "type": "flux"}, "mistral3-small-tiny.safetensors", "a Mistral text encoder (FLUX.2 dev)"),
])
def test_a_text_encoder_of_the_other_family_fails_validation_naming_the_file(class_type, inputs, named, holds):
    from tests.support.flux2 import flux2_graph

    graph = flux2_graph("klein")
    graph["2"] = {"class_type": class_type, "inputs": inputs}
    checked = make_runtime().validate(graph)
    assert not checked.ok
    errors = checked.node_errors["2"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert named in errors[0]["details"] and holds in errors[0]["details"], errors[0]["details"]
    assert set(checked.node_errors) == {"2"}


def test_the_loaders_refuse_the_other_family_naming_the_file():
    from engine.models.flux2.text_encoders import load_flux2_text_encoder
    from engine.models.flux2.transformer import load_flux2_transformer
    from engine.models.flux2.vae import load_flux2_vae

    cases = [(load_flux2_vae, "vae/ae-tiny.safetensors", "a FLUX.1 VAE; it belongs to FLUX.1"),
             (load_flux2_transformer, "diffusion_models/flux1-dev-tiny.safetensors",
              "a FLUX.1 diffusion transformer; it belongs to FLUX.1"),
             (load_flux2_text_encoder, "text_encoders/clip_l-tiny.safetensors", "a FLUX.1 CLIP-L text encoder")]
    for loader, rel, says in cases:
        with pytest.raises(ModelFileError) as info:
            loader(models() / rel)
        assert rel.split("/")[-1] in str(info.value) and says in str(info.value), str(info.value)


def test_a_flux2_model_with_flux1_conditioning_or_latents_says_what_is_wrong():
    from engine.memory.manager import MemoryManager
    from engine.models.flux2.transformer import load_diffusion_model
    from engine.sampling.pipeline import Guider, RandomNoise, SamplerChoice, sample

    model = load_diffusion_model(models() / "diffusion_models/flux2-klein-4b-tiny.safetensors")
    t5_like = [[torch.zeros(1, 256, 48), {"pooled_output": torch.zeros(1, 128)}]]
    latent = {"samples": torch.zeros(1, 128, 4, 4)}
    sigmas = torch.tensor([1.0, 0.0])
    memory = MemoryManager(device="cpu")
    with pytest.raises(ValueError, match=r"expects \[batch, tokens, 96\].*klein: its Qwen3"):
        sample(Guider(model, t5_like), SamplerChoice("euler"), sigmas, latent, RandomNoise(0), memory=memory)
    flux1_latent = {"samples": torch.ones(1, 16, 8, 8)}
    good = [[torch.zeros(1, 8, 96), {"pooled_output": None}]]
    with pytest.raises(ValueError, match="encoded by a FLUX.1 .*encode with the FLUX.2 VAE"):
        sample(Guider(model, good), SamplerChoice("euler"), sigmas, flux1_latent, RandomNoise(0), memory=memory)
    blank_sd3 = sample(Guider(model, good), SamplerChoice("euler"), sigmas, {"samples": torch.zeros(1, 16, 8, 6)},
                       RandomNoise(0), memory=memory)
    assert blank_sd3.samples.shape == (1, 128, 4, 3)  # a blank FLUX.1 latent becomes a FLUX.2 one, same size


def test_the_zoo_manifest_lists_the_flux2_files():
    manifest = json.loads((models() / ".tiny-zoo.json").read_text())
    for rel in ("diffusion_models/flux2-klein-4b-tiny.safetensors", "text_encoders/qwen3-4b-tiny.safetensors",
                "vae/flux2-vae-tiny.safetensors", "diffusers/flux2-dev-tiny/model_index.json",
                "tokenizers/mistral3-tiny/tokenizer.json"):
        assert rel in manifest["files"], rel


# ----- the graph-level family check (for validation: a node's hook cannot see the rest of the graph)

@pytest.mark.parametrize("change,blamed,says", [
    ({"1": {"unet_name": "flux1-dev-tiny.safetensors"}}, "1",
     "flux1-dev-tiny.safetensors (a FLUX.1 diffusion transformer) is FLUX.1, but the graph's other models are "
     "FLUX.2"),
    ({"3": {"vae_name": "ae-tiny.safetensors"}}, "3",
     "ae-tiny.safetensors (a FLUX.1 VAE) is FLUX.1, but the diffusion model it is used with is FLUX.2"),
    ({}, None, ""),
])
def test_family_check_blames_the_odd_loader_naming_its_file(change, blamed, says):
    from engine.models.common.family_check import family_errors
    from tests.support.flux2 import flux2_graph

    graph = flux2_graph("klein")
    for node_id, inputs in change.items():
        graph[node_id]["inputs"].update(inputs)
    errors = family_errors(graph, make_runtime().folders)
    if blamed is None:
        assert errors == {}
    else:
        assert list(errors) == [blamed] and says in errors[blamed], errors


def test_family_check_passes_the_shipped_workflows():
    from pathlib import Path

    from engine.models.common.family_check import family_errors

    folders = make_runtime().folders
    root = Path(__file__).resolve().parents[2] / "workflows"
    for name in ("flux_dev_txt2img.json", "flux2_klein_txt2img.json", "flux2_dev_txt2img.json",
                 "flux2_klein_edit.json"):
        assert family_errors(json.loads((root / name).read_text()), folders) == {}, name


def test_validation_refuses_a_flux1_model_in_a_flux2_graph():
    """The pack's GRAPH_VALIDATORS run inside validate_prompt: the error reaches /prompt and the CLI."""
    from tests.support.flux2 import flux2_graph

    runtime = make_runtime()
    graph = flux2_graph("klein")
    assert runtime.validate(graph).ok
    graph["1"]["inputs"]["unet_name"] = "flux1-dev-tiny.safetensors"
    result = runtime.validate(graph)
    assert not result.ok
    error = result.node_errors["1"]["errors"][0]
    assert error["type"] == "custom_validation_failed" and "flux1-dev-tiny.safetensors" in error["details"]
