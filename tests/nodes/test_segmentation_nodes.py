"""Segmentation and bridge nodes: loader, SemanticSegment, SegmentationToMask, MaskMorphology, MaskRefineCRF,
SegmentationPreview, MaskToInpaint, including bad input."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.context import NodeContext
from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from engine.core.schema import ExecutionBlocker
from engine.core.validate import validate_prompt
from nodes.bridges import inpaint
from nodes.segmentation import crf, loader, morphology, preview, refine, segment, select


def smooth_image(height: int, width: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    base = (rng.random((height // 16 + 2, width // 16 + 2, 3)) * 255).astype(np.uint8)
    pixels = np.array(Image.fromarray(base).resize((width, height), Image.BILINEAR))
    return torch.from_numpy(pixels).float()[None] / 255.0


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from engine.zoo.segmentation import write_tiny_segmenter

    base = tmp_path_factory.mktemp("segbase")
    paths = FolderPaths(base)
    write_tiny_segmenter(paths.models_dir)
    return paths


@pytest.fixture(scope="module")
def ctx(folders):
    return NodeContext(node_id="1", folders=folders)


@pytest.fixture(scope="module")
def segmenter(ctx):
    return loader.load_mask2former(ctx, model_name="tiny-mask2former-swin-ade")[0]


@pytest.fixture(scope="module")
def segmentation(ctx, segmenter):
    [result] = segment.semantic_segment(ctx, [segmenter], [smooth_image(96, 128, seed=3)])[0]
    return result


@pytest.fixture(scope="module")
def registry():
    return NodeRegistry().discover("nodes")


# ----- loader and SemanticSegment

def test_loader_lists_folder_and_single_file(registry, folders):
    info = registry["Mask2FormerLoader"].object_info(folders)
    assert info["input"]["required"]["model_name"][0] == ["tiny-mask2former-swin-ade",
                                                          "tiny-mask2former-swin-ade.safetensors"]
    assert info["output"] == ["SEGMENTER"]


def test_loader_rejects_a_missing_model(ctx):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        loader.load_mask2former(ctx, model_name="nothing.safetensors")


def test_semantic_segment_gives_one_segmentation_per_image_tensor(ctx, segmenter, registry):
    assert registry["SemanticSegment"].object_info()["output_is_list"] == [True]
    images = [smooth_image(96, 128, seed=1), torch.cat([smooth_image(64, 80, seed=2)] * 2)]
    [results] = segment.semantic_segment(ctx, [segmenter], images, [0], ["auto"], [4], ["group"])
    assert [r.label_map.shape for r in results] == [(1, 96, 128), (2, 64, 80)]
    assert results[0].names[2] == "sky"


def test_semantic_segment_options_are_checked(ctx, segmenter):
    image = [smooth_image(64, 64, seed=1)]
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        segment.semantic_segment(ctx, [segmenter], image, [0], ["fp16"], [1], ["group"])
    with pytest.raises(ValueError, match="unknown batching mode"):
        segment.semantic_segment(ctx, [segmenter], image, [0], ["fp32"], [1], ["tile"])
    with pytest.raises(ValueError, match="one value expected"):
        segment.semantic_segment(ctx, [segmenter], image, [0, 64], ["fp32"], [1], ["group"])


def test_resolution_option_runs_the_model_at_another_size(ctx, segmenter):
    image = [smooth_image(96, 128, seed=4)]
    [[a]] = segment.semantic_segment(ctx, [segmenter], image, [0])
    [[b]] = segment.semantic_segment(ctx, [segmenter], image, [192])
    assert a.label_map.shape == b.label_map.shape == (1, 96, 128)
    assert a.mask_logits.shape[-2:] == (24, 32) and b.mask_logits.shape[-2:] == (48, 64)


# ----- SegmentationToMask

def test_mask_of_classes_by_name_and_id(ctx, segmentation):
    present = segmentation.present_classes(0)
    first, second = present[0], present[1]
    [mask] = select.segmentation_to_mask(ctx, segmentation, segmentation.names[first], str(second))
    expected = (segmentation.label_map == first) | (segmentation.label_map == second)
    assert mask.dtype == torch.float32 and mask.shape == (1, 96, 128)
    assert torch.equal(mask, expected.float())


def test_mask_threshold_keeps_only_confident_pixels(ctx, segmentation):
    cls = segmentation.present_classes(0)[0]
    name = segmentation.names[cls]
    [everything] = select.segmentation_to_mask(ctx, segmentation, name, "", 0.0)
    score = segmentation.scores([cls])[0, 0]
    cut = float(score[segmentation.label_map[0] == cls].median())
    [confident] = select.segmentation_to_mask(ctx, segmentation, name, "", cut)
    assert 0 < confident.sum() < everything.sum()
    assert torch.equal(confident[0].bool(), (segmentation.label_map[0] == cls) & (score >= cut))


def test_absent_class_gives_an_empty_mask(ctx, segmentation):
    absent = next(i for i in range(150) if i not in segmentation.present_classes(0))
    [mask] = select.segmentation_to_mask(ctx, segmentation, "(none)", str(absent))
    assert mask.shape == (1, 96, 128) and mask.sum() == 0


def test_unknown_class_is_a_validation_error_with_close_matches(registry):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
              "2": {"class_type": "Mask2FormerLoader", "inputs": {"model_name": "m"}},
              "3": {"class_type": "SemanticSegment", "inputs": {"segmenter": ["2", 0], "image": ["1", 0]}},
              "4": {"class_type": "SegmentationToMask",
                    "inputs": {"segmentation": ["3", 0], "class_name": "sky", "more_classes": "trees, skyy",
                               "threshold": 0.0}},
              "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
              "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}}
    result = validate_prompt(prompt, registry)
    errors = result.node_errors["4"]["errors"]
    text = " ".join(e["details"] for e in errors)
    assert "unknown class 'trees'; close matches: tree" in text and "'skyy'; close matches: sky" in text
    assert select.validate_class_inputs("sky", "12, tree") is True
    assert "choose at least one class" in select.validate_class_inputs("(none)", "")


def test_class_list_errors_at_run_time(ctx, segmentation):
    with pytest.raises(ValueError, match="class id 150 is out of range 0..149"):
        select.segmentation_to_mask(ctx, segmentation, "sky", "150")
    with pytest.raises(ValueError, match="close matches: building"):
        select.segmentation_to_mask(ctx, segmentation, "sky", "buildin")


# ----- MaskMorphology

def test_morphology_matches_scipy_on_a_random_mask():
    from scipy import ndimage

    torch.manual_seed(0)
    mask = (torch.rand(2, 40, 50) > 0.7).float()
    for op, ref in (("dilate", ndimage.binary_dilation), ("erode", ndimage.binary_erosion),
                    ("open", ndimage.binary_opening), ("close", ndimage.binary_closing)):
        for shape in ("square", "disk"):
            kernel = morphology.structuring_element(5, shape, "cpu").bool().numpy()
            [ours] = morphology.mask_morphology(None, mask, op, 5, shape)
            padded = np.pad(mask.numpy().astype(bool), ((0, 0), (5, 5), (5, 5)),
                            mode="constant" if op in ("dilate", "open") else "edge")
            expected = np.stack([ref(m, structure=kernel)[5:-5, 5:-5] for m in padded])
            if op in ("dilate", "erode"):  # open/close combine both borders; check their interior
                assert np.array_equal(ours.numpy().astype(bool), expected), (op, shape)
            else:
                assert np.array_equal(ours.numpy().astype(bool)[:, 6:-6, 6:-6], expected[:, 6:-6, 6:-6])


def test_fill_holes_and_remove_small_components():
    mask = torch.zeros(1, 20, 20)
    mask[0, 2:12, 2:12] = 1
    mask[0, 5:8, 5:8] = 0  # a hole
    mask[0, 16, 16] = 1  # a speck
    [out] = morphology.mask_morphology(None, mask, "none", 1, "disk", True, 4)
    expected = torch.zeros(1, 20, 20)
    expected[0, 2:12, 2:12] = 1
    assert torch.equal(out, expected)


def test_morphology_keeps_empty_masks_empty_and_rejects_bad_shapes():
    [out] = morphology.mask_morphology(None, torch.zeros(2, 16, 16), "dilate", 7, "disk", True, 5)
    assert out.shape == (2, 16, 16) and out.sum() == 0
    with pytest.raises(ValueError, match="MASK must be B×H×W"):
        morphology.mask_morphology(None, torch.zeros(1, 1, 8, 8), "dilate", 3)
    with pytest.raises(ValueError, match="MASK is empty"):
        morphology.mask_morphology(None, torch.zeros(1, 0, 8), "dilate", 3)


# ----- MaskRefineCRF

def test_mean_field_equals_the_brute_force_reference():
    torch.manual_seed(1)
    image = torch.rand(7, 9, 3)
    probs = torch.softmax(torch.randn(3, 7, 9) * 2, dim=0)
    params = crf.CRFParams(iterations=4, bilateral_sigma_xy=5.0, bilateral_sigma_rgb=40.0, smooth_sigma_xy=1.0)
    ours = crf.mean_field(probs, image, params, stride=1)
    reference = crf.brute_force_mean_field(probs, image, params)
    assert torch.allclose(ours.double(), reference, atol=1e-4)
    assert (ours - probs).abs().mean() > 0.01  # the pairwise terms did something


def two_tone_image(height: int = 48, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark left half and a bright right half (with a little noise), and the true right-half mask."""
    torch.manual_seed(2)
    image = torch.full((1, height, width, 3), 0.2)
    image[:, :, width // 2:] = 0.8
    image = (image + 0.03 * torch.randn_like(image)).clamp(0, 1)
    truth = torch.zeros(1, height, width)
    truth[:, :, width // 2:] = 1
    return image, truth


def test_crf_snaps_a_sloppy_mask_to_the_edge():
    image, truth = two_tone_image()
    sloppy = torch.zeros_like(truth)
    sloppy[:, :, 26:] = 1  # 6 columns too far left
    sloppy[:, 10:14, 40:44] = 0  # and a hole
    refined, blocked = refine.mask_refine_crf(None, image, mask=sloppy, bilateral_sigma_xy=20.0,
                                              bilateral_sigma_rgb=10.0)
    assert isinstance(blocked, ExecutionBlocker)
    before = float((sloppy != truth).float().mean())
    after = float(((refined > 0.5).float() != truth).float().mean())
    assert after < before / 4, (before, after)


def test_crf_refines_a_label_map(ctx, segmentation):
    image = smooth_image(96, 128, seed=3)
    blocked, refined = refine.mask_refine_crf(ctx, image, segmentation=segmentation, iterations=2, max_side=64)
    assert isinstance(blocked, ExecutionBlocker)
    assert refined.label_map.shape == segmentation.label_map.shape
    assert set(refined.present_classes(0)) <= set(segmentation.present_classes(0))
    assert 0 < float((refined.label_map != segmentation.label_map).float().mean()) < 0.5


def test_crf_bad_input():
    image, truth = two_tone_image()
    with pytest.raises(ValueError, match="exactly one of 'mask' or 'segmentation'"):
        refine.mask_refine_crf(None, image)
    with pytest.raises(ValueError, match=r"mask is \(24, 32\) but the image is \(48, 64\)"):
        refine.mask_refine_crf(None, image, mask=truth[:, ::2, ::2])
    [refined, _] = refine.mask_refine_crf(None, image, mask=torch.zeros_like(truth))
    assert refined.shape == truth.shape and float(refined.max()) < 0.5  # an empty mask stays empty
    gray = image.mean(dim=-1, keepdim=True)
    rgba = torch.cat([image, torch.ones_like(gray)], dim=-1)
    a = refine.mask_refine_crf(None, gray, mask=truth)[0]
    b = refine.mask_refine_crf(None, rgba, mask=truth)[0]
    assert a.shape == b.shape == truth.shape


# ----- SegmentationPreview

def test_preview_colours_classes_and_adds_a_legend(ctx, segmentation):
    image = smooth_image(96, 128, seed=3)
    [plain] = preview.segmentation_preview(ctx, image, segmentation, 1.0, False)
    cls = int(segmentation.label_map[0, 0, 0])
    assert plain.shape == image.shape
    assert torch.allclose(plain[0, 0, 0], torch.tensor(preview.class_colour(cls)) / 255.0)
    result = preview.segmentation_preview(ctx, image, segmentation, 0.5, True)
    [with_legend] = result.outputs
    assert with_legend.shape[2] == 128 and with_legend.shape[1] > 96
    present = sorted(segmentation.present_classes(0))
    assert result.ui["legend"] == [{"label": segmentation.names[c], "color": list(preview.class_colour(c))}
                                   for c in present]
    assert torch.allclose(with_legend[:, :96], image * 0.5 + plain * 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="does not match the segmentation"):
        preview.segmentation_preview(ctx, image[:, :64], segmentation)


# ----- MaskToInpaint

def test_inpaint_mask_grows_feathers_and_fits_the_latent_grid(ctx, segmentation):
    cls = segmentation.present_classes(0)[0]
    name = segmentation.names[cls]
    raw = (segmentation.label_map == cls).float()
    soft, latent_mask, blocked = inpaint.mask_to_inpaint(ctx, segmentation, name, "", 4, 0, 0.5, 8)
    assert isinstance(blocked, ExecutionBlocker)
    assert soft.shape == (1, 96, 128) and latent_mask.shape == (1, 12, 16)
    assert soft.sum() > raw.sum() and torch.all(soft >= raw)  # grown
    assert set(latent_mask.unique().tolist()) <= {0.0, 1.0}
    feathered, _, _ = inpaint.mask_to_inpaint(ctx, segmentation, name, "", 0, 6, 0.5, 8)
    assert ((feathered > 0.05) & (feathered < 0.95)).any()  # soft edges
    samples = {"samples": torch.zeros(1, 16, 12, 16)}
    _, latent_mask, latent = inpaint.mask_to_inpaint(ctx, segmentation, name, "", 4, 4, 0.5, 8, samples)
    assert latent["samples"] is samples["samples"] and latent["noise_mask"].shape == (1, 1, 12, 16)
    assert torch.equal(latent["noise_mask"][:, 0], latent_mask)


def test_inpaint_bad_input(ctx, segmentation):
    with pytest.raises(ValueError, match="samples are 8×8 latent cells"):
        inpaint.mask_to_inpaint(ctx, segmentation, "sky", "", 0, 0, 0.5, 8, {"samples": torch.zeros(1, 16, 8, 8)})
    with pytest.raises(ValueError, match="no class chosen"):
        inpaint.mask_to_inpaint(ctx, segmentation, "(none)", "")
    absent = next(i for i in range(150) if i not in segmentation.present_classes(0))
    soft, latent_mask, _ = inpaint.mask_to_inpaint(ctx, segmentation, "(none)", str(absent))
    assert soft.sum() == 0 and latent_mask.sum() == 0  # nothing to inpaint: an empty mask, not an error
