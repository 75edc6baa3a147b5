"""The shipped FLUX workflows run offline on the tiny zoo and save PNGs with the prompt embedded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.support.flux import make_runtime, run_prompt, txt2img_prompt

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


@pytest.mark.parametrize("name,size", [("flux_dev_txt2img.json", (256, 256)),
                                       ("flux_schnell_txt2img.json", (256, 256))])
def test_shipped_workflow_runs_and_saves_a_png_with_the_prompt(name, size):
    runtime = make_runtime()
    workflow = json.loads((WORKFLOWS / name).read_text())
    checked = runtime.validate(workflow)
    assert checked.ok, (checked.error, checked.node_errors)
    result = runtime.executor.execute(checked.prompt, prompt_id=name)
    assert result.status == "success", result.errors
    (saved,) = result.outputs["9"]["images"]
    path = runtime.folders.output_dir / saved["subfolder"] / saved["filename"]
    with Image.open(path) as image:
        assert image.size == size
        embedded = json.loads(image.info["prompt"])
    assert embedded["10"]["class_type"] == "UNETLoader"


def test_fp8_weight_storage_samples_close_to_full_precision():
    runtime = make_runtime()
    full, _ = run_prompt(runtime, txt2img_prompt("dev", steps=3))
    graph = txt2img_prompt("dev", steps=3)
    graph["1"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    fp8, _ = run_prompt(runtime, graph)
    difference = float((full - fp8).abs().mean())
    assert 0 < difference < 0.05  # quantised weights: close, not identical


def test_the_shipped_workflows_validate_against_the_zoo():
    runtime = make_runtime()
    for name in ("flux_dev_txt2img.json", "flux_schnell_txt2img.json"):
        checked = runtime.validate(json.loads((WORKFLOWS / name).read_text()))
        assert checked.ok, (name, checked.error, checked.node_errors)
