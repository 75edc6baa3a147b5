"""Model loading: every file layout gives identical tensors; bad files fail with errors naming the file."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest
import torch

from engine.models.flux1.checkpoint import load_flux_checkpoint
from engine.models.common.detect import detect_components, detect_flux_variant
from engine.core.extra_model_paths import ExtraModelPathsError, load_extra_model_paths
from engine.models.flux1.keys import (bfl_shapes_to_diffusers, diffusers_to_bfl,
                                     infer_diffusers_config)
from engine.models.flux1.transformer import load_flux_transformer, shipped_config_if_matching
from engine.models.common.safetensors_io import ModelFileError, key_prefixes, open_safetensors, save_safetensors
from engine.models.flux1.text_encoders import load_flux_text_encoders, load_text_encoders_folder
from engine.zoo.flux1_tiny import tiny_components
from tests.support.flux import zoo_base
from tests.support.quantized import dequantize_scaled_fp8
from engine.models.common.tokenizer_files import TokenizerMissingError
from engine.models.flux1.tokenizer_files import find_tokenizer
from engine.models.flux1.vae import load_flux_vae


@pytest.fixture(scope="module")
def models() -> Path:
    return zoo_base() / "models"  # the tiny zoo written once per process (read only here)


@pytest.fixture(scope="module")
def ref():
    return tiny_components("dev")


def assert_same_weights(module, reference) -> None:
    got, want = module.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def _rewrite(src: Path, dst: Path, transform) -> Path:
    sf = open_safetensors(src)
    return save_safetensors(transform(sf.load()), dst, sf.metadata)


# ----- every layout, identical tensors
def test_transformer_layouts_load_identically(models: Path, ref, tmp_path: Path) -> None:
    bfl = models / "diffusion_models/flux1-dev-tiny.safetensors"
    comfy = _rewrite(bfl, tmp_path / "comfy.safetensors", lambda s: {"model.diffusion_model." + k: v
                                                                       for k, v in s.items()})
    diffusers_file = models / "diffusers/flux1-dev-tiny/transformer/diffusion_pytorch_model.safetensors"
    sources = [bfl, comfy, models / "checkpoints/flux1-dev-tiny-aio.safetensors", models / "diffusers/flux1-dev-tiny",
               models / "diffusers/flux1-dev-tiny/transformer", diffusers_file]
    for source in sources:
        handle = load_flux_transformer(source)
        assert handle.variant == "dev" and handle.guidance_embeds, source
        assert handle.sampling.use_dynamic_shifting
        assert_same_weights(handle.transformer, ref.transformer)
    schnell = load_flux_transformer(models / "diffusion_models/flux1-schnell-tiny.safetensors")
    assert schnell.variant == "schnell" and not schnell.guidance_embeds
    assert not schnell.sampling.use_dynamic_shifting and schnell.sampling.shift == 1.0
    assert_same_weights(schnell.transformer, tiny_components("schnell").transformer)


def test_text_encoder_layouts_load_identically(models: Path, ref, tmp_path: Path) -> None:
    roots = [models / "tokenizers"]
    clip_file = models / "text_encoders/clip_l-tiny.safetensors"
    t5_file = models / "text_encoders/t5xxl-tiny.safetensors"
    # Variants real files come in: CLIP without the `text_model.` prefix, T5 with the tied table twice.
    bare_clip = _rewrite(clip_file, tmp_path / "clip_bare.safetensors",
                         lambda s: {k.removeprefix("text_model."): v for k, v in s.items()})
    tied_t5 = _rewrite(t5_file, tmp_path / "t5_tied.safetensors",
                       lambda s: {**s, "encoder.embed_tokens.weight": s["shared.weight"]})
    handles = [load_flux_text_encoders([clip_file, t5_file], roots),
               load_flux_text_encoders([t5_file, clip_file], roots),  # DualCLIPLoader: either order
               load_flux_text_encoders([bare_clip, tied_t5], roots),
               load_flux_checkpoint(models / "checkpoints/flux1-dev-tiny-aio.safetensors", roots)[1],
               load_text_encoders_folder(models / "diffusers/flux1-dev-tiny"),
               # transformers folders, one per encoder, as DualCLIPLoader may list them (tokenizers: siblings)
               load_flux_text_encoders([models / "diffusers/flux1-dev-tiny/text_encoder_2",
                                        models / "diffusers/flux1-dev-tiny/text_encoder"])]
    for handle in handles:
        assert_same_weights(handle.clip, ref.text_encoder)
        assert_same_weights(handle.t5, ref.text_encoder_2)
        assert handle.t5.encoder.embed_tokens.weight is handle.t5.shared.weight
        assert handle.clip_tokenizer("a cat").input_ids == ref.tokenizer("a cat").input_ids
        assert handle.t5_tokenizer("a cat").input_ids == ref.tokenizer_2("a cat").input_ids
    ids = ref.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(handles[2].clip(ids).pooler_output, ref.text_encoder(ids).pooler_output)
    with pytest.raises(ModelFileError, match="both files hold a clip_l"):
        load_flux_text_encoders([clip_file, bare_clip], roots)


def test_vae_layouts_load_identically(models: Path, ref) -> None:
    sources = [models / "vae/ae-tiny.safetensors", models / "diffusers/flux1-dev-tiny",
               models / "diffusers/flux1-dev-tiny/vae/diffusion_pytorch_model.safetensors"]
    handles = [load_flux_vae(s) for s in sources]
    handles.append(load_flux_checkpoint(models / "checkpoints/flux1-dev-tiny-aio.safetensors",
                                        [models / "tokenizers"])[2])
    for handle in handles:
        assert (handle.scaling_factor, handle.shift_factor) == (0.3611, 0.1159)
        assert_same_weights(handle.vae, ref.vae)


def test_checkpoint_without_encoders_returns_none_for_them(models: Path, tmp_path: Path) -> None:
    only_model = _rewrite(models / "checkpoints/flux1-dev-tiny-aio.safetensors", tmp_path / "model_only.safetensors",
                          lambda s: {k: v for k, v in s.items() if k.startswith("model.diffusion_model.")})
    model, encoders, vae = load_flux_checkpoint(only_model)
    assert model.variant == "dev" and encoders is None and vae is None


# ----- detection
def test_detects_layouts_and_prefixes(models: Path) -> None:
    def fmt(rel: str) -> tuple[str, dict[str, str]]:
        contents = detect_components(open_safetensors(models / rel))
        return contents.format, {k: c.prefix for k, c in contents.components.items()}

    assert fmt("diffusion_models/flux1-dev-tiny.safetensors") == ("bfl", {"transformer": ""})
    assert fmt("checkpoints/flux1-dev-tiny-aio.safetensors") == ("checkpoint", {
        "transformer": "model.diffusion_model.", "clip_l": "text_encoders.clip_l.transformer.",
        "t5xxl": "text_encoders.t5xxl.transformer.", "vae": "vae."})
    assert fmt("vae/ae-tiny.safetensors") == ("vae", {"vae": ""})
    assert fmt("text_encoders/t5xxl-tiny.safetensors") == ("t5xxl", {"t5xxl": ""})
    aio = open_safetensors(models / "checkpoints/flux1-dev-tiny-aio.safetensors")
    assert set(key_prefixes(aio.keys(), depth=2)) == {"model.diffusion_model.", "text_encoders.clip_l.",
                                                       "text_encoders.t5xxl.", "vae.encoder.", "vae.decoder."}


def test_variant_rules(models: Path, tmp_path: Path) -> None:
    shapes = {"x_embedder.weight": (64, 64), "time_text_embed.guidance_embedder.linear_1.weight": (64, 256)}
    assert detect_flux_variant(shapes) == "dev"
    assert detect_flux_variant({"x_embedder.weight": (64, 64)}) == "schnell"
    assert detect_flux_variant({**shapes, "x_embedder.weight": (64, 384)}) == "fill"
    assert detect_flux_variant(shapes, name_hint="flux1-Kontext-dev.safetensors") == "kontext"
    assert detect_flux_variant(shapes, metadata={"modelspec.title": "FLUX.1 Kontext [dev]"}) == "kontext"
    assert detect_flux_variant({**shapes, "x_embedder.weight": (64, 128)}, source="x.safetensors") == "control"
    with pytest.raises(ModelFileError, match="128 for Depth/Canny"):
        detect_flux_variant({**shapes, "x_embedder.weight": (64, 96)}, source="x.safetensors")
    # A file named like Kontext loads as kontext, with dev's shapes.
    kontext = _rewrite(models / "diffusion_models/flux1-dev-tiny.safetensors",
                       tmp_path / "flux1-kontext-dev-tiny.safetensors", dict)
    assert load_flux_transformer(kontext).variant == "kontext"


def test_fill_and_other_sizes_are_inferred_from_shapes(tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    from engine.zoo.flux1_tiny import seeded_init_

    model = seeded_init_(FluxTransformer2DModel(in_channels=384, out_channels=64, num_layers=3, num_single_layers=1,
                                                attention_head_dim=64, num_attention_heads=3, joint_attention_dim=24,
                                                pooled_projection_dim=40, guidance_embeds=True,
                                                axes_dims_rope=(8, 28, 28)), seed=7)
    path = save_safetensors(diffusers_to_bfl(model.state_dict()), tmp_path / "fill.safetensors")
    handle = load_flux_transformer(path)
    config = handle.transformer.config
    assert handle.variant == "fill"
    assert (config.in_channels, config.out_channels, config.num_layers, config.num_single_layers) == (384, 64, 3, 1)
    assert (config.attention_head_dim, config.num_attention_heads) == (64, 3)
    assert (config.joint_attention_dim, config.pooled_projection_dim) == (24, 40)
    assert list(config.axes_dims_rope) == [8, 28, 28]
    assert_same_weights(handle.transformer, model)


def test_full_size_shapes_select_the_shipped_config() -> None:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        full = FluxTransformer2DModel(num_layers=19, num_single_layers=38, guidance_embeds=True)
    bfl_shapes = {k: tuple(v.shape) for k, v in diffusers_to_bfl(full.state_dict()).items()}
    inferred = infer_diffusers_config(bfl_shapes_to_diffusers(bfl_shapes))
    assert (inferred["num_attention_heads"], inferred["attention_head_dim"]) == (24, 128)
    assert inferred["axes_dims_rope"] == [16, 56, 56]
    chosen = shipped_config_if_matching(inferred, "dev")
    assert chosen["_class_name"] == "FluxTransformer2DModel" and chosen["out_channels"] is None  # shipped file


def test_bfl_converter_matches_diffusers_own_at_full_width() -> None:
    """diffusers' converter only handles the full 3072 width; at that width ours must agree with it exactly.
    Uninitialised uint8 tensors keep this cheap: views are compared by storage position, copies by value."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from engine.models.flux1.keys import bfl_to_diffusers

    with torch.device("meta"):
        full = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    bfl = {k: torch.empty(v.shape, dtype=torch.uint8) for k, v in diffusers_to_bfl(full.state_dict()).items()}
    ours, theirs = bfl_to_diffusers(dict(bfl)), convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert ours.keys() == theirs.keys() == full.state_dict().keys()
    for key, value in ours.items():
        other = theirs[key]
        assert value.shape == other.shape, key
        same_view = value.data_ptr() == other.data_ptr() and value.stride() == other.stride()
        assert same_view or torch.equal(value, other), key


