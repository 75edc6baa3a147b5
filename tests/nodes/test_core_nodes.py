"""The core node pack: image files in and out, image and mask operations, primitives and the switch."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from PIL import Image

from engine.core.context import NodeContext
from engine.core.folders import FolderPaths, UnsafePathError
from engine.media.images import read_png_text, resize_images
from engine.core.registry import NodeRegistry
from engine.core.schema import NodeResult
from nodes.core import image_io, image_ops, mask_ops
from nodes.core.options import CROP_METHODS, UPSCALE_METHODS
from nodes.core.save_paths import expand_prefix, next_counter


@pytest.fixture
def folders(tmp_path) -> FolderPaths:
    paths = FolderPaths(tmp_path)
    paths.input_dir.mkdir(parents=True)
    return paths


@pytest.fixture
def ctx(folders) -> NodeContext:
    return NodeContext(node_id="1", folders=folders)


def ramp_image(batch: int = 1, height: int = 6, width: int = 8, channels: int = 3) -> torch.Tensor:
    values = torch.linspace(0.0, 1.0, batch * height * width * channels)
    return values.reshape(batch, height, width, channels)


def test_option_lists_agree_with_the_image_helpers():
    import engine.media.images as images

    assert UPSCALE_METHODS == images.UPSCALE_METHODS and CROP_METHODS == images.CROP_METHODS


# ----- LoadImage / LoadImageMask
def test_load_image_rgba_gives_mask_one_minus_alpha(ctx, folders):
    pixels = Image.new("RGBA", (4, 3), (255, 0, 0, 255))
    pixels.putpixel((1, 2), (0, 255, 0, 0))
    pixels.putpixel((3, 0), (0, 0, 255, 51))
    pixels.save(folders.input_dir / "a.png")
    image, mask = image_io.load_image(ctx, image="a.png")
    assert image.shape == (1, 3, 4, 3) and mask.shape == (1, 3, 4)
    assert torch.allclose(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(image[0, 2, 1], torch.tensor([0.0, 1.0, 0.0]))
    assert mask[0, 2, 1] == 1.0 and mask[0, 0, 0] == 0.0
    assert mask[0, 0, 3] == pytest.approx(1 - 51 / 255)


def test_load_image_without_alpha_gives_64x64_zero_mask(ctx, folders):
    Image.new("RGB", (5, 7), (10, 20, 30)).save(folders.input_dir / "b.jpg", quality=100)
    image, mask = image_io.load_image(ctx, image="b.jpg")
    assert image.shape == (1, 7, 5, 3)
    assert mask.shape == (1, 64, 64) and mask.abs().sum() == 0


def test_load_image_multi_frame_gives_a_batch(ctx, folders):
    frames = [Image.new("RGB", (6, 4), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(folders.input_dir / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    image, mask = image_io.load_image(ctx, image="anim.gif")
    assert image.shape == (3, 4, 6, 3) and mask.shape[0] == 3
    assert image[1, 0, 0].argmax() == 1 and image[2, 0, 0].argmax() == 2


def test_load_image_reads_output_and_temp_annotations(ctx, folders):
    folders.output_dir.mkdir()
    Image.new("RGB", (2, 2), (255, 255, 255)).save(folders.output_dir / "done.png")
    image, _ = image_io.load_image(ctx, image="done.png [output]")
    assert image.shape == (1, 2, 2, 3) and image.min() == 1.0
    assert image_io.image_file_exists("done.png [output]", folders=folders) is True
    assert "Invalid image file" in image_io.image_file_exists("done.png", folders=folders)


def test_load_image_validation_and_change_token(folders):
    path = folders.input_dir / "c.png"
    Image.new("RGB", (2, 2), (0, 0, 0)).save(path)
    assert image_io.image_file_exists("c.png", folders=folders) is True
    assert image_io.image_file_exists("missing.png", folders=folders) == "Invalid image file: missing.png"
    assert "Invalid image file" in image_io.image_file_exists("../escape.png", folders=folders)
    first = image_io.image_file_hash("c.png", folders=folders)
    assert first == image_io.image_file_hash("c.png", folders=folders)
    Image.new("RGB", (2, 2), (9, 9, 9)).save(path)
    assert image_io.image_file_hash("c.png", folders=folders) != first
    assert math.isnan(image_io.image_file_hash("missing.png", folders=folders))


def test_load_image_missing_or_escaping_file_raises_clearly(ctx):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        image_io.load_image(ctx, image="nope.png")
    with pytest.raises(UnsafePathError):
        image_io.load_image(ctx, image="../../etc/passwd")


def test_load_image_choices_list_images_only_sorted(folders):
    for name in ("z.png", "a.webp", "notes.txt"):
        (folders.input_dir / name).write_bytes(b"x")
    (folders.input_dir / "sub").mkdir()
    assert image_io.input_images(folders) == ["a.webp", "z.png"]
    assert image_io.input_files(folders) == ["a.webp", "notes.txt", "z.png"]
    assert image_io.input_images(None) == []


@pytest.mark.parametrize("channel, expected", [("red", 1.0), ("green", 0.2), ("blue", 0.0), ("alpha", 0.6)])
def test_load_image_mask_channels(ctx, folders, channel, expected):
    Image.new("RGBA", (3, 2), (255, 51, 0, 102)).save(folders.input_dir / "m.png")
    (mask,) = image_io.load_image_mask(ctx, image="m.png", channel=channel)
    assert mask.shape == (1, 2, 3)
    assert mask[0, 0, 0].item() == pytest.approx(expected)


# ----- SaveImage / PreviewImage
def test_save_image_names_counter_chunks_and_ui(ctx, folders):
    (folders.output_dir / "shots").mkdir(parents=True)
    (folders.output_dir / "shots" / "cat_00007_.png").write_bytes(b"old")
    (folders.output_dir / "shots" / "catfish_00040_.png").write_bytes(b"other prefix")
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    result = image_io.save_image(ctx, images=ramp_image(batch=2), filename_prefix="shots/cat",
                                 prompt=prompt, extra_pnginfo={"workflow": {"nodes": []}, "note": "hi"})
    assert isinstance(result, NodeResult) and result.outputs == ()
    assert result.ui == {"images": [
        {"filename": "cat_00008_.png", "subfolder": "shots", "type": "output"},
        {"filename": "cat_00009_.png", "subfolder": "shots", "type": "output"}]}
    saved = folders.output_dir / "shots" / "cat_00008_.png"
    chunks = read_png_text(saved)
    assert json.loads(chunks["prompt"]) == prompt
    assert json.loads(chunks["workflow"]) == {"nodes": []} and json.loads(chunks["note"]) == "hi"
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    with Image.open(saved) as picture:
        assert picture.size == (8, 6) and picture.mode == "RGB"


def test_save_image_pixels_round_trip(ctx, folders):
    image = ramp_image(height=4, width=5)
    record = image_io.save_image(ctx, images=image, filename_prefix="rt").ui["images"][0]
    with Image.open(folders.output_dir / record["filename"]) as picture:
        loaded = torch.from_numpy(__import__("numpy").asarray(picture, dtype="float32") / 255.0)
    assert torch.allclose(loaded, image[0], atol=1 / 255)


def test_save_image_substitutes_size_and_date(ctx, folders):
    record = image_io.save_image(ctx, images=ramp_image(height=6, width=8),
                                 filename_prefix="%year%/img_%width%x%height%").ui["images"][0]
    assert record["subfolder"].isdigit() and record["filename"] == "img_8x6_00001_.png"
    assert expand_prefix("%month%-%day%", 1, 1, now=__import__("time").localtime(0))[2] == "-"


@pytest.mark.parametrize("prefix", ["../outside", "/abs/path", "a/../../b"])
def test_save_image_refuses_prefixes_leaving_output(ctx, prefix):
    with pytest.raises(UnsafePathError):
        image_io.save_image(ctx, images=ramp_image(), filename_prefix=prefix)


def test_save_is_atomic_when_writing_fails(ctx, folders, monkeypatch):
    def broken_save(self, stream, *args, **kwargs):
        stream.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        image_io.save_image(ctx, images=ramp_image(), filename_prefix="broken")
    assert list(folders.output_dir.iterdir()) == []


def test_next_counter_ignores_other_names(tmp_path):
    for name in ("a_00003_.png", "a_00010_.png", "a_12.txt", "ab_00099_.png", "a_x_00500_.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_counter(tmp_path, "a") == 11  # "a_12.txt" has no "_" after its digits
    assert next_counter(tmp_path / "missing", "a") == 1


def test_preview_image_goes_to_temp(ctx, folders):
    records = image_io.preview_image(ctx, images=ramp_image()).ui["images"]
    assert records[0]["type"] == "temp" and records[0]["filename"].startswith("ComfyUI_temp_")
    assert (folders.temp_dir / records[0]["filename"]).is_file()
    mask_records = image_io.mask_preview(ctx, mask=torch.ones(1, 4, 4)).ui["images"]
    with Image.open(folders.temp_dir / mask_records[0]["filename"]) as picture:
        assert picture.getpixel((0, 0)) == (255, 255, 255)


def test_file_nodes_need_folders():
    with pytest.raises(RuntimeError, match="folder layout"):
        image_io.save_image(NodeContext(), images=ramp_image())


# ----- scaling
@pytest.mark.parametrize("method", UPSCALE_METHODS)
def test_every_upscale_method_resizes_and_stays_in_range(method):
    image = (torch.rand(2, 9, 13, 3, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    out = resize_images(image, 20, 7, method)
    assert out.shape == (2, 7, 20, 3) and out.dtype == torch.float32
    if method != "bicubic":  # bicubic overshoots 0..1, as in ComfyUI (saving clips it)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_image_scale_zero_keeps_aspect_and_crop_center(ctx):
    image = ramp_image(height=10, width=20)
    assert image_ops.image_scale(ctx, image, "bilinear", 0, 5, "disabled")[0].shape == (1, 5, 10, 3)
    assert image_ops.image_scale(ctx, image, "area", 10, 0, "disabled")[0].shape == (1, 5, 10, 3)
    assert image_ops.image_scale(ctx, image, "bilinear", 0, 0, "disabled")[0] is image
    # center crop to a square keeps the middle 10 columns: no resize needed at 10x10
    cropped = image_ops.image_scale(ctx, image, "nearest-exact", 10, 10, "center")[0]
    assert torch.equal(cropped, image[:, :, 5:15])


def test_image_scale_by_and_total_pixels(ctx):
    image = ramp_image(height=10, width=20)
    assert image_ops.image_scale_by(ctx, image, "bicubic", 1.5)[0].shape == (1, 15, 30, 3)
    (out,) = image_ops.image_scale_to_total_pixels(ctx, image, "bilinear", 0.001, 1)
    assert abs(out.shape[1] * out.shape[2] - 0.001 * 1024 * 1024) < 40
    assert out.shape[2] / out.shape[1] == pytest.approx(2.0, rel=0.1)
    (stepped,) = image_ops.image_scale_to_total_pixels(ctx, image, "lanczos", 0.001, 8)
    assert stepped.shape[1] % 8 == 0 and stepped.shape[2] % 8 == 0


def test_lanczos_keeps_extra_channels():
    out = resize_images(ramp_image(channels=4), 4, 3, "lanczos")
    assert out.shape == (1, 3, 4, 4)


# ----- image operations
def test_empty_image_color_and_invert(ctx):
    (image,) = image_ops.empty_image(ctx, width=3, height=2, batch_size=2, color=0xFF8000)
    assert image.shape == (2, 2, 3, 3)
    assert torch.allclose(image[1, 1, 2], torch.tensor([1.0, 128 / 255, 0.0]))
    (inverted,) = image_ops.image_invert(ctx, image)
    assert torch.allclose(inverted[0, 0, 0], torch.tensor([0.0, 1 - 128 / 255, 1.0]))


def test_image_composite_masked_pastes_clips_and_weights(ctx):
    destination = torch.zeros(1, 4, 4, 3)
    source = torch.ones(1, 3, 3, 3)
    (out,) = image_ops.image_composite_masked(ctx, destination, source, x=2, y=1, resize_source=False)
    assert out[0, 1:4, 2:4].min() == 1.0 and out.sum() == 3 * 2 * 3  # clipped at the right edge
    assert destination.sum() == 0  # the input is not modified
    mask = torch.tensor([[[0.5, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    (weighted,) = image_ops.image_composite_masked(ctx, destination, source, x=0, y=0, resize_source=False,
                                                   mask=mask)
    assert weighted[0, 0, 0, 0] == 0.5 and weighted[0, 0, 1, 0] == 0.0 and weighted[0, 0, 2, 0] == 1.0
    (resized,) = image_ops.image_composite_masked(ctx, destination, source, x=0, y=0, resize_source=True)
    assert resized.min() == 1.0


def test_image_composite_masked_matches_alpha_channels(ctx):
    (out,) = image_ops.image_composite_masked(ctx, torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2, 4), 0, 0, False)
    assert out.shape == (1, 2, 2, 3) and out.min() == 1.0


def test_image_pad_for_outpaint_fill_and_feathered_mask(ctx):
    image = torch.ones(1, 10, 12, 3)
    padded, mask = image_ops.image_pad_for_outpaint(ctx, image, left=8, top=0, right=0, bottom=4, feathering=4)
    assert padded.shape == (1, 14, 20, 3) and mask.shape == (1, 14, 20)
    assert padded[0, 0, 0, 0] == 0.5 and padded[0, 13, 19, 0] == 0.5 and padded[0, 0, 8, 0] == 1.0
    assert mask[0, 0, 0] == 1.0 and mask[0, 12, 10] == 1.0
    # original pixel (row 0, col 0 of the image): distance 0 to the padded left side -> ((4-0)/4)^2 = 1
    assert mask[0, 0, 8] == pytest.approx(1.0)
    # original column 2 in the top row: top is not padded, left distance 2 -> ((4-2)/4)^2 = 0.25
    assert mask[0, 0, 10] == pytest.approx(0.25)
    # bottom distance counts as (height - row): row 8 -> 2 -> 0.25; the middle is untouched
    assert mask[0, 8, 15] == pytest.approx(0.25) and mask[0, 3, 15] == 0.0
    _, unfeathered = image_ops.image_pad_for_outpaint(ctx, image, 8, 0, 0, 0, feathering=0)
    assert unfeathered[0, :, 8:].sum() == 0 and unfeathered[0, :, :8].min() == 1.0


def test_get_image_size(ctx):
    assert image_ops.get_image_size(ctx, ramp_image(batch=3, height=5, width=7), unique_id="9") == (7, 5, 3)


# ----- masks
def test_solid_invert_threshold_masks(ctx):
    (solid,) = mask_ops.solid_mask(ctx, value=0.25, width=3, height=2)
    assert solid.shape == (1, 2, 3) and torch.all(solid == 0.25)
    assert torch.all(mask_ops.invert_mask(ctx, solid)[0] == 0.75)
    (threshold,) = mask_ops.threshold_mask(ctx, torch.tensor([[0.2, 0.5, 0.7]]), value=0.5)
    assert threshold.tolist() == [[[0.0, 0.0, 1.0]]]


def _dot(size: int = 7) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, size // 2, size // 2] = 1.0
    return mask


def test_grow_mask_diamond_square_and_shrink(ctx):
    (diamond,) = mask_ops.grow_mask(ctx, _dot(), expand=2, tapered_corners=True)
    assert diamond.sum() == 13  # |dx| + |dy| <= 2
    assert diamond[0, 3, 5] == 1.0 and diamond[0, 1, 1] == 0.0 and diamond[0, 2, 2] == 1.0
    (square,) = mask_ops.grow_mask(ctx, _dot(), expand=2, tapered_corners=False)
    assert square.sum() == 25 and square[0, 1, 1] == 1.0
    (shrunk,) = mask_ops.grow_mask(ctx, square, expand=-1, tapered_corners=False)
    assert shrunk.sum() == 9
    (shrunk_diamond,) = mask_ops.grow_mask(ctx, square, expand=-1, tapered_corners=True)
    assert shrunk_diamond.sum() == 9
    full = torch.ones(1, 4, 4)  # borders do not erode a full mask
    assert mask_ops.grow_mask(ctx, full, expand=-2, tapered_corners=True)[0].min() == 1.0
    assert mask_ops.grow_mask(ctx, _dot(), expand=100000, tapered_corners=True)[0].min() == 1.0


def test_feather_mask_ramps(ctx):
    # ComfyUI's ramps (see tests/nodes/test_core_fidelity.py): right=2 scales column 0 by 1/2 and the last
    # column by 2/2; bottom=1 scales row 0 by 1/1.
    (feathered,) = mask_ops.feather_mask(ctx, torch.ones(1, 3, 8), left=4, top=0, right=2, bottom=1)
    assert feathered[0, 0, :4].tolist() == pytest.approx([0.125, 0.5, 0.75, 1.0])
    assert feathered[0, 0, 6:].tolist() == pytest.approx([1.0, 1.0])
    assert feathered[0, 2, 3] == pytest.approx(1.0) and feathered[0, 2, 0] == pytest.approx(0.125)
    (clamped,) = mask_ops.feather_mask(ctx, torch.ones(2, 2, 2), left=100, top=0, right=0, bottom=0)
    assert clamped[1, 0].tolist() == pytest.approx([0.5, 1.0])


def test_mask_image_conversions(ctx):
    mask = torch.rand(2, 3, 4)
    (image,) = mask_ops.mask_to_image_node(ctx, mask)
    assert image.shape == (2, 3, 4, 3) and torch.equal(image[..., 1], mask)
    rgba = torch.rand(1, 2, 2, 4)
    assert torch.equal(mask_ops.image_to_mask(ctx, rgba, "alpha")[0], rgba[..., 3])
    assert torch.equal(mask_ops.image_to_mask(ctx, image, "green")[0], mask)
    with pytest.raises(ValueError, match="no alpha"):
        mask_ops.image_to_mask(ctx, image, "alpha")


@pytest.mark.parametrize("operation, expected", [
    ("multiply", [0.9, 0.0]), ("add", [1.0, 0.75]), ("subtract", [0.0, 0.0]),
    ("and", [1.0, 0.0]), ("or", [1.0, 1.0]), ("xor", [0.0, 1.0])])
def test_mask_composite_operations(ctx, operation, expected):
    destination = torch.tensor([[[0.5, 0.9, 0.0]]])
    source = torch.tensor([[[1.0, 0.75]]])  # placed over destination columns 1 and 2
    (out,) = mask_ops.mask_composite(ctx, destination, source, x=1, y=0, operation=operation)
    assert out[0, 0, 0] == 0.5  # left of the source: untouched
    assert out[0, 0, 1:].tolist() == pytest.approx(expected)  # results clamped to 0..1


# ----- through the executor: primitives, switch laziness, PNG metadata
@pytest.fixture(scope="module")
def core_registry() -> NodeRegistry:
    from nodes import core

    return NodeRegistry(core.NODES)


def _run(prompt, registry, folders, extra_data=None):
    from engine.core.executor import Executor
    from engine.core.validate import validate_prompt

    checked = validate_prompt(prompt, registry, folders)
    assert checked.ok and not checked.node_errors, checked.node_errors
    return Executor(registry, folders=folders).execute(checked.prompt, "p", extra_data=extra_data)


@pytest.mark.parametrize("switch", [True, False])
def test_switch_runs_only_the_selected_branch(core_registry, folders, switch):
    prompt = {
        "red": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1,
                                                       "color": 0xFF0000}},
        "blue": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1,
                                                        "color": 0x0000FF}},
        "flag": {"class_type": "PrimitiveBoolean", "inputs": {"value": switch}},
        "sw": {"class_type": "ComfySwitchNode", "inputs": {"switch": ["flag", 0], "on_false": ["blue", 0],
                                                           "on_true": ["red", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["sw", 0], "filename_prefix": "sw"}},
    }
    result = _run(prompt, core_registry, folders)
    assert result.status == "success", result.errors
    assert ("red" in result.executed) == switch and ("blue" in result.executed) != switch
    record = result.outputs["save"]["images"][0]
    with Image.open(folders.output_dir / record["filename"]) as picture:
        assert picture.getpixel((0, 0)) == ((255, 0, 0) if switch else (0, 0, 255))


def test_switch_rejects_mismatched_branches(core_registry, folders):
    from engine.core.validate import validate_prompt

    prompt = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 1, "color": 0}},
        "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 2, "height": 2}},
        "sw": {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_false": ["mask", 0],
                                                           "on_true": ["img", 0]}},
        "save": {"class_type": "PreviewImage", "inputs": {"images": ["sw", 0]}},
    }
    result = validate_prompt(prompt, core_registry, folders)
    assert not result.ok and list(result.node_errors) == ["sw"]
    assert "same type" in result.node_errors["sw"]["errors"][0]["details"]


def test_primitives_feed_widgets_and_png_carries_prompt(core_registry, folders):
    prompt = {
        "w": {"class_type": "PrimitiveInt", "inputs": {"value": 6}},
        "name": {"class_type": "PrimitiveString", "inputs": {"value": "prim"}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": ["w", 0], "height": 3, "batch_size": 1,
                                                       "color": 0}},
        "size": {"class_type": "GetImageSize", "inputs": {"image": ["img", 0]}},
        "scaled": {"class_type": "ImageScale", "inputs": {"image": ["img", 0], "upscale_method": "area",
                                                          "width": ["size", 1], "height": 0,
                                                          "crop": "disabled"}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["scaled", 0], "filename_prefix": ["name", 0]}},
    }
    workflow = {"nodes": [], "links": []}
    result = _run(prompt, core_registry, folders, extra_data={"extra_pnginfo": {"workflow": workflow}})
    assert result.status == "success", result.errors
    record = result.outputs["save"]["images"][0]
    saved = folders.output_dir / record["filename"]
    assert record["filename"] == "prim_00001_.png"
    with Image.open(saved) as picture:
        assert picture.size == (3, 2)  # width = the image height (3), height keeps the 6:3 aspect
    chunks = read_png_text(saved)
    assert json.loads(chunks["prompt"])["save"]["inputs"]["filename_prefix"] == ["name", 0]
    assert json.loads(chunks["workflow"]) == workflow


def test_core_pack_registers_without_torch_at_import():
    import subprocess
    import sys

    code = ("import sys; from engine.core.registry import NodeRegistry; import nodes.core as c; "
            "r = NodeRegistry(c.NODES); print(len(r), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    count, torch_loaded = out.stdout.split()
    assert int(count) >= 27 and torch_loaded == "False"
