"""FLUX.2 through the server: GET /api/variants (defaults per variant), POST /api/generate with the flux2-klein-4b
and flux2-dev variants on the tiny zoo, with reference images, and its refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from engine.server.app import create_app
from engine.server.config import PROJECT_ROOT
from engine.recipes.variants import add_reference_images, known_variants, load_workflow
from tests.support.flux2 import write_reference_image
from tests.support.flux import zoo_base
from tests.support.server import make_config, registry, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_torch_thread")]
WORKFLOWS = PROJECT_ROOT / "workflows"


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    from engine.backends.runtime import Runtime

    runtime = Runtime.create(base_dir=zoo_base(), registry=registry())
    write_reference_image(runtime.folders.input_dir, "flux2_server_ref.png", 64, 80, seed=7)
    return await aiohttp_client(create_app(runtime, make_config(tmp_path, workflows_dir=WORKFLOWS), queue=None))


async def _image_of(client, prompt_id: str) -> np.ndarray:
    entry = await wait_for_job(client, prompt_id, timeout=120)
    assert entry["status"] == "completed", entry
    history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
    record = next(iter(history["outputs"].values()))["images"][0]
    response = await client.get("/view", params=record)
    return np.asarray(Image.open(io.BytesIO(await response.read())).convert("RGB"), dtype=np.float32) / 255


def test_variant_names_and_workflow_files():
    assert {"flux-dev", "flux-schnell", "flux2-dev", "flux2-klein-4b", "flux2-klein-9b"} <= set(
        known_variants(WORKFLOWS))


@pytest.mark.asyncio
async def test_variants_lists_installed_ones_with_their_defaults(client):
    body = await (await client.get("/api/variants")).json()
    variants = {v["name"]: v for v in body["variants"]}
    klein, dev, big = variants["flux2-klein-4b"], variants["flux2-dev"], variants["flux2-klein-9b"]
    assert klein["installed"] and dev["installed"] and not big["installed"]  # 9B names the released files
    assert klein["defaults"] == {"steps": 4, "cfg": 1.0, "width": 256, "height": 256}
    assert dev["defaults"] == {"steps": 20, "guidance": 4.0, "cfg": 1.0, "width": 256, "height": 256}
    assert big["defaults"]["width"] == 1024 and big["family"] == "flux2"
    assert klein["reference_images"] == 10 and variants["flux-dev"]["reference_images"] == 0
    assert variants["flux-dev"]["defaults"]["guidance"] == 3.5
    assert set(body["installed"]) == {name for name, v in variants.items() if v["installed"]}


@pytest.mark.asyncio
async def test_generate_runs_klein_and_dev_and_reference_images_change_the_result(client):
    request = {"prompt": "a lighthouse at night", "model": "flux2-klein-4b", "width": 64, "height": 64,
               "steps": 2, "seed": 3}
    plain = await (await client.post("/api/generate", json=request)).json()
    assert plain["variant"] == "flux2-klein-4b" and plain["ignored"] == []
    image = await _image_of(client, plain["prompt_id"])
    assert image.shape == (64, 64, 3)
    edited = await client.post("/api/generate", json={**request, "images": ["flux2_server_ref.png"]})
    assert edited.status == 200, await edited.text()
    with_reference = await _image_of(client, (await edited.json())["prompt_id"])
    assert np.abs(with_reference - image).mean() > 0.01
    dev = await (await client.post("/api/generate", json={**request, "model": "flux2-dev", "guidance": 2.0})).json()
    assert dev["ignored"] == [] and (await _image_of(client, dev["prompt_id"])).shape == (64, 64, 3)


@pytest.mark.parametrize("change,message", [
    ({"model": "flux-schnell", "images": ["flux2_server_ref.png"]}, "takes no reference images"),
    ({"images": "flux2_server_ref.png"}, "'images' must be a list"),
    ({"images": ["a.png"] * 11}, "at most 10 reference images"),
    ({"cfg": -1}, "'cfg' must be a number"),
])
@pytest.mark.asyncio
async def test_generate_refuses_bad_reference_requests(client, change, message):
    request = {"prompt": "x", "model": "flux2-klein-4b", "steps": 1, **change}
    response = await client.post("/api/generate", json=request)
    assert response.status == 400
    assert message in (await response.json())["error"]["message"]


@pytest.mark.asyncio
async def test_a_missing_reference_file_fails_validation_on_its_load_node(client):
    response = await client.post("/api/generate", json={"prompt": "x", "model": "flux2-klein-4b",
                                                        "images": ["nowhere.png"]})
    assert response.status == 400
    body = await response.json()
    assert [e["class_type"] for e in body["node_errors"].values()] == ["LoadImage"]


def test_references_are_chained_onto_positive_and_negative():
    workflow = load_workflow(WORKFLOWS / "flux2_klein_txt2img.json")
    graph = add_reference_images(workflow, ["a.png", "b.png"])
    guider = graph["22"]["inputs"]
    for side, origin in (("positive", "6"), ("negative", "7")):
        second = graph[guider[side][0]]
        first = graph[second["inputs"]["conditioning"][0]]
        assert second["class_type"] == first["class_type"] == "ReferenceLatent"
        assert first["inputs"]["conditioning"] == [origin, 0]
        images = [graph[graph[graph[n["inputs"]["latent"][0]]["inputs"]["pixels"][0]]["inputs"]["image"][0]]
                  for n in (first, second)]
        assert [i["inputs"]["image"] for i in images] == ["a.png", "b.png"]
    assert workflow == load_workflow(WORKFLOWS / "flux2_klein_txt2img.json")  # the original is untouched
