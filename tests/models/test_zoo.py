"""The tiny zoo: deterministic bytes, real layouts, tokenizers, prepare_models, and sensitivity of the models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from engine.zoo import writer as zoo
from engine.zoo.flux1_tiny import tiny_components


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("zoo") / "models"
    zoo.write_tiny_zoo(models, seed=0)
    return models


def test_zoo_has_every_layout_with_tiny_names(zoo_dir: Path) -> None:
    manifest = json.loads((zoo_dir / zoo.MANIFEST).read_text())
    files = set(manifest["files"])
    for variant in ("dev", "schnell"):
        assert f"diffusion_models/flux1-{variant}-tiny.safetensors" in files
        assert f"checkpoints/flux1-{variant}-tiny-aio.safetensors" in files
        assert f"diffusers/flux1-{variant}-tiny/model_index.json" in files
        assert f"diffusers/flux1-{variant}-tiny/transformer/diffusion_pytorch_model.safetensors" in files
    for name in ("text_encoders/clip_l-tiny.safetensors", "text_encoders/t5xxl-tiny.safetensors",
                 "vae/ae-tiny.safetensors", "tokenizers/clip_l-tiny/tokenizer.json",
                 "tokenizers/t5xxl-tiny/tokenizer.json"):
        assert name in files
    assert all("tiny" in name for name in files)
    assert not any(name.endswith((".bin", ".pt", ".ckpt", ".pth")) for name in files)  # safetensors only
    assert manifest["files"] == {k: v for k, v in _hashes(zoo_dir).items() if k != zoo.MANIFEST}


def test_same_seed_gives_same_bytes_other_seed_differs(zoo_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert zoo.write_tiny_zoo(again, seed=0) == json.loads((zoo_dir / zoo.MANIFEST).read_text())["files"]
    assert _hashes(again) == _hashes(zoo_dir)
    other = zoo.write_tiny_zoo(tmp_path / "other", seed=1)
    first = json.loads((zoo_dir / zoo.MANIFEST).read_text())["files"]
    for name in ("diffusion_models/flux1-dev-tiny.safetensors", "vae/ae-tiny.safetensors",
                 "text_encoders/t5xxl-tiny.safetensors"):
        assert other[name] != first[name]


def test_tiny_components_are_deterministic_and_variant_shaped() -> None:
    dev, dev_again, schnell = tiny_components("dev"), tiny_components("dev"), tiny_components("schnell")
    for a, b in ((dev.transformer, dev_again.transformer), (dev.vae, dev_again.vae), (dev.text_encoder_2,
                                                                                     dev_again.text_encoder_2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert dev.transformer.config.guidance_embeds and not schnell.transformer.config.guidance_embeds
    assert dev.transformer.config.joint_attention_dim == dev.text_encoder_2.config.d_model
    assert dev.transformer.config.pooled_projection_dim == dev.text_encoder.config.hidden_size
    assert dev.vae.config.latent_channels == 16 and dev.vae.config.scaling_factor == pytest.approx(0.3611)
    model, encoders, vae = dev.handles()
    assert (model.variant, model.guidance_embeds, encoders.t5_max_length) == ("dev", True, 512)
    assert vae.vae is dev.vae and encoders.clip_tokenizer is dev.tokenizer
    model, encoders, _ = schnell.handles()
    assert (model.variant, model.sampling.use_dynamic_shifting, encoders.t5_max_length) == ("schnell", False, 256)
    with pytest.raises(ValueError, match="not one of"):
        tiny_components("pro")


def test_tokenizers_behave_like_the_real_ones() -> None:
    parts = tiny_components("dev")
    clip = parts.tokenizer("A photo of a cat", padding="max_length", max_length=77, truncation=True)
    ids = clip.input_ids
    assert len(ids) == 77 and ids[0] == parts.tokenizer.bos_token_id
    assert parts.tokenizer.eos_token_id == len(parts.tokenizer) - 1  # argmax pooling finds the first eos
    assert ids.index(parts.tokenizer.eos_token_id) < 10 and set(ids[10:]) == {parts.tokenizer.eos_token_id}
    t5 = parts.tokenizer_2("a photo of a cat", padding="max_length", max_length=16).input_ids
    assert (parts.tokenizer_2.pad_token_id, parts.tokenizer_2.eos_token_id) == (0, 1)
    assert t5[-1] == 0 and 1 in t5 and parts.tokenizer_2.unk_token_id not in t5
    assert parts.tokenizer("a dog").input_ids != parts.tokenizer("a cat").input_ids


def test_prepare_models_writes_once_and_respects_real_weights(tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = zoo.prepare_models(models)
    assert "written" in first["flux"] and zoo.zoo_is_complete(models)
    assert "already present" in zoo.prepare_models(models)["flux"]

    real = tmp_path / "real" / "models"
    (real / "unet").mkdir(parents=True)
    (real / "unet" / "flux1-dev.safetensors").write_bytes(b"\0" * 16)
    report = zoo.prepare_models(real)
    assert "real weights present" in report["flux"] and "unet/flux1-dev.safetensors" in report["flux"]
    assert not (real / "diffusion_models").exists()


def _pipeline_image(parts, prompt="a photo of a cat", seed=0, guidance=3.5):
    from diffusers import FluxPipeline

    pipe = FluxPipeline(**parts.pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, height=64, width=48, num_inference_steps=2, guidance_scale=guidance,
               generator=torch.Generator().manual_seed(seed), output_type="pt", max_sequence_length=32)
    return out.images


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_tiny_models_react_to_prompt_seed_and_guidance(variant: str) -> None:
    parts = tiny_components(variant)
    base = _pipeline_image(parts)
    assert (base - _pipeline_image(parts, prompt="a red car in the snow")).abs().mean() >= 0.01
    assert (base - _pipeline_image(parts, seed=1)).abs().mean() >= 0.01
    if variant == "dev":
        assert (base - _pipeline_image(parts, guidance=1.0)).abs().mean() >= 0.01
    assert 0.05 < base.std() and base.min() >= 0 and base.max() <= 1
