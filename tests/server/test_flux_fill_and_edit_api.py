"""POST /api/generate with FLUX.1 conditioning: fill and outpaint (flux-fill), Kontext edits (flux-kontext),
Redux style images and LoRAs on any FLUX.1 variant, validated like every other request."""

from __future__ import annotations


import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from engine.server.app import create_app
from engine.server.config import PROJECT_ROOT
from tests.support.conditioning import INPUTS
from tests.support.flux import zoo_base
from tests.support.server import generate_image, make_config, registry

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    import shutil

    from engine.backends.runtime import Runtime

    base = zoo_base()
    (base / "input").mkdir(exist_ok=True)
    for picture in INPUTS.glob("*.png"):
        shutil.copy(picture, base / "input" / picture.name)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[8:40, 8:40] = 255
    Image.fromarray(mask).save(base / "input" / "api_mask.png")
    runtime = Runtime.create(base_dir=base, registry=registry())
    return await aiohttp_client(create_app(runtime, make_config(tmp_path, workflows_dir=PROJECT_ROOT / "workflows"),
                                           queue=None))


def classes(graph: dict) -> list[str]:
    return sorted(node["class_type"] for node in graph.values())


async def test_fill_with_the_image_alpha_or_an_uploaded_mask_and_outpaint(client):
    graph, image = await generate_image(client, model="flux-fill", image="inpaint_example.png")
    assert image.shape == (64, 64, 3) and "InpaintModelConditioning" in classes(graph)
    masked, other = await generate_image(client, model="flux-fill", image="inpaint_example.png", mask="api_mask.png")
    assert "LoadImageMask" in classes(masked) and np.abs(other.astype(int) - image).mean() > 1
    graph, wide = await generate_image(client, model="flux-fill", image="outpaint_example.png",
                                       outpaint={"left": 16, "bottom": 16, "feathering": 0})
    assert wide.shape == (64, 64, 3) and "ImagePadForOutpaint" in classes(graph)


async def test_kontext_edit_with_two_references_takes_the_first_size_or_the_request(client):
    graph, image = await generate_image(client, model="flux-kontext",
                                        images=["kontext_reference_2.png", "kontext_reference_1.png"])
    assert image.shape == (48, 80, 3) and classes(graph).count("ReferenceLatent") == 2
    _, sized = await generate_image(client, model="flux-kontext", images=["kontext_reference_1.png"], width=48,
                                    height=32)
    assert sized.shape == (32, 48, 3)


async def test_style_images_and_stacked_loras_on_flux_dev(client):
    plain, base = await generate_image(client, model="flux-dev", width=64, height=64)
    graph, styled = await generate_image(client, model="flux-dev", width=64, height=64,
                                         style_images=["redux_style.png"], style_strength=1.0,
                                         loras=[{"name": "flux1-dev-tiny-lora-comfy.safetensors", "strength": 0.5},
                                                {"name": "flux1-dev-tiny-lora2-kohya.safetensors", "strength": -1}])
    assert classes(graph).count("LoraLoader") == 2 and "StyleModelApply" in classes(graph)
    assert np.abs(styled.astype(int) - base).mean() > 1
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
    assert graph[sampler["inputs"]["model"][0]]["class_type"] == "LoraLoader"
    negative = graph[sampler["inputs"]["negative"][0]]
    assert graph[negative["inputs"]["conditioning"][0]]["class_type"] == "CLIPTextEncode"  # no style there


@pytest.mark.parametrize("request_fields,message", [
    ({"model": "flux-fill"}, "'image' must be an image file name"),
    ({"model": "flux-dev", "image": "inpaint_example.png"}, "need \"model\": \"flux-fill\""),
    ({"model": "flux-fill", "image": "inpaint_example.png", "outpaint": {"left": -8}}, "'outpaint.left'"),
    ({"model": "flux-fill", "image": "inpaint_example.png", "outpaint": {}}, "extends no side"),
    ({"model": "flux-kontext"}, "flux-kontext edits need 'images'"),
    ({"model": "flux-dev", "style_images": "redux_style.png"}, "'style_images' must be a list"),
    ({"model": "flux-dev", "style_images": ["redux_style.png"], "style_strength": 11}, "'style_strength'"),
    ({"model": "flux-dev", "loras": [{"name": "x.safetensors", "strength": "high"}]}, "'loras[0].strength'"),
    ({"model": "flux-dev", "loras": [{"file": "x.safetensors"}]}, "'loras[0]' must be an object"),
])
async def test_bad_conditioning_fields_are_refused(client, request_fields, message):
    response = await client.post("/api/generate", json={"prompt": "x", **request_fields})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request" and message in error["message"]


async def test_missing_files_fail_validation_with_node_errors(client):
    for fields in ({"model": "flux-fill", "image": "no_such_image.png"},
                   {"model": "flux-dev", "loras": [{"name": "no_such_lora.safetensors", "strength": 1}]}):
        response = await client.post("/api/generate", json={"prompt": "x", **fields})
        assert response.status == 400
        assert (await response.json())["node_errors"], fields
