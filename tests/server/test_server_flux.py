"""The tiny FLUX round trip through the server: /api/generate and /prompt -> websocket -> /view -> /history.

Runs the shipped workflows/flux_schnell_txt2img.json on the tiny random zoo (`write_tiny_zoo`), at 64x64 with
two steps to stay fast on a CPU.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from engine.server.app import create_app
from engine.server.config import PROJECT_ROOT
from engine.recipes.variants import load_workflow
from tests.support.server import make_config, messages_until_done, receive_json, registry

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
WORKFLOWS = PROJECT_ROOT / "workflows"


@pytest.fixture(scope="module")
def zoo_base():
    if not (WORKFLOWS / "flux_schnell_txt2img.json").is_file():
        pytest.fail("workflows/flux_schnell_txt2img.json is missing")
    from tests.support.flux import zoo_base as shared_zoo

    return shared_zoo()  # the tiny zoo written once per process


@pytest_asyncio.fixture
async def client(aiohttp_client, zoo_base, tmp_path):
    from engine.backends.runtime import Runtime

    runtime = Runtime.create(base_dir=zoo_base, registry=registry())
    config = make_config(tmp_path, workflows_dir=WORKFLOWS)
    return await aiohttp_client(create_app(runtime, config, queue=None))


async def fetch_image(client, record) -> np.ndarray:
    response = await client.get("/view", params=record)
    assert response.status == 200 and response.headers["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(await response.read())).convert("RGB"), dtype=np.float32) / 255.0


async def test_generate_runs_the_tiny_flux_workflow_end_to_end(client):
    variants = await (await client.get("/api/generate/variants")).json()
    assert {"flux-schnell", "flux-dev"} <= set(variants["installed"])
    ws = await client.ws_connect("/ws?clientId=flux")
    await receive_json(ws)

    request = {"prompt": "a lighthouse at night", "model": "flux-schnell", "width": 64, "height": 64, "steps": 2,
               "seed": 3, "guidance": 2.0, "client_id": "flux"}
    response = await client.post("/api/generate", json=request)
    assert response.status == 200, await response.text()
    queued = await response.json()
    assert queued["variant"] == "flux-schnell" and queued["seed"] == 3
    assert queued["ignored"] == ["guidance"]  # schnell's workflow has no guidance node
    messages = await messages_until_done(ws, queued["prompt_id"], timeout=120)
    kinds = [m["type"] for m in messages]
    assert kinds[:4] == ["status", "status", "execution_start", "execution_cached"]
    assert kinds[-3:] == ["execution_success", "status", "executing"]
    progress = [(m["data"]["value"], m["data"]["max"]) for m in messages if m["type"] == "progress"]
    assert (2, 2) in progress  # the sampler's two steps
    executed = [m["data"] for m in messages if m["type"] == "executed"]
    assert [e["node"] for e in executed] == ["9"]
    record = executed[0]["output"]["images"][0]
    image = await fetch_image(client, record)
    assert image.shape == (64, 64, 3)

    entry = (await (await client.get(f"/history/{queued['prompt_id']}")).json())[queued["prompt_id"]]
    assert entry["outputs"]["9"]["images"] == [record] and entry["status"]["status_str"] == "success"
    stored = entry["prompt"][2]
    assert stored["6"]["inputs"]["text"] == "a lighthouse at night"
    assert stored["5"]["inputs"]["width"] == 64 and stored["17"]["inputs"]["steps"] == 2
    assert stored["25"]["inputs"]["noise_seed"] == 3

    # The request's prompt and seed reach the model: changing either moves the image.
    other = await (await client.post("/api/generate", json={**request, "prompt": "a red bicycle"})).json()
    reseeded = await (await client.post("/api/generate", json={**request, "seed": 4})).json()
    for changed in (other, reseeded):
        moved = [m for m in await messages_until_done(ws, changed["prompt_id"], timeout=120)
                 if m["type"] == "executed"][0]["data"]["output"]["images"][0]
        assert np.abs(await fetch_image(client, moved) - image).mean() > 0.001
    await ws.close()


async def test_the_shipped_workflow_queues_over_prompt_and_unknown_variants_list_installed(client):
    workflow = load_workflow(WORKFLOWS / "flux_schnell_txt2img.json")
    workflow["5"]["inputs"].update(width=64, height=64)
    workflow["17"]["inputs"]["steps"] = 1
    ws = await client.ws_connect("/ws?clientId=api")
    await receive_json(ws)
    queued = await (await client.post("/prompt", json={"prompt": workflow, "client_id": "api"})).json()
    messages = await messages_until_done(ws, queued["prompt_id"], timeout=120)
    assert "execution_success" in [m["type"] for m in messages]

    response = await client.post("/api/generate", json={"prompt": "x", "model": "flux-ultra"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "unknown_variant" and "flux-schnell" in error["details"]
    assert "flux-schnell" in error["extra_info"]["installed"]
    await ws.close()


async def test_a_variant_whose_models_are_missing_is_not_installed(client, zoo_base, tmp_path):
    workflows = tmp_path / "wf"
    workflows.mkdir()
    workflow = json.loads((WORKFLOWS / "flux_schnell_txt2img.json").read_text())
    workflow["10"]["inputs"]["unet_name"] = "flux1-pro-missing.safetensors"
    (workflows / "flux_pro_txt2img.json").write_text(json.dumps(workflow))
    from engine.server.state import STATE

    client.app[STATE].config.workflows_dir = workflows
    response = await client.post("/api/generate", json={"prompt": "x", "model": "flux-pro"})
    error = (await response.json())["error"]
    assert response.status == 400 and "models files are missing" not in error["message"]
    assert "its model files are missing" in error["message"] and error["extra_info"]["known"] == ["flux-pro"]
