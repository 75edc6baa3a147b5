"""Live sampling previews: latent2rgb for both latent formats, TAESD-style decoders from models/vae_approx,
method resolution, and the FLUX.1 / FLUX.2 samplers reporting one preview per step."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.backends.worker_common import encode_preview, run_preview_method
from engine.core.folders import FolderPaths
from engine.models.common.safetensors_io import ModelFileError
from engine.models.common.vae_approx import find_tiny_decoder, load_tiny_decoder
from engine.sampling.previews import (FLUX1_RGB_BIAS, FLUX1_RGB_FACTORS, FLUX2_RGB_BIAS, FLUX2_RGB_FACTORS,
                                      LatentPreview, latent2rgb, resolve_method, unpack_flux2)
from engine.zoo.vae_approx import tiny_decoder_state, write_tiny_decoders

SMALL = {"width": 8, "blocks": (1, 1, 1, 1)}


def _byte(value: float) -> int:
    return int(min(max((value + 1.0) / 2.0, 0.0), 1.0) * 255.0)


@pytest.fixture
def decoders(tmp_path):
    write_tiny_decoders(tmp_path / "models", **SMALL)
    return FolderPaths(tmp_path)


@pytest.mark.parametrize("channel", [0, 9, 15])
def test_flux1_latent2rgb_is_the_published_linear_map(channel):
    latent = torch.zeros(1, 16, 3, 5)
    latent[0, channel] = 2.0
    pixels = latent2rgb(latent, "flux1")
    assert pixels.shape == (3, 5, 3) and pixels.dtype == torch.uint8
    expected = [_byte(2.0 * FLUX1_RGB_FACTORS[channel][c] + FLUX1_RGB_BIAS[c]) for c in range(3)]
    assert pixels[1, 2].tolist() == pytest.approx(expected, abs=1)


def test_flux2_latent2rgb_unpacks_the_2x2_patches_first():
    latent = torch.zeros(1, 128, 2, 3)
    channel, dy, dx = 3, 1, 0
    latent[0, channel * 4 + dy * 2 + dx, 1, 2] = 1.5  # one sub-pixel of one patch of channel 3
    unpacked = unpack_flux2(latent)
    assert unpacked.shape == (1, 32, 4, 6)
    assert torch.nonzero(unpacked).tolist() == [[0, channel, 2 + dy, 4 + dx]]
    pixels = latent2rgb(latent, "flux2")
    assert pixels.shape == (4, 6, 3)
    assert pixels[3, 4].tolist() == pytest.approx(
        [_byte(1.5 * FLUX2_RGB_FACTORS[channel][c] + FLUX2_RGB_BIAS[c]) for c in range(3)], abs=1)
    assert pixels[0, 0].tolist() == pytest.approx([_byte(b) for b in FLUX2_RGB_BIAS], abs=1)


def test_latent2rgb_refuses_the_wrong_channel_count():
    with pytest.raises(ValueError, match="16 latent channels"):
        latent2rgb(torch.zeros(1, 4, 2, 2), "flux1")


def test_the_zoo_decoder_loads_into_autoencoder_tiny_with_the_same_weights(decoders, tmp_path):
    from diffusers import AutoencoderTiny

    path = find_tiny_decoder(decoders, "flux1")
    assert path is not None and path.name == "taef1_decoder.safetensors"
    assert find_tiny_decoder(decoders, "flux2").name == "taef2_decoder.safetensors"
    loaded = load_tiny_decoder(path)
    assert loaded is load_tiny_decoder(path)  # cached while the file is unchanged
    reference = AutoencoderTiny(latent_channels=16, decoder_block_out_channels=(8,) * 4, num_decoder_blocks=(1,) * 4,
                                encoder_block_out_channels=(8,) * 4, num_encoder_blocks=(1,) * 4)
    state = tiny_decoder_state(16, seed=0, **SMALL)
    reference.decoder.layers.load_state_dict({f"{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v
                                              for k, v in state.items()})
    latent = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.decode(latent).sample, reference.eval().decode(latent).sample)


def test_a_pickle_decoder_is_refused_by_name(tmp_path):
    folder = tmp_path / "models" / "vae_approx"
    folder.mkdir(parents=True)
    (folder / "taef1_decoder.pth").write_bytes(b"\x80\x04junk")
    folders = FolderPaths(tmp_path)
    with pytest.raises(ModelFileError, match="taef1_decoder.pth.*pickle"):
        load_tiny_decoder(find_tiny_decoder(folders, "flux1"))


def test_methods_resolve_as_comfyui_does(decoders, tmp_path, caplog):
    assert resolve_method("auto", decoders, "flux1") == "taesd"
    assert resolve_method("auto", decoders, "flux2") == "taesd"
    empty = FolderPaths(tmp_path / "empty")
    assert resolve_method("auto", empty, "flux1") == "latent2rgb"
    with caplog.at_level(logging.WARNING, logger="engine.sampling.previews"):
        assert resolve_method("taesd", empty, "flux2") == "latent2rgb"
    assert "taef2" in caplog.text
    assert resolve_method("latent2rgb", decoders, "flux1") == "latent2rgb"
    assert run_preview_method({"preview_method": "taesd"}, "auto") == "taesd"
    assert run_preview_method({"preview_method": "default"}, "none") == "none"  # ComfyUI's "use the server's"
    assert run_preview_method({}, "latent2rgb") == "latent2rgb"


@pytest.mark.parametrize("family,channels,scale", [("flux1", 16, 8), ("flux2", 128, 16)])
def test_taesd_previews_decode_to_pixels_fitted_to_the_preview_size(decoders, family, channels, scale):
    latent = torch.randn(1, channels, 12, 8)
    picture = LatentPreview(latent, family).render("taesd", decoders, max_size=512)
    assert picture.size == (8 * scale, 12 * scale)  # small enough: decoded at full size
    fitted = LatentPreview(latent, family).render("auto", decoders, max_size=48)
    assert max(fitted.size) <= 48 and fitted.size[0] < fitted.size[1]  # the latent was shrunk before decoding
    small = LatentPreview(latent, family).render("latent2rgb", decoders)
    assert small.size == (8 * scale // 8, 12 * scale // 8)
    assert LatentPreview(latent, family).render("none", decoders) is None
    jpeg, kind = encode_preview(LatentPreview(latent, family), 32, "taesd", decoders)
    assert kind == "JPEG" and jpeg[:2] == b"\xff\xd8"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux1", "flux2"])
def test_the_samplers_report_one_preview_per_step(family):
    from tests.support.flux import make_runtime, txt2img_prompt
    from tests.support.flux2 import flux2_graph

    steps = 3
    if family == "flux1":
        prompt, sampler_node = txt2img_prompt("schnell", width=32, height=48, steps=steps, guidance=None), "9"
    else:
        prompt, sampler_node = flux2_graph("klein", width=32, height=48, steps=steps), "11"
    runtime = make_runtime()
    checked = runtime.validate(prompt)
    assert checked.ok, checked.node_errors
    previews: list = []
    result = runtime.executor.execute(checked.prompt, prompt_id="p", on_preview=lambda *a: previews.append(a))
    assert result.status == "success", result.errors
    assert [(p, n) for p, n, _ in previews] == [("p", sampler_node)] * steps
    for _, _, preview in previews:
        assert isinstance(preview, LatentPreview) and preview.family == family
        assert preview.render("latent2rgb").size == (4, 6)  # 32x48 pixels at 1/8
