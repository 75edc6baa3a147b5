"""UI-format workflows with the real node packs: the FLUX fixture converts and validates, UI workflows run from
the CLI and from the PNG they saved, a Primitive into ComfySwitchNode runs, and the FLUX fixture runs on the
tiny zoo (tests/workflow/test_ui_workflow.py covers the converter with schemas of its own)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.core.registry import NodeRegistry
from tests.support.ui_workflows import FIXTURES, Ui, load_fixture
from engine.workflow.convert import (ui_to_api)



# --- with the real node packs ------------------------------------------------------------------------------

def _real_registry() -> NodeRegistry:
    real = NodeRegistry().discover("nodes")
    needed = {"UNETLoader", "DualCLIPLoader", "VAELoader", "CLIPTextEncode", "FluxGuidance", "EmptySD3LatentImage",
              "KSampler", "VAEDecode", "SaveImage"}
    assert needed <= set(real.names()), f"node packs fail to load: {real.failed}"
    return real


def test_flux_fixture_converts_and_validates_with_the_real_nodes(tmp_path):
    from engine.core.folders import FolderPaths
    from engine.core.validate import validate_prompt

    real = _real_registry()
    folders = FolderPaths(tmp_path)
    for folder, name in (("diffusion_models", "flux1-dev.safetensors"), ("text_encoders", "clip_l.safetensors"),
                         ("text_encoders", "t5xxl_fp16.safetensors"), ("vae", "ae.safetensors")):
        (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / folder / name).write_bytes(b"")
    prompt = ui_to_api(load_fixture("flux_dev_txt2img.json"), real, choice_env=folders)
    expected = load_fixture("flux_dev_txt2img.api.json")
    for entry in expected.values():  # our optional t5_max_length widget (docs/flux.md) at its ComfyUI-like default
        if entry["class_type"] == "CLIPTextEncode":
            entry["inputs"]["t5_max_length"] = 0
    assert prompt == expected
    result = validate_prompt(prompt, real, folders)
    assert result.ok, (result.error, result.node_errors)
    assert result.outputs == ["9"]


def test_ui_workflow_runs_from_the_cli_and_again_from_the_png_it_saved(tmp_path, capsys):
    """`fluxgraph run ui.json`, then `fluxgraph run image.png` with only the UI `workflow` chunk in it."""
    from PIL import Image, PngImagePlugin

    from engine.cli import main

    workflow_path = tmp_path / "invert.json"
    workflow_path.write_text((FIXTURES / "core_invert_subgraph.json").read_text(encoding="utf-8"))
    assert main(["run", str(workflow_path), "--base-dir", str(tmp_path)]) == 0
    first = tmp_path / "output" / "ui_run" / "cyan_00001_.png"
    with Image.open(first) as saved:
        chunks = dict(saved.text)
        pixels = saved.convert("RGB")
        assert pixels.size == (32, 48)  # width came from the PrimitiveNode, not the widget's 64
        assert pixels.getpixel((5, 5)) == (0, 255, 255)  # red inverted once, in the subgraph
    assert json.loads(chunks["workflow"]) == load_fixture("core_invert_subgraph.json")
    assert set(json.loads(chunks["prompt"])) == {"1", "4:1", "5"}
    assert not (tmp_path / "output" / "ui_run" / "never_00001_.png").exists()  # the muted branch

    only_workflow = PngImagePlugin.PngInfo()
    only_workflow.add_text("workflow", chunks["workflow"])
    png_path = tmp_path / "from_editor.png"
    Image.open(first).save(png_path, pnginfo=only_workflow)
    assert main(["run", str(png_path), "--base-dir", str(tmp_path)]) == 0
    with Image.open(tmp_path / "output" / "ui_run" / "cyan_00002_.png") as again, Image.open(first) as before:
        assert list(again.convert("RGB").getdata()) == list(before.convert("RGB").getdata())


def test_primitive_int_into_a_switch_converts_validates_and_runs(tmp_path):
    from engine.backends.runtime import Runtime

    runtime = Runtime.create(tmp_path, registry=_real_registry())
    ui = Ui()
    ui.add(1, "PrimitiveInt", [24, "fixed"], outputs=["INT"])
    ui.add(2, "PrimitiveInt", [40, "fixed"], outputs=["INT"])
    ui.add(3, "PrimitiveBoolean", [True], outputs=["BOOLEAN"])
    ui.add(4, "ComfySwitchNode", [], inputs=[("switch", "BOOLEAN", "switch"), ("on_false", "*"), ("on_true", "*")],
           outputs=["*"])
    ui.add(5, "EmptyImage", [64, 16, 1, 0xFF0000], inputs=[("width", "INT", "width")], outputs=["IMAGE"])
    ui.add(6, "SaveImage", ["switched"], inputs=[("images", "IMAGE")])
    ui.connect(3, 0, 4, "switch")
    ui.connect(1, 0, 4, "on_false")
    ui.connect(2, 0, 4, "on_true")
    ui.connect(4, 0, 5, "width")
    ui.connect(5, 0, 6, "images")
    prompt = ui_to_api(ui.json(), runtime.registry, choice_env=runtime.folders)
    assert prompt["4"]["inputs"]["on_true"] == ["2", 0] and prompt["2"]["class_type"] == "PrimitiveInt"
    result = runtime.validate(prompt)
    assert result.ok, (result.error, result.node_errors)
    outcome = runtime.executor.execute(result.prompt, "switch", outputs=result.outputs)
    assert outcome.status == "success", outcome.error
    record = outcome.outputs["6"]["images"][0]
    from PIL import Image

    with Image.open(runtime.folders.output_dir / record["subfolder"] / record["filename"]) as image:
        assert image.size == (40, 16)  # on_true's PrimitiveInt, through the switch


TINY_NAMES = {38: ["flux1-dev-tiny.safetensors", "default"],
              40: ["clip_l-tiny.safetensors", "t5xxl-tiny.safetensors", "flux", "default"],
              39: ["ae-tiny.safetensors"], 27: [64, 64, 1]}


def _tiny_flux_workflow(prompt_text: str | None = None) -> dict:
    """The FLUX dev fixture pointed at the tiny zoo, 64x64 and 2 steps."""
    workflow = load_fixture("flux_dev_txt2img.json")
    for ui_node in workflow["nodes"]:
        if ui_node["id"] in TINY_NAMES:
            ui_node["widgets_values"] = TINY_NAMES[ui_node["id"]]
        if ui_node["id"] == 31:
            ui_node["widgets_values"][2] = 2
        if ui_node["id"] == 50 and prompt_text is not None:
            ui_node["widgets_values"][0] = prompt_text
    return workflow


@pytest.fixture(scope="module")
def tiny_runtime():
    _real_registry()
    from engine.backends.runtime import Runtime
    from tests.support.flux import zoo_base

    return Runtime.create(zoo_base())  # the tiny zoo written once per process


def _run_tiny(runtime, workflow: dict):
    from PIL import Image

    prompt = ui_to_api(workflow, runtime.registry, choice_env=runtime.folders)
    result = runtime.validate(prompt)
    assert result.ok, (result.error, result.node_errors)
    outcome = runtime.executor.execute(result.prompt, "ui-tiny", outputs=result.outputs,
                                       extra_data={"extra_pnginfo": {"workflow": workflow}})
    assert outcome.status == "success", outcome.error
    record = outcome.outputs["9"]["images"][0]
    with Image.open(runtime.folders.output_dir / record["subfolder"] / record["filename"]) as image:
        assert json.loads(image.text["workflow"]) == workflow
        return prompt, np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def test_flux_fixture_runs_on_the_tiny_zoo_and_the_promoted_prompt_matters(tiny_runtime):
    prompt, image = _run_tiny(tiny_runtime, _tiny_flux_workflow())
    assert image.shape == (64, 64, 3)
    assert prompt["31"]["inputs"]["steps"] == 2 and prompt["38"]["inputs"]["unet_name"] == "flux1-dev-tiny.safetensors"
    # The subgraph instance's own text (a promoted widget) reaches the text encoder inside the subgraph.
    _, other = _run_tiny(tiny_runtime, _tiny_flux_workflow("a lighthouse on a cliff at night, oil painting"))
    assert float(np.abs(image - other).mean()) >= 0.01