def test_vae_converter_matches_diffusers_ldm_converter(ref) -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from engine.models.common.vae_keys import bfl_vae_to_diffusers, diffusers_vae_to_bfl

    bfl = diffusers_vae_to_bfl(ref.vae.state_dict())
    assert "decoder.up.3.upsample.conv.weight" in bfl and bfl["encoder.mid.attn_1.q.weight"].ndim == 4
    ours, theirs = bfl_vae_to_diffusers(dict(bfl)), convert_ldm_vae_checkpoint(dict(bfl), dict(ref.vae.config))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# ----- dtypes
def test_fp8_weight_dtype_stores_blocks_in_fp8_and_runs_on_cpu(models: Path, ref) -> None:
    handle = load_flux_transformer(models / "diffusion_models/flux1-dev-tiny.safetensors", weight_dtype="fp8_e4m3fn")
    model = handle.transformer
    assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert model.single_transformer_blocks[0].proj_out.weight.dtype == torch.float8_e4m3fn
    assert model.x_embedder.weight.dtype == torch.float32 and model.dtype == torch.float32
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=gen),
                  encoder_hidden_states=torch.randn(1, 8, 48, generator=gen),
                  pooled_projections=torch.randn(1, 128, generator=gen), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))
    with torch.no_grad():
        got, want = model(**inputs).sample, ref.transformer(**inputs).sample
    assert torch.isfinite(got).all()
    assert (got - want).abs().mean() < 0.25 * want.abs().mean()  # fp8 rounding, not a different model
    with pytest.raises(ValueError, match="weight_dtype"):
        load_flux_transformer(models / "diffusion_models/flux1-dev-tiny.safetensors", weight_dtype="int4")


