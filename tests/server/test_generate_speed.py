"""/api/generate's `speed` preset (engine/recipes/speed.py): exact leaves the shipped graph alone; fast and
fastest put a FirstBlockCache in front of every sampler's model, after any LoRA; the run reports its
skipped steps on the websocket."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from engine.recipes.errors import RecipeError
from engine.recipes.speed import PRESETS, apply_speed, parse_speed
from engine.server.app import create_app
from engine.server.config import PROJECT_ROOT
from tests.support.flux import zoo_base
from tests.support.server import make_config, messages_until_done, receive_json, registry

WORKFLOWS = PROJECT_ROOT / "workflows"
TXT2IMG = sorted(WORKFLOWS.glob("flux*_txt2img.json"))


def _samplers(graph: dict) -> list[dict]:
    return [n for n in graph.values() if n["class_type"] in ("KSampler", "KSamplerAdvanced", "CFGGuider",
                                                               "BasicGuider")]


@pytest.mark.parametrize("path", TXT2IMG, ids=lambda p: p.stem)
@pytest.mark.parametrize("speed", ["fast", "fastest"])
def test_presets_put_the_cache_in_front_of_every_sampler(path, speed):
    graph = json.loads(path.read_text())
    models_before = [n["inputs"]["model"] for n in _samplers(graph)]
    sped = apply_speed(json.loads(path.read_text()), speed)
    caches = {k: n for k, n in sped.items() if n["class_type"] == "FirstBlockCache"}
    assert len(caches) == len({tuple(m) for m in models_before}) >= 1
    for sampler, before in zip(_samplers(sped), models_before):
        cache = sped[sampler["inputs"]["model"][0]]
        assert cache["inputs"] == {"model": before, "threshold": PRESETS[speed][1]["threshold"]}


def test_exact_is_the_default_and_unknown_presets_are_refused():
    graph = json.loads(TXT2IMG[0].read_text())
    assert parse_speed({}) == "exact" and apply_speed(json.loads(TXT2IMG[0].read_text()), "exact") == graph
    assert parse_speed({"speed": None}) == "exact"  # null means the default, as for "control"
    for bad in ("turbo", 1, "", ["fast"]):
        with pytest.raises(RecipeError, match="'speed' must be one of exact, fast, fastest"):
            parse_speed({"speed": bad})


@pytest_asyncio.fixture
async def client(aiohttp_client, tmp_path):
    from engine.backends.runtime import Runtime

    runtime = Runtime.create(base_dir=zoo_base(), registry=registry())  # the tiny zoo written once per process
    return await aiohttp_client(create_app(runtime, make_config(tmp_path, workflows_dir=WORKFLOWS), queue=None))


@pytest.mark.asyncio
async def test_generate_with_a_speed_preset_runs_the_cache_and_reports_it(client):
    ws = await client.ws_connect("/ws?clientId=speed")
    await receive_json(ws)
    request = {"prompt": "a lighthouse", "model": "flux-schnell", "width": 64, "height": 64, "steps": 3, "seed": 3,
               "client_id": "speed", "speed": "fastest"}
    response = await client.post("/api/generate", json=request)
    assert response.status == 200, await response.text()
    queued = await response.json()
    messages = await messages_until_done(ws, queued["prompt_id"], timeout=120)
    reports = [m["data"] for m in messages if m["type"] == "fluxgraph.step_cache"]
    assert len(reports) == 1 and reports[0]["method"] == "FirstBlockCache" and reports[0]["steps"] == 3
    assert "execution_success" in [m["type"] for m in messages]
    entry = (await (await client.get(f"/history/{queued['prompt_id']}")).json())[queued["prompt_id"]]
    assert "FirstBlockCache" in [n["class_type"] for n in entry["prompt"][2].values()]
    bad = await client.post("/api/generate", json={**request, "speed": "warp"})
    assert bad.status == 400 and "'speed' must be one of" in await bad.text()
    await ws.close()
