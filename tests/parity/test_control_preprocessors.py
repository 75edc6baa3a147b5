"""Control-image preprocessors against their references: Canny against kornia's `canny` (what ComfyUI's node
calls), DepthAnythingV2Preprocessor against transformers' depth-estimation pipeline over the same tiny folder.

The pipeline normalises each depth map min-max like ours, then truncates it to 8 bits: our float map equals
its normalised `predicted_depth` to float precision and its `depth` image to within one 8-bit step.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.conditioning import INPUTS, SENSITIVITY, input_image, mean_diff, run_graph, runtime_with_inputs
from tests.support.flux import zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DEPTH_FOLDER = "depth-anything-v2-tiny"
DEPTH_FILE = "depth_anything_v2_tiny.safetensors"
RESOLUTION = 70  # the tiny folder's processor size


@pytest.fixture(scope="module")
def runtime():
    return runtime_with_inputs()


def preprocess_graph(image: str, node: dict) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {**node, "inputs": {"image": ["1", 0], **node["inputs"]}},
            "3": {"class_type": "CaptureImage", "inputs": {"images": ["2", 0], "key": "out"}}}


def canny_node(low: float = 0.4, high: float = 0.8) -> dict:
    return {"class_type": "Canny", "inputs": {"low_threshold": low, "high_threshold": high}}


def depth_node(ckpt: str = DEPTH_FOLDER, resolution: int = RESOLUTION) -> dict:
    return {"class_type": "DepthAnythingV2Preprocessor", "inputs": {"ckpt_name": ckpt, "resolution": resolution}}


@pytest.mark.parametrize("low,high", [(0.4, 0.8), (0.1, 0.3)])
def test_canny_equals_kornia(runtime, low, high):
    from kornia.filters import canny

    ours, _ = run_graph(runtime, preprocess_graph("control_photo.png", canny_node(low, high)))
    image, _ = input_image("control_photo.png")
    _, edges = canny(image.permute(0, 3, 1, 2), low, high)
    assert ours.shape == (1, 64, 64, 3)
    assert torch.equal(ours, edges.repeat(1, 3, 1, 1).permute(0, 2, 3, 1))
    assert 0.01 < float(ours.mean()) < 0.5  # edges found, not everything


@functools.lru_cache(maxsize=None)
def depth_pipeline():
    from transformers import pipeline

    return pipeline("depth-estimation", model=str(zoo_base() / "models/depth" / DEPTH_FOLDER), device="cpu")


@pytest.mark.parametrize("picture", ["control_photo.png", "kontext_reference_2.png"])  # square and 80x48
def test_depth_anything_matches_the_transformers_pipeline(runtime, picture):
    ours, _ = run_graph(runtime, preprocess_graph(picture, depth_node()))
    with Image.open(INPUTS / picture) as image:
        result = depth_pipeline()(image.convert("RGB"))
    predicted = result["predicted_depth"].squeeze()
    normalised = (predicted - predicted.min()) / (predicted.max() - predicted.min())
    height, width = normalised.shape
    assert ours.shape == (1, height, width, 3)
    assert torch.equal(ours[..., 0], ours[..., 2])
    assert float((ours[0, ..., 0] - normalised).abs().max()) <= 1e-5
    eight_bit = torch.from_numpy(np.asarray(result["depth"], dtype=np.float32) / 255)
    assert float((ours[0, ..., 0] - eight_bit).abs().max()) <= 1 / 255 + 1e-6


def test_a_single_file_gives_the_folders_depth(runtime):
    folder, _ = run_graph(runtime, preprocess_graph("control_photo.png", depth_node(DEPTH_FOLDER)))
    single, _ = run_graph(runtime, preprocess_graph("control_photo.png", depth_node(DEPTH_FILE)))
    assert torch.equal(folder, single)


def test_the_depth_follows_the_image_and_the_resolution(runtime):
    first, _ = run_graph(runtime, preprocess_graph("control_photo.png", depth_node()))
    second, _ = run_graph(runtime, preprocess_graph("control_photo_2.png", depth_node()))
    larger, _ = run_graph(runtime, preprocess_graph("control_photo.png", depth_node(resolution=128)))
    assert mean_diff(first, second) >= SENSITIVITY
    assert larger.shape == first.shape and mean_diff(first, larger) >= SENSITIVITY