def test_scaled_fp8_is_dequantised() -> None:
    weight = torch.randn(4, 4)
    scale = torch.tensor(0.5)
    packed = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
              "layer.weight": (weight / scale).to(torch.float8_e4m3fn), "layer.scale_weight": scale,
              "norm.weight": torch.ones(4)}
    out = dequantize_scaled_fp8(packed, torch.float32)
    assert set(out) == {"layer.weight", "norm.weight"}
    assert torch.allclose(out["layer.weight"], weight, rtol=0.15, atol=0.02)


def test_comfyui_scaled_fp8_transformer_loads(models: Path, ref, tmp_path: Path) -> None:
    def quantise(state):
        out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
        for key, value in state.items():
            if key.endswith(".weight") and value.ndim == 2 and "blocks." in key:
                scale = value.abs().max() / 448
                out[key] = (value / scale).to(torch.float8_e4m3fn)
                out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(1)
            else:
                out[key] = value
        return {"model.diffusion_model." + k: v for k, v in out.items()}

    path = _rewrite(models / "diffusion_models/flux1-dev-tiny.safetensors", tmp_path / "fp8_scaled.safetensors",
                    quantise)
    model = load_flux_transformer(path).transformer
    assert model.dtype == torch.float32
    layer = model.transformer_blocks[0].attn.to_k
    assert layer.weight.dtype == torch.float8_e4m3fn  # kept as stored, scaled per layer when it runs
    got = layer.dequantized_weight(torch.float32)
    want = ref.transformer.transformer_blocks[0].attn.to_k.weight
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_safetensors_writer_round_trips_with_the_library(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tensors = {"b": torch.randn(3, 2).to(torch.bfloat16), "a": torch.arange(5), "f8": torch.randn(4).to(
        torch.float8_e4m3fn), "empty": torch.empty(0, 3)}
    path = save_safetensors(tensors, tmp_path / "x.safetensors", {"z": "1", "a": "2"})
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[k].float(), tensors[k].float()) for k in tensors)
    assert open_safetensors(path).metadata == {"a": "2", "z": "1"}


