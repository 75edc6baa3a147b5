"""Queue, history, jobs, interrupt, free, info routes and /api/generate's request handling; shapes checked
against the captures of a real ComfyUI server."""

from __future__ import annotations

import json

import pytest

from engine.recipes.errors import RecipeError
from engine.recipes.generate import build_graph, parse_request
from engine.recipes.graph_tools import positive_encoders
from engine.server.state import STATE
from tests.support.server import REFERENCE, image_graph, progress_messages, same_shape, sleep_graph, wait_for_job
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.asyncio
ROUTES = ["/prompt", "/queue", "/history", "/object_info", "/object_info/EmptyImage", "/system_stats", "/models",
          "/models/checkpoints", "/embeddings", "/extensions", "/features"]


async def test_every_route_answers_with_and_without_the_api_prefix(client):
    for path in ROUTES:
        plain, api = await client.get(path), await client.get("/api" + path)
        assert plain.status == api.status == 200, path
        assert plain.headers["Content-Type"].startswith("application/json")
        if path not in ("/system_stats", "/prompt", "/queue"):
            assert await plain.json() == await api.json(), path


async def test_error_bodies_match_the_captures(client):
    chain = {"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 64, "batch_size": 1, "color": 0}},
             "100": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    range_error = await client.post("/prompt", json={"prompt": chain})
    assert range_error.status == 400
    reference = json.loads((REFERENCE / "error_example_range.json").read_text())
    body = await range_error.json()
    assert same_shape(body, reference) == []
    assert body["node_errors"]["1"]["errors"][0] == reference["node_errors"]["1"]["errors"][0]

    chain = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "50": {"class_type": "ImageInvert", "inputs": {"image": ["nonexistent", 0]}},
             "100": {"class_type": "PreviewImage", "inputs": {"images": ["50", 0]}}}
    body = await (await client.post("/prompt", json={"prompt": chain})).json()
    reference = json.loads((REFERENCE / "error_example_bad_link.json").read_text())
    assert same_shape(body, reference) == []
    ours, theirs = body["node_errors"]["50"], reference["node_errors"]["50"]
    assert ours["dependent_outputs"] == theirs["dependent_outputs"] and ours["class_type"] == theirs["class_type"]
    assert ours["errors"][0]["type"] == theirs["errors"][0]["type"]

    unknown = {"50": {"class_type": "NoSuchNode", "inputs": {}}}
    body = await (await client.post("/prompt", json={"prompt": unknown})).json()
    reference = json.loads((REFERENCE / "error_example_unknown_class.json").read_text())
    assert body["error"]["type"] == reference["error"]["type"]
    assert body["error"]["message"] == reference["error"]["message"] and body["node_errors"] == {}

    missing = await client.post("/prompt", json={"client_id": "x"})
    assert missing.status == 400 and (await missing.json())["error"]["type"] == "no_prompt"


async def test_system_stats_and_object_info_shapes(client, monkeypatch):
    monkeypatch.setattr("sys.argv", ["fluxgraph", "serve", "--auth-token", "TOPSECRET", "--auth-token=ALSO"])
    stats = await (await client.get("/system_stats")).json()
    assert stats["system"]["argv"] == ["fluxgraph", "serve", "--auth-token", "***", "--auth-token=***",
                                       "--disable-api-nodes"]
    assert same_shape(stats, json.loads((REFERENCE / "system_stats_example.json").read_text())) == []
    reference = json.loads((REFERENCE / "object_info_core.json").read_text())
    ours = await (await client.get("/object_info/EmptyImage")).json()
    assert ours["EmptyImage"]["input"] == reference["EmptyImage"]["input"]
    assert same_shape(ours["EmptyImage"], reference["EmptyImage"]) == []
    assert await (await client.get("/object_info/NoSuchNode")).json() == {}  # ComfyUI: {} with 200
    assert (await (await client.get("/features")).json())["max_upload_size"] == 50 * 1024 * 1024
    assert "checkpoints" in await (await client.get("/models")).json()
    unknown = await client.get("/models/nonsense")
    assert unknown.status == 404 and (await unknown.json())["error"]["type"] == "unknown_model_folder"


