"""Mask2Former loading and the segmentation pipeline, against transformers' own processor + model + post-processing
on the tiny random Mask2Former-Swin of the real architecture."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from engine.models.segmentation import pipeline
from engine.models.segmentation.mask2former import (Preprocessing, SegmenterLoadError, load_segmenter,
                                       shipped_configs)
from engine.zoo.segmentation import write_tiny_segmenter


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random colour field (uint8 H×W×3): regions large enough for the tiny model to label."""
    rng = np.random.default_rng(seed)
    base = (rng.random((height // 16 + 2, width // 16 + 2, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR))


def as_image_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.copy()).float()[None] / 255.0


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_tiny_segmenter(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def segmenter(zoo):
    return load_segmenter(zoo["folder"])


@pytest.fixture(scope="module")
def reference(zoo):
    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    model = Mask2FormerForUniversalSegmentation.from_pretrained(str(zoo["folder"])).eval()
    processor = Mask2FormerImageProcessorPil.from_pretrained(str(zoo["folder"]))
    return model, processor


def reference_result(reference, pixels: np.ndarray):
    model, processor = reference
    inputs = processor(images=[pixels], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[pixels.shape[:2]],
                                                        return_segmentation_scores=True)[0]


# ----- loading

def test_folder_and_single_file_load_the_same_weights(zoo, segmenter):
    single = load_segmenter(zoo["file"])
    assert single.labels == segmenter.labels and len(segmenter.labels) == 150
    assert segmenter.labels[2] == "sky" and segmenter.labels[7] == "bed"  # the hub's "bed " is stripped
    assert segmenter.preprocessing == Preprocessing(96, 160, 32)
    a, b = segmenter.model.state_dict(), single.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_single_file_with_hub_key_names_loads(zoo, segmenter, tmp_path):
    """save_pretrained writes the hub's legacy Swin key names (attention.self.query, ...); transformers renames
    them on load, and so must a single file holding them."""
    from safetensors import safe_open

    hub_style = tmp_path / "hub-style.safetensors"
    shutil.copy(zoo["folder"] / "model.safetensors", hub_style)
    with safe_open(str(hub_style), framework="pt") as handle:
        assert any(".attention.self.query." in key for key in handle.keys())
    shutil.copy(zoo["folder"] / "config.json", hub_style.with_suffix(".json"))
    loaded = load_segmenter(hub_style).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in segmenter.model.state_dict().items())


def test_swin_stages_have_two_blocks_so_windows_shift(segmenter):
    swin = segmenter.model.config.backbone_config
    assert swin.depths == [2, 2, 2, 2] and swin.window_size == 4


def test_single_file_without_sidecar_finds_a_config_in_its_folder(zoo, tmp_path):
    folder = tmp_path / "segmentation"
    folder.mkdir()
    shutil.copy(zoo["file"], folder / "renamed.safetensors")
    with pytest.raises(SegmenterLoadError, match="no Mask2Former config matches"):
        load_segmenter(folder / "renamed.safetensors")  # only the shipped Swin-L config to try: no match
    shutil.copy(zoo["folder"] / "config.json", folder / "my-mask2former-config.json")
    assert load_segmenter(folder / "renamed.safetensors").config_name == "my-mask2former-config"


def test_shipped_swin_large_config_is_the_full_size_architecture():
    from transformers import Mask2FormerConfig

    from engine.models.segmentation.mask2former import expected_shapes

    [path] = [p for p in shipped_configs() if p.stem == "mask2former-swin-large-ade-semantic"]
    config = Mask2FormerConfig.from_json_file(str(path))
    swin = config.backbone_config
    assert (swin.embed_dim, swin.depths, swin.num_heads, swin.window_size) == (192, [2, 2, 18, 2],
                                                                               [6, 12, 24, 48], 12)
    assert config.num_labels == 150 and config.num_queries == 100 and config.decoder_layers == 10
    params = sum(int(np.prod(s)) for k, s in expected_shapes(config).items() if not k.startswith("criterion"))
    assert 214e6 < params < 217e6  # Mask2Former Swin-L: about 216 M parameters


def test_corrupt_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SegmenterLoadError, match="not a readable safetensors file"):
        load_segmenter(bad)


def test_truncated_file_is_a_clear_error(zoo, tmp_path):
    data = zoo["file"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    shutil.copy(zoo["file"].with_suffix(".json"), tmp_path / "cut.json")
    with pytest.raises(SegmenterLoadError, match="cut.safetensors"):
        load_segmenter(cut)


def test_wrong_architecture_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(SegmenterLoadError, match="wrong architecture: no Mask2Former weights"):
        load_segmenter(path)


def test_wrong_architecture_config_is_refused(zoo, tmp_path):
    folder = tmp_path / "not-mask2former"
    shutil.copytree(zoo["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "segformer"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SegmenterLoadError, match="wrong architecture: model_type is 'segformer'"):
        load_segmenter(folder)


def test_missing_config_is_a_clear_error(zoo, tmp_path):
    folder = tmp_path / "no-config"
    folder.mkdir()
    shutil.copy(zoo["folder"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(SegmenterLoadError, match="missing config.json"):
        load_segmenter(folder)


def test_weights_of_another_size_are_refused_with_the_shapes(zoo, tmp_path):
    folder = tmp_path / "other-size"
    shutil.copytree(zoo["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_queries"] = 20
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SegmenterLoadError, match=r"\[20, 32\] expected by the config"):
        load_segmenter(folder)


# ----- parity with transformers

def test_preprocessing_is_bit_identical_to_the_pil_image_processor(segmenter, reference):
    _, processor = reference
    for pixels in (smooth_image(100, 130, 1), smooth_image(200, 90, 2), smooth_image(40, 300, 3)):
        expected = processor(images=[pixels], return_tensors="pt")["pixel_values"]
        size = pipeline.processed_size(*pixels.shape[:2], segmenter.preprocessing)
        ours = pipeline.pixel_values(pipeline.resize_uint8(pixels, size)[None],
                                     torch.from_numpy(pipeline.normalisation_table(segmenter.preprocessing)))
        assert ours.shape == expected.shape and torch.equal(ours, expected)


@pytest.mark.parametrize("size", [(100, 130), (150, 90), (64, 64)])
def test_single_image_label_map_and_scores_equal_transformers(segmenter, reference, size):
    pixels = smooth_image(*size, seed=sum(size))
    expected = reference_result(reference, pixels)
    [ours] = pipeline.segment(segmenter, [as_image_tensor(pixels)])
    assert torch.equal(ours.label_map[0], expected.segmentation)
    assert len(torch.unique(expected.segmentation)) >= 2  # a one-class map would make this test weak
    ids = ours.present_classes(0)
    assert torch.allclose(ours.scores(ids)[0], expected.segmentation_scores[ids], atol=1e-5)


def test_mixed_sizes_in_one_request_equal_the_single_image_results(segmenter, reference):
    sizes = [(100, 130), (150, 90), (100, 131), (64, 64), (100, 130)]  # (100,130)/(100,131) share a batch
    pictures = [smooth_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    results = pipeline.segment(segmenter, [as_image_tensor(p) for p in pictures], batch_size=4)
    for pixels, result in zip(pictures, results):
        assert result.label_map.shape == (1, *pixels.shape[:2])
        assert torch.equal(result.label_map[0], reference_result(reference, pixels).segmentation)


def test_pad_mode_crops_each_result_and_reports_its_agreement(segmenter):
    sizes = [(100, 130), (150, 90), (64, 64)]
    tensors = [as_image_tensor(smooth_image(h, w, seed=10 + i)) for i, (h, w) in enumerate(sizes)]
    exact = pipeline.segment(segmenter, tensors, mode="group")
    padded = pipeline.segment(segmenter, tensors, mode="pad")
    agreement = [float((a.label_map == b.label_map).float().mean()) for a, b in zip(exact, padded)]
    print("pad-mode agreement with exact results:", [round(a, 3) for a in agreement])
    assert all(b.label_map.shape == a.label_map.shape for a, b in zip(exact, padded))
    # every image here is padded (the batch is 160×128) and the model does not ignore the padding
    assert min(agreement) < 1.0 and min(agreement) > 0.3
    same_size = [tensors[0], tensors[0].flip(1)]
    assert all(torch.equal(a.label_map, b.label_map) for a, b in zip(
        pipeline.segment(segmenter, same_size, mode="pad"), pipeline.segment(segmenter, same_size)))


def test_a_batch_tensor_gives_one_label_map_per_image(segmenter):
    batch = torch.cat([as_image_tensor(smooth_image(96, 96, seed=s)) for s in range(3)])
    [result] = pipeline.segment(segmenter, [batch], batch_size=2)
    assert result.label_map.shape == (3, 96, 96) and result.class_logits.shape[:2] == (3, 16)
    singles = [pipeline.segment(segmenter, [batch[i:i + 1]])[0].label_map[0] for i in range(3)]
    assert all(torch.equal(result.label_map[i], singles[i]) for i in range(3))


def test_gray_and_rgba_images_are_accepted(segmenter):
    rgb = as_image_tensor(smooth_image(96, 128, seed=5))
    gray = rgb.mean(dim=-1, keepdim=True)
    rgba = torch.cat([rgb, torch.rand(1, 96, 128, 1)], dim=-1)
    [from_gray] = pipeline.segment(segmenter, [gray])
    [from_rgba] = pipeline.segment(segmenter, [rgba])
    [from_rgb] = pipeline.segment(segmenter, [rgb])
    assert torch.equal(from_rgba.label_map, from_rgb.label_map)  # alpha is ignored
    [from_gray_rgb] = pipeline.segment(segmenter, [gray.expand(-1, -1, -1, 3)])
    assert torch.equal(from_gray.label_map, from_gray_rgb.label_map)
    with pytest.raises(ValueError, match="2 channels"):
        pipeline.segment(segmenter, [rgb[..., :2]])


# ----- the tiny model must react to its input, or the parity tests above prove little

def test_tiny_model_reacts_to_the_image(segmenter):
    a = as_image_tensor(smooth_image(128, 128, seed=21))
    b = as_image_tensor(smooth_image(128, 128, seed=22))
    [ra], [rb] = pipeline.segment(segmenter, [a]), pipeline.segment(segmenter, [b])
    changed = float((ra.label_map != rb.label_map).float().mean())
    assert changed >= 0.2, changed
    ids = sorted(set(ra.present_classes(0)) | set(rb.present_classes(0)))
    moved = float((ra.scores(ids) - rb.scores(ids)).abs().mean())
    assert moved >= 0.01, moved
    # a local edit moves the labels near it
    edited = a.clone()
    edited[:, 32:96, 32:96] = 1.0 - edited[:, 32:96, 32:96]
    [re] = pipeline.segment(segmenter, [edited])
    assert float((re.label_map != ra.label_map).float().mean()) >= 0.05


def test_resolution_option_changes_the_processed_size():
    prep = Preprocessing(96, 160, 32)
    assert pipeline.processed_size(100, 130, prep) == (96, 128)
    assert pipeline.processed_size(100, 130, prep.at_resolution(192)) == (192, 256)
    assert pipeline.processed_size(40, 300, prep) == (32, 160)  # long side capped, then rounded up to /32


# ----- CUDA paths (fp16/bf16 weights, channels-last, quantisation on the device)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_results_agree_with_the_cpu(segmenter, dtype):
    images = [as_image_tensor(smooth_image(96, 128, seed=31)), as_image_tensor(smooth_image(100, 130, seed=32))]
    cpu = pipeline.segment(segmenter, images)
    gpu = pipeline.segment(segmenter, images, device="cuda", dtype=dtype, channels_last=True)
    for a, b in zip(cpu, gpu):
        assert b.label_map.device.type == "cpu" and b.class_logits.dtype == torch.float32
        agreement = float((a.label_map == b.label_map).float().mean())
        assert agreement >= (0.99 if dtype == torch.float32 else 0.8), (dtype, agreement)
    assert segmenter.model.dtype == torch.float32  # the master copy was never cast
