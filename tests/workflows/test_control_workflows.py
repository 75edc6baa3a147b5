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
from tests.support.server import make_config, registry, wait_for_job

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