async def test_models_and_embeddings_list_files(client, tmp_path):
    (tmp_path / "models" / "loras" / "style").mkdir(parents=True)
    (tmp_path / "models" / "loras" / "style" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "loras" / "notes.txt").write_text("x")
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    (tmp_path / "models" / "embeddings" / "good.pt").write_bytes(b"x")
    assert await (await client.get("/models/loras")).json() == ["style/a.safetensors"]
    assert await (await client.get("/embeddings")).json() == ["good"]


async def test_queue_order_front_number_delete_and_clear(client):
    blocker = await (await client.post("/prompt", json={"prompt": sleep_graph(1, seconds=5.0, steps=50)})).json()
    await wait_for_job(client, blocker["prompt_id"], statuses=("in_progress",))
    ids = []
    for index, extra in enumerate([{}, {}, {"front": True}, {"number": 0.5}]):
        body = await (await client.post("/prompt", json={"prompt": sleep_graph(10 + index), **extra})).json()
        ids.append((body["prompt_id"], body["number"]))
    assert [n for _, n in ids] == [1, 2, -3, 0.5]
    queue = await (await client.get("/queue")).json()
    pending = sorted(queue["queue_pending"], key=lambda item: item[0])
    assert [item[1] for item in pending] == [ids[2][0], ids[3][0], ids[0][0], ids[1][0]]
    assert all(len(item) == 5 for item in pending) and queue["queue_running"][0][1] == blocker["prompt_id"]
    assert (await (await client.get("/prompt")).json()) == {"exec_info": {"queue_remaining": 5}}
    assert (await client.post("/queue", json={"delete": [ids[0][0]]})).status == 200
    assert len((await (await client.get("/queue")).json())["queue_pending"]) == 3
    assert (await client.post("/queue", json={"clear": True})).status == 200
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    await client.post("/interrupt", json={"prompt_id": "someone-else"})  # not the running one: no effect
    # A socket opened now gets only steps taken after that request: the second proves the first's interrupt
    # check passed (a step reports progress, then checks).
    watcher = await client.ws_connect("/ws?clientId=watcher")
    await progress_messages(watcher, blocker["prompt_id"], 2)
    assert (await (await client.get(f"/api/jobs/{blocker['prompt_id']}")).json())["status"] == "in_progress"
    await client.post("/interrupt", json={"prompt_id": blocker["prompt_id"]})
    assert (await wait_for_job(client, blocker["prompt_id"]))["status"] == "cancelled"
    history = await (await client.get(f"/history/{blocker['prompt_id']}")).json()
    messages = [m[0] for m in history[blocker["prompt_id"]]["status"]["messages"]]
    assert messages[-1] == "execution_interrupted"


async def test_jobs_report_typed_status_and_cancel_by_id(client):
    running = await (await client.post("/prompt", json={"prompt": sleep_graph(2, seconds=5.0, steps=50)})).json()
    pending = await (await client.post("/prompt", json={"prompt": sleep_graph(3)})).json()
    await wait_for_job(client, running["prompt_id"], statuses=("in_progress",))
    job = await (await client.get(f"/api/jobs/{pending['prompt_id']}")).json()
    assert job["status"] == "pending" and job["fluxgraph_status"] == "queued"
    assert job["queue_position"] == 0 and job["outputs"] == {}
    unknown = await client.get("/api/jobs/nope")
    assert unknown.status == 404 and (await unknown.json())["error"]["type"] == "unknown_prompt_id"
    cancel = await (await client.post(f"/api/jobs/{pending['prompt_id']}/cancel")).json()
    assert cancel == {"prompt_id": pending["prompt_id"], "cancelled": True, "status": "interrupted"}
    assert (await (await client.get(f"/api/jobs/{pending['prompt_id']}")).json())["status"] == "cancelled"
    assert (await client.delete(f"/api/jobs/{running['prompt_id']}")).status == 200
    assert (await wait_for_job(client, running["prompt_id"]))["status"] == "cancelled"
    again = await client.post(f"/api/jobs/{running['prompt_id']}/cancel")
    assert again.status == 409 and (await again.json())["error"]["type"] == "job_finished"


