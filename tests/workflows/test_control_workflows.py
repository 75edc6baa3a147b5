"""The shipped structural-control workflows (flux_depth, flux_canny_lora, flux_controlnet_union) run on the tiny
zoo from the CLI and through the server: each preprocesses workflows/inputs/control_photo.png, then generates."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from engine import cli
from engine.server.app import create_app
from engine.server.config import PROJECT_ROOT
from tests.support.conditioning import INPUTS
from tests.support.flux import zoo_base
from tests.support.server import generate_image, make_config, registry, wait_for_job

pytestmark = pytest.mark.usefixtures("single_torch_thread")

WORKFLOWS = PROJECT_ROOT / "workflows"
NAMES = {"flux_depth.json": "DepthAnythingV2Preprocessor", "flux_canny_lora.json": "Canny",
         "flux_controlnet_union.json": "ControlNetApplyAdvanced"}
SAVE_NODE = "14"


def base_with_inputs():
    base = zoo_base()
    (base / "input").mkdir(exist_ok=True)
    for picture in INPUTS.glob("control_photo*.png"):
        shutil.copy(picture, base / "input" / picture.name)
    return base


@pytest.mark.parametrize("name", sorted(NAMES))
def test_the_workflow_runs_from_the_cli(name, tmp_path, capsys):
    workflow = json.loads((WORKFLOWS / name).read_text())
    assert NAMES[name] in {node["class_type"] for node in workflow.values()}
    code = cli.main(["run", str(WORKFLOWS / name), "--base-dir", str(base_with_inputs()), "--output-dir",
                     str(tmp_path), "--set", "12.steps=3"])
    assert code == 0, capsys.readouterr().err
    (saved,) = tmp_path.glob(f"{name.removesuffix('.json')}_*.png")
    with Image.open(saved) as image:
        assert image.size == (64, 64)
        assert json.loads(image.info["prompt"])["12"]["inputs"]["steps"] == 3


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    from engine.backends.runtime import Runtime

    runtime = Runtime.create(base_dir=base_with_inputs(), registry=registry())
    return await aiohttp_client(create_app(runtime, make_config(tmp_path, workflows_dir=WORKFLOWS), queue=None))


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NAMES))
async def test_the_workflow_runs_through_the_server(client, name):
    workflow = json.loads((WORKFLOWS / name).read_text())
    workflow["12"]["inputs"]["steps"] = 2
    response = await client.post("/prompt", json={"prompt": workflow, "client_id": "control"})
    assert response.status == 200, await response.text()
    prompt_id = (await response.json())["prompt_id"]
    job = await wait_for_job(client, prompt_id, timeout=120)
    assert job["status"] == "completed", job
    entry = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
    (record,) = entry["outputs"][SAVE_NODE]["images"]
    raw = await (await client.get("/view", params=record)).read()
    image = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    assert image.shape == (64, 64, 3) and image.std() > 1  # an image, not a flat fill


async def generate(client, **request) -> tuple[dict, np.ndarray]:
    graph, image = await generate_image(client, width=64, height=64, **request)
    return graph, image.astype(int)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_api_generate_takes_a_depth_or_canny_control(client):
    _, plain = await generate(client, model="flux-dev")
    graph, depth = await generate(client, model="flux-dev", control={"image": "control_photo.png", "type": "depth"})
    classes = sorted(node["class_type"] for node in graph.values())
    assert {"DepthAnythingV2Preprocessor", "ControlNetLoader", "SetUnionControlNetType",
            "ControlNetApplyAdvanced"} <= set(classes)
    union = next(n for n in graph.values() if n["class_type"] == "SetUnionControlNetType")
    assert union["inputs"]["type"] == "depth"
    graph, canny = await generate(client, model="flux-dev",
                                  control={"image": "control_photo.png", "type": "canny", "strength": 0.5})
    assert "Canny" in {node["class_type"] for node in graph.values()}
    apply = next(n for n in graph.values() if n["class_type"] == "ControlNetApplyAdvanced")
    assert apply["inputs"]["strength"] == 0.5
    assert np.abs(depth - plain).mean() > 1 and np.abs(canny - depth).mean() > 1


@pytest.mark.asyncio
async def test_api_generate_takes_a_control_on_schnell_too(client):
    """schnell's workflow guides with BasicGuider (one conditioning): the control goes on it."""
    _, plain = await generate(client, model="flux-schnell")
    graph, canny = await generate(client, model="flux-schnell", control={"image": "control_photo.png",
                                                                          "type": "canny"})
    apply_id, apply = next((k, n) for k, n in graph.items() if n["class_type"] == "ControlNetApplyAdvanced")
    guider = next(n for n in graph.values() if n["class_type"] == "BasicGuider")
    assert guider["inputs"]["conditioning"] == [apply_id, 0]
    assert np.abs(canny - plain).mean() > 1


@pytest.mark.asyncio
@pytest.mark.parametrize("control,message", [
    ("control_photo.png", "'control' must be an object"),
    ({"image": "control_photo.png", "type": "pose"}, "'control.type'"),
    ({"image": "control_photo.png", "type": "depth", "strength": 11}, "'control.strength'"),
    ({"type": "depth"}, "'control.image'"),
    ({"image": "control_photo.png", "type": "depth", "strenght": 0.5}, "unknown key(s) 'strenght'"),
])
async def test_bad_control_fields_are_refused(client, control, message):
    response = await client.post("/api/generate", json={"prompt": "x", "model": "flux-dev", "control": control})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request" and message in error["message"]


@pytest.mark.asyncio
async def test_control_on_a_variant_without_it_is_refused(client):
    response = await client.post("/api/generate", json={"prompt": "x", "model": "flux-fill", "image":
                                                        "control_photo.png", "control": {"image": "control_photo.png",
                                                                                         "type": "depth"}})
    assert response.status == 400
    assert "'control' works with" in (await response.json())["error"]["message"]