# ----- clear errors, naming the file
def test_corrupt_truncated_and_foreign_files_are_refused(models: Path, tmp_path: Path) -> None:
    good = (models / "vae/ae-tiny.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    html = tmp_path / "error_page.safetensors"
    html.write_bytes(b"<html><body>404 not found</body></html>" * 4)
    pickle_file = tmp_path / "model.ckpt"
    pickle_file.write_bytes(b"\x80\x04" + b"\0" * 64)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    cases = [(truncated, "truncated"), (garbage, "not a safetensors file"), (html, "looks like text"),
             (pickle_file, "pickle-based"), (short, "only 3 bytes"), (tmp_path / "absent.safetensors", "not found")]
    for path, message in cases:
        for loader in (load_flux_vae, load_flux_transformer):
            with pytest.raises(ModelFileError, match=message) as info:
                loader(path)
            assert str(path) in str(info.value)


def test_wrong_architecture_in_the_wrong_loader(models: Path, tmp_path: Path) -> None:
    ae = models / "vae/ae-tiny.safetensors"
    transformer = models / "diffusion_models/flux1-dev-tiny.safetensors"
    clip = models / "text_encoders/clip_l-tiny.safetensors"
    with pytest.raises(ModelFileError, match="holds a VAE .*VAELoader") as info:
        load_flux_transformer(ae)
    assert str(ae) in str(info.value)
    with pytest.raises(ModelFileError, match="expected a VAE.*holds a FLUX diffusion transformer.*UNETLoader"):
        load_flux_vae(transformer)
    with pytest.raises(ModelFileError, match="expected a CLIP-L or T5-XXL text encoder, but the file holds a VAE"):
        load_flux_text_encoders([ae])
    with pytest.raises(ModelFileError, match="expected a VAE"):
        load_flux_vae(clip)
    unrelated = save_safetensors({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelFileError, match="no FLUX.1 component was recognised"):
        load_flux_transformer(unrelated)
    sd_vae = tiny_components("dev").vae.state_dict()
    from engine.models.common.vae_keys import diffusers_vae_to_bfl

    four = {k: v for k, v in diffusers_vae_to_bfl(sd_vae).items()}
    four["decoder.conv_in.weight"] = four["decoder.conv_in.weight"][:, :4]
    four["encoder.conv_out.weight"] = four["encoder.conv_out.weight"][:8]
    four["encoder.conv_out.bias"] = four["encoder.conv_out.bias"][:8]
    path = save_safetensors(four, tmp_path / "sdxl_vae.safetensors")
    with pytest.raises(ModelFileError, match="4 latent channels; FLUX.1 needs 16"):
        load_flux_vae(path)


def test_missing_tensor_is_named(models: Path, tmp_path: Path) -> None:
    broken = _rewrite(models / "diffusion_models/flux1-dev-tiny.safetensors", tmp_path / "broken.safetensors",
                      lambda s: {k: v for k, v in s.items() if k != "double_blocks.1.img_mlp.2.bias"})
    with pytest.raises(ModelFileError, match=r"missing.*transformer_blocks\.1\.ff\.net\.2\.bias") as info:
        load_flux_transformer(broken)
    assert str(broken) in str(info.value)


def test_missing_or_mismatched_tokenizer_says_what_and_where(models: Path, tmp_path: Path) -> None:
    import shutil

    clip_file = models / "text_encoders/clip_l-tiny.safetensors"
    root = tmp_path / "models" / "tokenizers"
    with pytest.raises(TokenizerMissingError) as info:
        load_flux_text_encoders([clip_file], [root])
    text = str(info.value)
    assert str(clip_file) in text and str(root / "clip_l") in text and "merges.txt" in text
    # The tiny T5 tokenizer, even placed where the real one belongs, is never paired with real-size weights.
    shutil.copytree(models / "tokenizers/t5xxl-tiny", root / "t5xxl")
    with pytest.raises(TokenizerMissingError, match=r"spiece\.model.*not matching the vocabulary size: .*t5xxl"):
        find_tokenizer("t5xxl", 32128, "t5xxl_fp16.safetensors", [root])


def test_clip_tokenizer_from_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.zoo.tokenizers import train_clip_vocab

    _, merges = train_clip_vocab()
    package = tmp_path / "site" / "open_clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    with gzip.open(package / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("open_clip", None)
    vocab_rows = 512 + len(merges) + 2
    tokenizer = find_tokenizer("clip_l", vocab_rows, "clip_l.safetensors", [tmp_path / "no_tokenizers"])
    assert len(tokenizer) == vocab_rows and tokenizer.eos_token_id == vocab_rows - 1
    ids = tokenizer("a photo of a cat").input_ids
    assert ids[0] == vocab_rows - 2 and ids[-1] == vocab_rows - 1 and len(ids) < 10


# ----- extra_model_paths.yaml
class _Folders:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Path, bool]] = []

    def add_model_dir(self, key: str, path: Path, first: bool = False) -> None:
        self.calls.insert(0, (key, Path(path), first)) if first else self.calls.append((key, Path(path), first))