async def test_cancel_before_the_executor_starts_is_not_lost(client):
    """The executor clears its interrupt flag when a prompt starts; a cancel that lands just before must hold."""
    state = client.app[STATE]
    original = state.runtime.executor.execute

    def cancel_then_execute(prompt, prompt_id, *args, **kwargs):
        assert state.worker.interrupt(prompt_id) is True  # lands after the worker took it, before execute
        return original(prompt, prompt_id, *args, **kwargs)

    state.runtime.executor.execute = cancel_then_execute
    body = await (await client.post("/prompt", json={"prompt": sleep_graph(5, seconds=0.5, steps=5)})).json()
    assert (await wait_for_job(client, body["prompt_id"]))["status"] == "cancelled"
    state.runtime.executor.execute = original
    body = await (await client.post("/prompt", json={"prompt": sleep_graph(6)})).json()
    assert (await wait_for_job(client, body["prompt_id"]))["status"] == "completed"  # the next one is unaffected


async def test_history_paging_delete_clear_and_duplicate_ids(client):
    for index in range(3):
        response = await client.post("/prompt", json={"prompt": sleep_graph(20 + index), "prompt_id": f"h{index}"})
        assert response.status == 200
        await wait_for_job(client, f"h{index}")
    duplicate = await client.post("/prompt", json={"prompt": sleep_graph(1), "prompt_id": "h0"})
    assert duplicate.status == 400 and (await duplicate.json())["error"]["type"] == "duplicate_prompt_id"
    assert list(await (await client.get("/history")).json()) == ["h0", "h1", "h2"]
    assert list(await (await client.get("/history?max_items=2")).json()) == ["h1", "h2"]
    assert list(await (await client.get("/history?max_items=1&offset=1")).json()) == ["h1"]
    assert await (await client.get("/history/none")).json() == {}
    await client.post("/history", json={"delete": ["h1"]})
    assert list(await (await client.get("/history")).json()) == ["h0", "h2"]
    await client.post("/history", json={"clear": True})
    assert await (await client.get("/history")).json() == {}


async def test_deleting_history_keeps_output_files_unless_asked(client, tmp_path):
    kept = await (await client.post("/prompt", json={"prompt": image_graph("kept")})).json()
    gone = await (await client.post("/prompt", json={"prompt": image_graph("gone", color=1)})).json()
    await wait_for_job(client, kept["prompt_id"]), await wait_for_job(client, gone["prompt_id"])
    await client.post("/history", json={"delete": [kept["prompt_id"]]})
    assert (tmp_path / "output" / "kept_00001_.png").is_file()
    await client.post("/history", json={"delete": [gone["prompt_id"]], "delete_outputs": True})
    assert not (tmp_path / "output" / "gone_00001_.png").exists()
    assert (tmp_path / "output" / "kept_00001_.png").is_file()


async def test_free_clears_the_output_cache(client):
    runtime = client.app[STATE].runtime
    body = await (await client.post("/prompt", json={"prompt": image_graph("free")})).json()
    await wait_for_job(client, body["prompt_id"])
    assert len(runtime.cache) > 0
    assert (await client.post("/free", json={"unload_models": True, "free_memory": True})).status == 200
    await wait_until_async(lambda: len(runtime.cache) == 0, what="/free to clear the output cache")
    bad = await client.post("/free", json={"free_memory": "yes"})
    assert bad.status == 400 and "'free_memory' must be a boolean" in (await bad.json())["error"]["message"]


