"""The FLUX node pack: ComfyUI's declarations, validation of sizes, and each node's behaviour.

Node functions are called directly with the tiny zoo's in-memory handles (fast); the loaders are checked
through the executor over the zoo's files.
"""

from __future__ import annotations

import pytest
import torch

from engine.core.context import Interrupted, NodeContext
from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from nodes.flux import common, conditioning as C, latent as LT, loaders as LD, sampling as SN
from tests.support.flux import make_runtime, run_prompt, txt2img_prompt, zoo_base
from tests.support.reference import normalise, object_info_reference, without_extensions

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

# DiffusersLoader has no captured entry: its declaration is checked in tests/models/test_diffusers_pipeline_loaders.py
UNCAPTURED = {"DiffusersLoader"}
# Control nodes without a capture: their declarations are checked in tests/nodes/test_flux_control_nodes.py
UNCAPTURED |= {"InstructPixToPixConditioning", "ControlNetLoader", "ControlNetApplyAdvanced", "SetUnionControlNetType",
               "Canny", "DepthAnythingV2Preprocessor", "ControlNetApply"}
# fluxgraph's own LoRA training nodes have no ComfyUI counterpart: tests/training/test_flux_lora_nodes.py
UNCAPTURED |= {"LoadFluxLoraDataset", "TrainFluxLora"}
# The GGUF loaders belong to a community pack (no capture of ComfyUI core): tests/nodes/test_gguf_nodes.py
UNCAPTURED |= {"UnetLoaderGGUF", "UnetLoaderGGUFAdvanced", "CLIPLoaderGGUF", "DualCLIPLoaderGGUF"}
# Speed nodes without a capture: EasyCache / LazyCache / TorchCompileModel inputs are checked against ComfyUI's
# documented schema in tests/nodes/test_speed_nodes.py; the others have diffusers' parameters
UNCAPTURED |= {"EasyCache", "LazyCache", "FirstBlockCache", "MagCache", "TaylorSeerCache", "TorchCompileModel"}
FLUX_NODES = [schema.name for schema in __import__("nodes.flux", fromlist=["NODES"]).NODES
              if schema.name not in UNCAPTURED]
# Combos where we list a subset of ComfyUI's options (what is implemented), in ComfyUI's order.
SUBSET_COMBOS = {"sampler_name", "scheduler", "type"}
FILE_COMBOS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name"}


@pytest.fixture(scope="module")
def parts():
    from engine.zoo.writer import tiny_components

    return {variant: tiny_components(variant).handles() for variant in ("dev", "schnell")}


@pytest.fixture(scope="module")
def encoded(parts):
    _, clip, _ = parts["dev"]
    return C.clip_text_encode(NodeContext(), "a red fox in the snow", clip)[0]


def _options(spec: list) -> list:
    head = spec[0]
    return list(head) if isinstance(head, list) else list(spec[1]["options"])


@pytest.mark.parametrize("name", FLUX_NODES)
def test_object_info_matches_comfyui(name, tmp_path):
    reference = object_info_reference()
    registry = NodeRegistry().discover("nodes")
    assert "nodes.flux" not in registry.failed, registry.failed.get("nodes.flux")
    ours = normalise(without_extensions(registry[name].object_info(FolderPaths(tmp_path))))
    expected = normalise(reference[name])
    for section, specs in expected["input"].items():
        for input_name, spec in specs.items():
            mine = ours["input"][section][input_name]
            if input_name in SUBSET_COMBOS:
                mine_options, their_options = _options(mine), _options(spec)
                if name not in ("CLIPLoader",):  # our single-file FLUX type has no ComfyUI counterpart
                    assert mine_options == [o for o in their_options if o in mine_options], input_name
                    assert set(mine_options) <= set(their_options), input_name
                ours["input"][section][input_name] = spec
            elif input_name in FILE_COMBOS:
                assert _options(mine) == [], input_name  # an empty models folder lists nothing
                ours["input"][section][input_name] = spec
    assert ours == expected


def test_combo_names_equal_the_implemented_samplers_and_schedulers():
    from engine.sampling.samplers import SAMPLER_NAMES
    from engine.sampling.schedules import SCHEDULER_NAMES

    assert common.SAMPLER_NAMES == SAMPLER_NAMES
    assert common.SCHEDULER_NAMES == SCHEDULER_NAMES
    from engine.models.flux1.transformer import WEIGHT_DTYPES

    assert LD.WEIGHT_DTYPES == WEIGHT_DTYPES


