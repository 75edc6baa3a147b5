"""The shipped segmentation workflows, validated and run end to end on the tiny zoo through the executor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.flux import make_runtime, zoo_base
from tests.support.segmentation import present_class

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SIZE = 128


@pytest.fixture(scope="module")
def runtime():
    from engine.zoo.segmentation import write_tiny_segmenter

    base = zoo_base()
    write_tiny_segmenter(base / "models")
    rt = make_runtime()
    rt.folders.input_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    coarse = (rng.random((SIZE // 16 + 2, SIZE // 16 + 2, 3)) * 255).astype(np.uint8)
    Image.fromarray(coarse).resize((SIZE, SIZE), Image.BILINEAR).save(rt.folders.input_dir / "segment_example.png")
    return rt


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


def run(runtime, prompt: dict):
    checked = runtime.validate(prompt)
    assert checked.ok, (checked.error, checked.node_errors)
    result = runtime.executor.execute(checked.prompt, prompt_id="seg")
    assert result.status == "success", result.errors
    return result


def saved(runtime, result, node_id: str) -> list[np.ndarray]:
    images = result.outputs[node_id]["images"]
    return [np.asarray(Image.open(runtime.folders.output_dir / i["subfolder"] / i["filename"]))
            for i in images]


def test_segment_classes_workflow_saves_a_mask_and_a_preview(runtime):
    result = run(runtime, load("segment_classes.json"))
    [mask] = saved(runtime, result, "7")
    [preview] = saved(runtime, result, "9")
    assert mask.shape[:2] == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
    assert preview.shape[1] == SIZE and preview.shape[0] > SIZE  # legend below the image


def test_segment_inpaint_workflow_repaints_only_the_masked_class(runtime):
    prompt = load("segment_inpaint.json")
    prompt["14"]["inputs"]["class_name"] = present_class(runtime)
    prompt["14"]["inputs"].update(grow=0, feather=0)
    prompt["31"]["inputs"]["steps"] = 2
    result = run(runtime, prompt)
    [out] = saved(runtime, result, "9")
    original = np.asarray(Image.open(runtime.folders.input_dir / "segment_example.png"))
    changed = np.abs(out.astype(int) - original.astype(int)).max(axis=-1) > 0
    assert out.shape == original.shape
    assert 0.05 < changed.mean() < 0.95  # some pixels repainted, the rest composited back unchanged
    mask_prompt = {k: v for k, v in prompt.items() if k in ("1", "2", "3", "12", "13", "14")}
    mask_prompt["90"] = {"class_type": "MaskToImage", "inputs": {"mask": ["14", 0]}}
    mask_prompt["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0], "filename_prefix": "m"}}
    [mask] = saved(runtime, run(runtime, mask_prompt), "91")
    assert not changed[mask[..., 0] == 0].any()  # outside the class mask nothing moved