async def test_sensitive_extra_data_stays_out_of_history_and_queue(client):
    body = await (await client.post("/prompt", json={"prompt": image_graph("secret"),
                                                     "extra_data": {"api_key_comfy_org": "KEY"}})).json()
    await wait_for_job(client, body["prompt_id"])
    text = await (await client.get("/history")).text()
    assert "KEY" not in text and "create_time" in text


async def test_generate_refuses_unknown_variants_listing_installed_ones(client):
    response = await client.post("/api/generate", json={"prompt": "a cat", "model": "flux-ultra"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "unknown_variant" and "installed variants: none" in error["details"]
    assert (await (await client.get("/api/generate/variants")).json()) == {"installed": [], "known": []}


async def test_generate_request_parsing():
    assert parse_request({"prompt": "a cat", "seed": 5})["values"]["seed"] == 5
    assert 0 <= parse_request({"prompt": "a cat"})["values"]["seed"] <= 2**53  # random when left out
    for bad, words in (({"prompt": ""}, "non-empty"), ({"prompt": "x", "width": "64"}, "'width' must be an integer"),
                       ({"prompt": "x", "steps": 0}, "between 1 and 10000"),
                       ({"prompt": "x", "guidance": True}, "'guidance' must be a number"),
                       ({"prompt": "x", "model": 3}, "variant name")):
        with pytest.raises(RecipeError, match=words):
            parse_request(bad)


async def test_generate_writes_the_request_into_the_workflow():
    workflow = {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["11", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "negative stays", "clip": ["11", 0]}},
        "26": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["6", 0], "guidance": 3.5}},
        "27": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "31": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 8, "positive": ["26", 0],
                                                    "negative": ["7", 0], "latent_image": ["27", 0]}},
    }
    assert positive_encoders(workflow) == ["6"]
    graph, ignored = build_graph(workflow, "a fox", {"width": 64, "height": 32, "steps": 2, "seed": 9,
                                                     "guidance": 1.5, "batch_size": None, "filename_prefix": "x"})
    assert graph["6"]["inputs"]["text"] == "a fox" and graph["7"]["inputs"]["text"] == "negative stays"
    assert graph["27"]["inputs"] == {"width": 64, "height": 32, "batch_size": 1}
    assert graph["31"]["inputs"]["seed"] == 9 and graph["31"]["inputs"]["steps"] == 2
    assert graph["26"]["inputs"]["guidance"] == 1.5 and ignored == ["filename_prefix"]
    assert workflow["6"]["inputs"]["text"] == "old"  # the shipped workflow is not modified


async def test_shipped_workflows_are_listed_and_served(client, tmp_path):
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "flux_x_txt2img.json").write_text(json.dumps({"1": {"class_type": "EmptyImage"}}))
    (tmp_path / "secret.json").write_text("{}")
    assert await (await client.get("/api/workflows")).json() == ["flux_x_txt2img.json"]
    assert await (await client.get("/api/workflows/flux_x_txt2img.json")).json() == {
        "1": {"class_type": "EmptyImage"}}
    assert (await client.get("/api/workflows/nope.json")).status == 404
    for bad in ("..%2Fsecret.json", "..", "x.txt"):
        response = await client.get(f"/api/workflows/{bad}")
        assert response.status in (400, 404) and (await response.json())["error"]["message"]


async def test_ui_workflows_with_subgraphs_convert_for_the_editor(client):
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "ui" / "core_invert_subgraph.json"
    workflow = json.loads(fixture.read_text())
    response = await client.post("/api/workflow/convert", json={"workflow": workflow})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["prompt"] and all("class_type" in node for node in body["prompt"].values())
    assert any(":" in node_id for node_id in body["prompt"])  # subgraph ids are flattened as parent:child
    bad = await client.post("/api/workflow/convert", json={"workflow": {"nodes": [{"id": 1, "type": "Nope"}],
                                                                        "links": []}})
    assert bad.status == 400 and (await bad.json())["error"]["type"]
