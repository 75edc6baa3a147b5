"""Round trips through the real aiohttp app: queue a graph, follow the websocket, fetch /view, read /history."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import struct

import pytest
from PIL import Image

from tests.support.server import (REFERENCE, chain_graph, image_graph, messages_until_done, receive_json, same_shape,
                                  sleep_graph, wait_for_job)

pytestmark = pytest.mark.asyncio


def _one_node(entry, node_id):
    """A history entry with its per-node maps narrowed to one node (ids differ from the capture)."""
    prompt = entry["prompt"]
    return {**entry, "outputs": entry["outputs"][node_id], "meta": entry["meta"][node_id],
            "prompt": [prompt[0], prompt[1], {}, prompt[3], prompt[4]]}


async def test_queue_image_graph_events_view_and_history(client):
    ws = await client.ws_connect("/ws?clientId=alice")
    hello = await receive_json(ws)
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "alice"}}

    response = await client.post("/prompt", json={"prompt": image_graph("roundtrip"), "client_id": "alice"})
    assert response.status == 200
    queued = await response.json()
    assert set(queued) == {"prompt_id", "number", "node_errors"} and queued["node_errors"] == {}
    prompt_id = queued["prompt_id"]

    messages = await messages_until_done(ws, prompt_id)
    kinds = [(m["type"], m["data"].get("node")) for m in messages]
    # ComfyUI's order (ws_sequence_example.json without progress_state): queue status, start, cached, each
    # node, the output, success, status, then the "done" signal.
    assert kinds == [("status", None), ("status", None), ("execution_start", None), ("execution_cached", None),
                     ("executing", "1"), ("executing", "2"), ("executed", "2"), ("execution_success", None),
                     ("status", None), ("executing", None)]
    assert [m["data"]["status"]["exec_info"]["queue_remaining"] for m in messages if m["type"] == "status"] == [1, 1, 0]
    reference = json.loads((REFERENCE / "ws_sequence_example.json").read_text())["messages"]
    by_type = {m["type"]: m for m in reference if "type" in m}  # the last of each type
    for message in messages:
        if message["type"] in by_type:
            assert same_shape(message, by_type[message["type"]]) == [], message

    executed = next(m for m in messages if m["type"] == "executed")
    image = executed["data"]["output"]["images"][0]
    assert image["type"] == "output" and image["subfolder"] == ""
    view = await client.get("/view", params={"filename": image["filename"], "type": "output"})
    assert view.status == 200 and view.headers["Content-Type"] == "image/png"
    assert view.headers["X-Content-Type-Options"] == "nosniff"
    assert view.headers["Content-Disposition"].startswith("inline")
    picture = Image.open(io.BytesIO(await view.read()))
    assert picture.size == (8, 8) and picture.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert json.loads(picture.text["prompt"])["2"]["class_type"] == "SaveImage"

    history = await (await client.get(f"/history/{prompt_id}")).json()
    reference_history = next(iter(json.loads((REFERENCE / "history_example.json").read_text()).values()))
    entry = history[prompt_id]
    assert same_shape(_one_node(entry, "2"), _one_node(reference_history, "100")) == []
    assert entry["prompt"][1] == prompt_id and entry["prompt"][3]["client_id"] == "alice"
    assert entry["outputs"]["2"]["images"] == [image]
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                           "execution_success"]
    assert (await (await client.get("/api/history", params={"max_items": "1"})).json()).keys() == {prompt_id}

    job = await (await client.get(f"/api/jobs/{prompt_id}")).json()
    assert job["status"] == "completed" and job["outputs"] == entry["outputs"] and job["execution_time"] >= 0
    await ws.close()


async def test_second_identical_prompt_is_served_from_cache(client):
    ws = await client.ws_connect("/ws?clientId=c")
    await receive_json(ws)
    graph = sleep_graph(value=5)
    first = await (await client.post("/prompt", json={"prompt": graph, "client_id": "c"})).json()
    await messages_until_done(ws, first["prompt_id"])
    second = await (await client.post("/prompt", json={"prompt": graph, "client_id": "c"})).json()
    messages = await messages_until_done(ws, second["prompt_id"])
    cached = next(m for m in messages if m["type"] == "execution_cached")
    assert set(cached["data"]["nodes"]) == {"1", "2"}
    assert not [m for m in messages if m["type"] == "executing" and m["data"]["node"] == "1"]
    executed = next(m for m in messages if m["type"] == "executed")  # cached output nodes re-emit executed
    assert executed["data"]["output"] == {"text": ["5"]}


async def test_progress_and_execution_error_reach_the_client(client):
    ws = await client.ws_connect("/ws?clientId=bob")
    await receive_json(ws)
    graph = sleep_graph(value=3, steps=3)
    graph["2"] = {"class_type": "TestFail", "inputs": {"value": ["1", 0]}}
    graph["3"] = {"class_type": "TestShowInt", "inputs": {"value": ["2", 0]}}
    queued = await (await client.post("/prompt", json={"prompt": graph, "client_id": "bob"})).json()
    messages = await messages_until_done(ws, queued["prompt_id"])
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 3, "1"), (2, 3, "1"), (3, 3, "1")]
    error = next(m for m in messages if m["type"] == "execution_error")["data"]
    assert error["node_id"] == "2" and error["node_type"] == "TestFail"
    assert "TestFail refuses 3" in error["exception_message"] and error["executed"] == ["1"]
    entry = (await (await client.get(f"/history/{queued['prompt_id']}")).json())[queued["prompt_id"]]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    job = await wait_for_job(client, queued["prompt_id"])
    assert job["status"] == "failed" and "TestFail refuses 3" in job["error"]["message"]


async def test_events_go_only_to_the_prompts_client_and_progress_is_broadcast_without_one(client):
    alice = await client.ws_connect("/ws?clientId=alice")
    eve = await client.ws_connect("/ws?clientId=eve")
    await receive_json(alice), await receive_json(eve)
    queued = await (await client.post("/prompt", json={"prompt": sleep_graph(7), "client_id": "alice"})).json()
    await messages_until_done(alice, queued["prompt_id"])
    anonymous = await (await client.post("/prompt", json={"prompt": sleep_graph(8, steps=2)})).json()
    await wait_for_job(client, anonymous["prompt_id"])
    # Eve's own prompt marks the end: whatever was published before it reaches her first (one ordered outbox).
    marker = await (await client.post("/prompt", json={"prompt": sleep_graph(9, steps=1), "client_id": "eve"})).json()
    received = await messages_until_done(eve, marker["prompt_id"])
    eve_saw = list(itertools.takewhile(lambda m: m.get("data", {}).get("prompt_id") != marker["prompt_id"], received))
    kinds = {m["type"] for m in eve_saw}
    assert kinds == {"status", "progress"}  # queue status for all; progress broadcast for the anonymous prompt
    assert {m["data"]["prompt_id"] for m in eve_saw if m["type"] == "progress"} == {anonymous["prompt_id"]}


async def test_interrupting_an_anonymous_prompt_is_broadcast(client):
    watcher = await client.ws_connect("/ws?clientId=watcher")
    await receive_json(watcher)
    queued = await (await client.post("/prompt", json={"prompt": sleep_graph(4, seconds=5.0, steps=50)})).json()
    await wait_for_job(client, queued["prompt_id"], statuses=("in_progress",))
    await client.post("/interrupt")
    while True:
        message = await receive_json(watcher)
        if message["type"] == "execution_interrupted":
            break
        assert message["type"] in ("status", "progress")
    assert message["data"]["prompt_id"] == queued["prompt_id"] and message["data"]["node_id"] == "1"
    assert message["data"]["node_type"] == "TestSleep"


async def test_feature_flags_and_binary_previews(client):
    plain = await client.ws_connect("/ws?clientId=plain")
    rich = await client.ws_connect("/ws?clientId=rich")
    await receive_json(plain), await receive_json(rich)
    await rich.send_str(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    flags = await receive_json(rich)
    assert flags == {"type": "feature_flags", "data": {"supports_preview_metadata": True,
                                                       "max_upload_size": 50 * 1024 * 1024}}
    graph = {"1": {"class_type": "TestPreview", "inputs": {"value": 2}},
             "2": {"class_type": "TestShowInt", "inputs": {"value": ["1", 0]}}}
    queued = await (await client.post("/prompt", json={"prompt": graph})).json()  # no client: broadcast
    await wait_for_job(client, queued["prompt_id"])
    frames = {}
    for name, ws in (("plain", plain), ("rich", rich)):
        while name not in frames:
            message = await asyncio.wait_for(ws.receive(), 5)
            if message.type.name == "BINARY":
                frames[name] = message.data
    event, image_format = struct.unpack(">II", frames["plain"][:8])
    assert event == 1 and image_format == 1
    assert Image.open(io.BytesIO(frames["plain"][8:])).size == (16, 8)
    event, length = struct.unpack(">II", frames["rich"][:8])
    metadata = json.loads(frames["rich"][8:8 + length])
    assert event == 4 and metadata["node_id"] == "1" and metadata["prompt_id"] == queued["prompt_id"]
    assert metadata["image_type"] == "image/jpeg"
    assert Image.open(io.BytesIO(frames["rich"][8 + length:])).format == "JPEG"


async def test_hundred_node_chain_with_comfy_message_shapes(client):
    ws = await client.ws_connect("/ws?clientId=chain")
    await receive_json(ws)
    queued = await (await client.post("/prompt", json={"prompt": chain_graph(100), "client_id": "chain"})).json()
    messages = await messages_until_done(ws, queued["prompt_id"])
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert executing == [str(i) for i in range(1, 101)] + [None]
    executed = next(m for m in messages if m["type"] == "executed")
    assert executed["data"]["output"]["images"][0]["type"] == "temp"
    # linear: no per-node message carries the state of every node seen so far
    assert max(len(json.dumps(m)) for m in messages) < 400


async def test_worker_runs_off_the_event_loop(client):
    queued = await (await client.post("/prompt", json={"prompt": sleep_graph(9, seconds=60.0, steps=600)})).json()
    await wait_for_job(client, queued["prompt_id"], statuses=("in_progress",))
    for path in ("/queue", "/object_info", "/system_stats", "/prompt"):
        assert (await client.get(path)).status == 200
    # answered while the job sleeps (a minute of work, cut short by the interrupt below)
    queue = await (await client.get("/queue")).json()
    assert [item[1] for item in queue["queue_running"]] == [queued["prompt_id"]]
    await client.post("/interrupt")
    job = await wait_for_job(client, queued["prompt_id"])
    assert job["status"] == "cancelled"


async def test_static_editor_is_served_at_root(client):
    response = await client.get("/")
    assert response.status == 200 and "editor" in await response.text()
    assert (await client.get("/index.html")).status == 200