def test_file_combos_list_the_zoo_files():
    registry = NodeRegistry().discover("nodes")
    info = registry.object_info(FolderPaths(zoo_base()))
    assert "flux1-dev-tiny.safetensors" in info["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert "t5xxl-tiny.safetensors" in info["DualCLIPLoader"]["input"]["required"]["clip_name1"][0]
    assert "ae-tiny.safetensors" in info["VAELoader"]["input"]["required"]["vae_name"][0]
    assert "flux1-schnell-tiny-aio.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]


# ----- sizes

@pytest.mark.parametrize("width,height,problem", [
    (1000, 1024, "not a multiple of 16"), (4096, 2048, "megapixels"), (8, 64, "outside 16"), (2048, 2048, None),
    (1024, 576, None)])
def test_empty_sd3_latent_sizes_are_checked_at_validation(width, height, problem):
    runtime = make_runtime()
    checked = runtime.validate(txt2img_prompt(width=width, height=height))
    if problem is None:
        assert checked.ok, checked.node_errors
    else:
        assert not checked.ok
        errors = checked.node_errors["5"]["errors"]
        assert errors[0]["type"] == "custom_validation_failed" and problem in errors[0]["details"]


def test_empty_latent_nodes():
    assert LT.empty_sd3_latent_image(NodeContext(), 80, 48, 2)[0]["samples"].shape == (2, 16, 6, 10)
    assert LT.empty_latent_image(NodeContext(), 72, 56, 1)[0]["samples"].shape == (1, 4, 7, 9)
    with pytest.raises(ValueError, match="multiple of 16"):
        LT.empty_sd3_latent_image(NodeContext(), 72, 64, 1)


# ----- conditioning

def test_flux_guidance_and_zero_out_copy_rather_than_mutate(encoded):
    guided = C.flux_guidance(NodeContext(), encoded, 2.0)[0]
    assert guided[0][1]["guidance"] == 2.0 and "guidance" not in encoded[0][1]
    zeroed = C.conditioning_zero_out(NodeContext(), guided)[0]
    assert not zeroed[0][0].any() and not zeroed[0][1]["pooled_output"].any()
    assert zeroed[0][1]["guidance"] == 2.0 and guided[0][0].abs().sum() > 0


def test_clip_text_encode_flux_sends_each_prompt_to_its_encoder(parts, encoded):
    _, clip, _ = parts["dev"]
    both = C.clip_text_encode_flux(NodeContext(), clip, "a red fox in the snow", "a red fox in the snow", 4.0)[0]
    assert torch.equal(both[0][0], encoded[0][0]) and both[0][1]["guidance"] == 4.0
    other_t5 = C.clip_text_encode_flux(NodeContext(), clip, "a red fox in the snow", "a blue house", 4.0)[0]
    assert torch.equal(other_t5[0][1]["pooled_output"], encoded[0][1]["pooled_output"])
    assert not torch.equal(other_t5[0][0], encoded[0][0])
    assert encoded[0][0].shape[1] == 256  # T5 padded to 256 tokens


def test_text_encoding_errors_are_specific(parts):
    import dataclasses

    _, clip, _ = parts["dev"]
    with pytest.raises(ValueError, match="no T5-XXL"):
        C.clip_text_encode(NodeContext(), "x", dataclasses.replace(clip, t5=None))
    with pytest.raises(ValueError, match="clip input is None"):
        C.clip_text_encode(NodeContext(), "x", None)


# ----- sampling nodes

def _ksampler(model, positive, latent, **kw):
    args = dict(seed=3, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple", negative=positive, denoise=1.0)
    args.update(kw)
    return SN.ksampler(NodeContext(), model, positive=positive, latent_image=latent, **args)[0]


@pytest.mark.parametrize("sampler", common.SAMPLER_NAMES)
@pytest.mark.parametrize("scheduler", ["simple", "karras", "beta"])
def test_every_sampler_runs_the_model(parts, encoded, sampler, scheduler):
    model, _, _ = parts["schnell"]
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    out = _ksampler(model, encoded, latent, sampler_name=sampler, scheduler=scheduler, steps=3)["samples"]
    assert out.shape == (1, 16, 4, 4) and torch.isfinite(out).all() and out.abs().mean() > 0.01


def test_ksampler_advanced_in_two_halves_equals_one_run(parts, encoded):
    model, _, _ = parts["dev"]
    latent = {"samples": torch.zeros(1, 16, 4, 6)}
    whole = _ksampler(model, encoded, latent, steps=6)["samples"]
    common_args = dict(noise_seed=3, steps=6, cfg=1.0, sampler_name="euler", scheduler="simple",
                       positive=encoded, negative=encoded)
    first = SN.ksampler_advanced(NodeContext(), model, add_noise="enable", latent_image=latent, start_at_step=0,
                                 end_at_step=3, return_with_leftover_noise="enable", **common_args)[0]
    second = SN.ksampler_advanced(NodeContext(), model, add_noise="disable", latent_image=first,
                                  start_at_step=3, end_at_step=10000, return_with_leftover_noise="disable",
                                  **common_args)[0]
    assert torch.allclose(second["samples"], whole, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(first["samples"], whole, atol=1e-2)


def test_denoise_zero_returns_the_latent_and_partial_denoise_keeps_its_structure(parts, encoded):
    model, _, _ = parts["dev"]
    source = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_ksampler(model, encoded, {"samples": source}, denoise=0.0)["samples"], source)
    light = _ksampler(model, encoded, {"samples": source}, denoise=0.2)["samples"]
    full = _ksampler(model, encoded, {"samples": source}, denoise=1.0)["samples"]
    assert (light - source).abs().mean() < (full - source).abs().mean()


def test_custom_sampling_nodes_compose_like_ksampler(parts, encoded):
    model, _, _ = parts["dev"]
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    fixed = SN.model_sampling_flux(NodeContext(), model, 1.15, 0.5, 32, 32)[0]
    assert model.sampling.width is None and fixed.sampling.width == 32  # a new handle, same weights
    assert fixed.transformer is model.transformer
    expected = _ksampler(fixed, encoded, latent, cfg=2.0, negative=C.conditioning_zero_out(NodeContext(), encoded)[0])
    noise = SN.random_noise(NodeContext(), 3)[0]
    guider = SN.cfg_guider(NodeContext(), fixed, encoded, C.conditioning_zero_out(NodeContext(), encoded)[0], 2.0)[0]
    sampler = SN.ksampler_select(NodeContext(), "euler")[0]
    sigmas = SN.basic_scheduler(NodeContext(), fixed, "simple", 4, 1.0)[0]
    out, denoised = SN.sampler_custom_advanced(NodeContext(), noise, guider, sampler, sigmas, latent)
    assert torch.allclose(out["samples"], expected["samples"], atol=1e-6)
    assert torch.allclose(denoised["samples"], out["samples"], atol=1e-4)  # last x0 at sigma -> 0
    disabled = SN.disable_noise(NodeContext())[0]
    assert disabled.generate({}, (1, 2)).abs().sum() == 0


def test_progress_is_reported_per_step_and_interrupt_stops_sampling(parts, encoded):
    model, _, _ = parts["schnell"]
    calls = []
    ctx = NodeContext(on_progress=lambda node, value, total, preview: calls.append((value, total)))
    SN.ksampler(ctx, model, 1, 3, 1.0, "heun", "simple", encoded, encoded, {"samples": torch.zeros(1, 16, 2, 2)})
    assert calls == [(1, 3), (2, 3), (3, 3)]
    ctx = NodeContext()
    ctx.interrupt.set()
    with pytest.raises(Interrupted):
        SN.ksampler(ctx, model, 1, 3, 1.0, "euler", "simple", encoded, encoded, {"samples": torch.zeros(1, 16, 2, 2)})


def test_conditioning_entries_are_averaged_and_timestep_ranges_respected(parts, encoded):
    model, _, _ = parts["dev"]
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    single = _ksampler(model, encoded, latent)["samples"]
    doubled = _ksampler(model, encoded + encoded, latent)["samples"]
    assert torch.allclose(single, doubled, atol=1e-5)
    other = C.clip_text_encode(NodeContext(), "a blue house", parts["dev"][1])[0]
    early = [[encoded[0][0], {**encoded[0][1], "start_percent": 0.0, "end_percent": 0.5}],
             [other[0][0], {**other[0][1], "start_percent": 0.5, "end_percent": 1.0}]]
    mixed = _ksampler(model, early, latent)["samples"]
    assert not torch.allclose(mixed, single, atol=1e-3)
    assert not torch.allclose(mixed, _ksampler(model, other, latent)["samples"], atol=1e-3)


def test_sampling_errors_are_specific(parts, encoded):
    model, _, _ = parts["dev"]
    latent = {"samples": torch.zeros(1, 16, 4, 4)}
    with pytest.raises(ValueError, match="no pooled_output"):
        _ksampler(model, [[encoded[0][0], {}]], latent)
    with pytest.raises(ValueError, match="does not fit this FLUX model"):
        _ksampler(model, [[torch.zeros(1, 8, 7), encoded[0][1]]], latent)
    with pytest.raises(TypeError, match="not a FLUX diffusion model"):
        _ksampler(None, encoded, latent)
    with pytest.raises(ValueError, match="3 channels but this FLUX model expects 16"):
        _ksampler(model, encoded, {"samples": torch.ones(1, 3, 4, 4)})


def test_noise_mask_keeps_the_unmasked_area(parts, encoded):
    model, _, _ = parts["dev"]
    source = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 32, 32)
    mask[:, :, 16:] = 1.0
    out = _ksampler(model, encoded, {"samples": source, "noise_mask": mask})
    assert "noise_mask" in out
    assert torch.allclose(out["samples"][..., :2], source[..., :2], atol=1e-5)
    assert (out["samples"][..., 3:] - source[..., 3:]).abs().mean() > 0.05


# ----- latents and VAE

def test_empty_latent_image_with_sizes_not_multiple_of_16_samples_and_decodes(parts, encoded):
    model, _, vae = parts["dev"]
    latent = LT.empty_latent_image(NodeContext(), 72, 56, 1)[0]
    out = _ksampler(model, encoded, latent, steps=2)
    assert out["samples"].shape == (1, 16, 7, 9)
    assert LT.vae_decode(NodeContext(), out, vae)[0].shape == (1, 56, 72, 3)


def test_vae_encode_crops_to_multiples_of_8_and_decode_round_trips_shape(parts):
    _, _, vae = parts["dev"]
    image = torch.rand(2, 50, 70, 4)  # RGBA: alpha is dropped
    latent = LT.vae_encode(NodeContext(), image, vae)[0]
    assert latent["samples"].shape == (2, 16, 6, 8)
    assert torch.equal(LT.vae_encode(NodeContext(), image, vae)[0]["samples"], latent["samples"])  # the mode
    decoded = LT.vae_decode(NodeContext(), latent, vae)[0]
    assert decoded.shape == (2, 48, 64, 3) and decoded.min() >= 0 and decoded.max() <= 1


def test_tiled_decode_equals_plain_decode_when_one_tile_covers_the_image(parts):
    _, _, vae = parts["dev"]
    samples = {"samples": torch.randn(1, 16, 6, 8)}
    plain = LT.vae_decode(NodeContext(), samples, vae)[0]
    tiled = LT.vae_decode_tiled(NodeContext(), samples, vae, 64, 32, 64, 8)[0]
    assert torch.allclose(plain, tiled, atol=1e-6)


def test_tiled_blending_reassembles_a_local_decoder_exactly():
    from engine.memory.manager import MemoryManager
    from engine.sampling.vae import decode_tiled

    def local_decoder(z: torch.Tensor) -> torch.Tensor:  # each latent pixel -> an 8x8 block of its first 3 channels
        return torch.repeat_interleave(torch.repeat_interleave(z[:, :3], 8, dim=2), 8, dim=3).tanh()

    z = torch.randn(1, 16, 20, 28)
    tiled = decode_tiled(None, z, MemoryManager("cpu"), tile_size=64, overlap=16, decode_tile=local_decoder)
    expected = (local_decoder(z) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(tiled, expected, atol=1e-6)


def test_vae_rejects_latents_of_another_family(parts):
    _, _, vae = parts["dev"]
    with pytest.raises(ValueError, match="4 channels but this VAE decodes 16"):
        LT.vae_decode(NodeContext(), {"samples": torch.zeros(1, 4, 4, 4)}, vae)
    with pytest.raises(ValueError, match="has no VAE; load one with VAELoader"):
        LT.vae_decode(NodeContext(), {"samples": torch.zeros(1, 16, 4, 4)}, None)


# ----- loaders, through the executor over the zoo files

def test_checkpoint_loader_gives_the_same_image_as_separate_loaders():
    runtime = make_runtime()
    separate, _ = run_prompt(runtime, txt2img_prompt("schnell", guidance=None, steps=2))
    graph = txt2img_prompt("schnell", guidance=None, steps=2)
    graph["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-schnell-tiny-aio.safetensors"}}
    graph["6"]["inputs"]["clip"] = ["1", 1]
    graph["8"]["inputs"]["vae"] = ["1", 2]
    for unused in ("2", "3"):
        del graph[unused]
    combined, _ = run_prompt(runtime, graph)
    assert torch.allclose(separate, combined, atol=1e-5)  # same weights; layouts may sum in another order


def test_diffusers_folders_load_through_unet_and_clip_loaders():
    runtime = make_runtime()
    reference, _ = run_prompt(runtime, txt2img_prompt("dev", steps=2))
    folders = runtime.folders
    folders.add_model_dir("diffusion_models", folders.models_dir / "diffusers")
    folders.add_model_dir("text_encoders", folders.models_dir / "diffusers")
    graph = txt2img_prompt("dev", steps=2)
    graph["1"]["inputs"]["unet_name"] = "flux1-dev-tiny"
    graph["2"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "flux1-dev-tiny", "type": "flux",
                                                          "device": "cpu"}}
    from_folders, _ = run_prompt(runtime, graph)
    assert torch.allclose(reference, from_folders, atol=1e-5)


def test_loaders_report_missing_files_and_folders():
    runtime = make_runtime()
    checked = runtime.validate(txt2img_prompt("dev") | {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "nope.safetensors", "weight_dtype": "default"}}})
    assert not checked.ok and checked.node_errors["1"]["errors"][0]["type"] == "value_not_in_list"
    with pytest.raises(RuntimeError, match="folder layout"):
        LD.vae_loader(NodeContext(), "ae-tiny.safetensors")