def test_extra_model_paths_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARED_MODELS", str(tmp_path / "shared"))
    config = tmp_path / "conf" / "extra_model_paths.yaml"
    config.parent.mkdir()
    config.write_text(
        "a111:\n  base_path: ../webui\n  checkpoints: models/Stable-diffusion\n"
        "  loras: |\n    models/Lora\n    models/LyCORIS\n"
        "shared:\n  base_path: $SHARED_MODELS\n  is_default: true\n  unet: flux\n  clip: te\n"
        "empty:\n")
    folders = _Folders()
    added = load_extra_model_paths(config, folders)
    webui = (tmp_path / "webui").resolve()
    assert (("checkpoints", webui / "models/Stable-diffusion") in added and ("loras", webui / "models/LyCORIS")
            in added)
    assert folders.calls[:2] == [("unet", (tmp_path / "shared/flux").resolve(), True),
                                 ("clip", (tmp_path / "shared/te").resolve(), True)]
    assert [c[0] for c in folders.calls[2:]] == ["checkpoints", "loras", "loras"]

    from engine.core.folders import FolderPaths

    real = FolderPaths(tmp_path)
    load_extra_model_paths(config, real)
    assert (tmp_path / "shared/flux").resolve() in real.model_dirs("diffusion_models")

    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    with pytest.raises(ExtraModelPathsError, match="bad.yaml: invalid YAML"):
        load_extra_model_paths(bad, folders)
    bad.write_text("a:\n  checkpoints:\n    nested: 1\n")
    with pytest.raises(ExtraModelPathsError, match="section 'a', key 'checkpoints'"):
        load_extra_model_paths(bad, folders)
