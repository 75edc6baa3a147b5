"""Core image and mask nodes give ComfyUI's values on the same inputs.

Each expectation is worked out here by hand (or with plain PIL / torch calls) from ComfyUI's documented
behaviour, not with the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.core.context import NodeContext
from engine.core.folders import FolderPaths
from engine.media.images import center_crop_to_aspect, resize_images, tensor_to_pil
from nodes.core import image_io, image_ops, image_stitch, mask_ops

# 255 * x in float32, then truncated: 0.999 -> 254.745 -> 254 (rounding gave 255), 0.5 -> 127 (128).
LEVELS = [(0.5, 127), (0.999, 254), (0.25, 63), (0.1, 25), (-0.5, 0), (1.5, 255), (float("nan"), 0), (1.0, 255)]


@pytest.fixture
def ctx(tmp_path) -> NodeContext:
    folders = FolderPaths(tmp_path)
    folders.input_dir.mkdir(parents=True)
    return NodeContext(node_id="1", folders=folders)


def _levels_image() -> torch.Tensor:
    values = torch.tensor([value for value, _ in LEVELS], dtype=torch.float32)
    return values[None, None, :, None].expand(1, 1, len(LEVELS), 3).clone()


def test_float_to_8_bit_truncates_like_comfyui():
    picture = tensor_to_pil(_levels_image()[0])
    assert [picture.getpixel((i, 0))[0] for i in range(len(LEVELS))] == [level for _, level in LEVELS]


def test_saved_and_previewed_pngs_carry_truncated_levels(ctx):
    expected = [level for _, level in LEVELS]
    preview = image_io.preview_image(ctx, images=_levels_image()).ui["images"][0]
    saved = image_io.save_image(ctx, images=_levels_image(), filename_prefix="levels").ui["images"][0]
    for folder, record in ((ctx.folders.temp_dir, preview), (ctx.folders.output_dir, saved)):
        with Image.open(folder / record["subfolder"] / record["filename"]) as picture:
            assert [picture.convert("RGB").getpixel((i, 0))[0] for i in range(len(LEVELS))] == expected


def test_feather_mask_ramps_are_comfyuis():
    # ComfyUI 0.8.0: left/top line i gets (i + 1) / n; the right (bottom) ramp's factor i lands on line -i,
    # so factor 0 hits line 0 and the far ramp starts one line in.
    # 4x6 ones, left=2, right=3: column 0 gets 1/2 (left) and 1/3 (right, at -0); column 5 gets 2/3 and
    # column 4 gets 3/3. bottom=2 on 4 rows: row 0 gets 1/2, row 3 gets 2/2.
    (out,) = mask_ops.feather_mask(None, torch.ones(1, 4, 6), left=2, top=0, right=3, bottom=2)
    cols = [1 / 6, 1, 1, 1, 1, 2 / 3]
    rows = [1 / 2, 1, 1, 1]
    expected = [[r * c for c in cols] for r in rows]
    assert out[0].tolist() == [pytest.approx(row, abs=1e-6) for row in expected]


def test_feather_mask_far_edge_in_8_bit_levels():
    # A 64-wide mask feathered 40 on the right: the last column is 2/40 (level 12), then 3/40 (19); column 0
    # is scaled by 1/40 (level 6); columns 24..63-39 are untouched.
    (out,) = mask_ops.feather_mask(None, torch.ones(1, 1, 64), left=0, top=0, right=40, bottom=0)
    levels = np.asarray(tensor_to_pil(out[0]))[0]
    assert levels[63] == 12 and levels[62] == 19 and levels[0] == 6
    assert levels[24] == 255 and levels[25] == 255 and levels[26] == int(np.float32(39 / 40) * np.float32(255))


def test_center_crop_uses_comfyuis_margins():
    image = torch.arange(4 * 17, dtype=torch.float32).reshape(1, 4, 17, 1)
    # old aspect 17/4 = 4.25, new 17/16: margin round((17 - 17 * 0.25) / 2) = round(6.375) = 6 on each side,
    # keeping columns 6..10 (5 columns, not the 4 a crop to round(4 * 1.0625) would keep).
    assert torch.equal(center_crop_to_aspect(image, 17 / 16), image[:, :, 6:11])
    (scaled,) = image_ops.image_scale(None, image.expand(1, 4, 17, 3), "nearest-exact", 17, 16, "center")
    expected = F.interpolate(image[:, :, 6:11].movedim(-1, 1), size=(16, 17), mode="nearest-exact").movedim(1, -1)
    assert torch.equal(scaled[..., :1], expected)


def test_lanczos_goes_through_truncated_8_bit_pil_images():
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(1, 9, 11, 3, generator=generator)
    image[0, 0, 0] = 0.999  # rounds to 255 but truncates to 254
    out = resize_images(image, 7, 5, "lanczos")
    as_bytes = np.floor(image[0].numpy().astype(np.float64) * 255).astype(np.uint8)
    expected = np.asarray(Image.fromarray(as_bytes).resize((7, 5), Image.Resampling.LANCZOS)).astype(np.float32)
    assert torch.equal(out[0], torch.from_numpy(expected / 255.0))


def test_bicubic_is_torchs_without_clamping():
    image = (torch.rand(1, 6, 6, 3, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    out = resize_images(image, 13, 11, "bicubic")
    expected = F.interpolate(image.movedim(-1, 1), size=(11, 13), mode="bicubic").movedim(1, -1)
    assert torch.equal(out, expected) and out.max() > 1.0


def test_composite_uses_comfyuis_arithmetic():
    generator = torch.Generator().manual_seed(7)
    destination, source = torch.rand(1, 8, 8, 3, generator=generator), torch.rand(1, 8, 8, 3, generator=generator)
    mask = torch.rand(1, 8, 8, generator=generator)
    (out,) = image_ops.image_composite_masked(None, destination, source, 0, 0, False, mask)
    weight = mask[..., None]
    assert torch.equal(out, weight * source + (torch.ones_like(weight) - weight) * destination)


def test_outpaint_feathering_is_computed_in_double_then_stored_as_float32():
    height, width, feathering = 12, 14, 5
    _, mask = image_ops.image_pad_for_outpaint(None, torch.ones(1, height, width, 3), 8, 8, 0, 8, feathering)
    expected = torch.zeros(height, width, dtype=torch.float32)
    for i in range(height):
        for j in range(width):
            d = min(i, height - i, j, width)  # top, bottom and left padded; the right side is not
            if d < feathering:
                expected[i, j] = ((feathering - d) / feathering) ** 2
    assert torch.equal(mask[0, 8:8 + height, 8:8 + width], expected)


def test_image_stitch_sizes_spacing_and_batches_as_comfyui():
    first = torch.zeros(1, 10, 10, 3)
    second = torch.ones(1, 3, 5, 3)
    # image2 becomes int(10 * 5 / 3) = 16 wide (not round's 17); an odd spacing 3 becomes 4.
    (out,) = image_stitch.image_stitch(None, first, "right", True, 3, "red", second)
    assert out.shape == (1, 10, 10 + 4 + 16, 3)
    assert out[0, 0, 10].tolist() == [1.0, 0.0, 0.0] and out[0, 0, 13].tolist() == [1.0, 0.0, 0.0]
    # A shorter batch is completed with its last image: [a, b] -> [a, b, b].
    batch1 = torch.zeros(3, 2, 2, 3)
    batch2 = torch.stack([torch.full((2, 2, 3), 0.25), torch.full((2, 2, 3), 0.75)])
    (stacked,) = image_stitch.image_stitch(None, batch1, "down", False, 0, "white", batch2)
    assert stacked[:, 2:, 0, 0].tolist() == [[0.25, 0.25], [0.75, 0.75], [0.75, 0.75]]


def test_mask_composite_clamps_even_without_overlap():
    destination = torch.full((1, 2, 2), 1.5)
    (out,) = mask_ops.mask_composite(None, destination, torch.ones(1, 2, 2), 5, 5, "add")
    assert torch.equal(out, torch.ones(1, 2, 2))
