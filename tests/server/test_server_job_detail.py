"""GET /api/jobs/{id}: ComfyUI 0.8's job record (fields and statuses) first, fluxgraph's typed status beside it,
and the same record as the jobs list gives for that id."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.reference import REFERENCE_DIR
from tests.support.server import same_shape, sleep_graph, wait_for_job

pytestmark = pytest.mark.asyncio
CAPTURES = {c["request"]: c for c in json.loads((REFERENCE_DIR / "frontend_routes.json").read_text())["captures"]}
DETAIL = next(c for r, c in CAPTURES.items() if re.fullmatch(r"GET /api/jobs/[0-9a-f-]{36}", r))
# ComfyUI's own words: the statuses its jobs list names as valid, and `cancelled`, which its 1.58 frontend asks for
_REFUSED = CAPTURES["GET /api/jobs?status=cancelled"]["body"]["error"]
COMFY_STATUSES = {s.strip() for s in _REFUSED.split("Valid values:")[1].split(",")} | {"cancelled"}
FAILING = {"1": {"class_type": "TestFail", "inputs": {"value": 3}},
           "2": {"class_type": "TestShowInt", "inputs": {"value": ["1", 0]}}}


async def _queue(client, graph, client_id="t"):
    response = await client.post("/prompt", json={"prompt": graph, "client_id": client_id})
    assert response.status == 200, await response.text()
    return (await response.json())["prompt_id"]


async def _job(client, prompt_id):
    response = await client.get(f"/api/jobs/{prompt_id}")
    assert response.status == 200, await response.text()
    return await response.json()


async def _listed(client, prompt_id):
    body = await (await client.get("/api/jobs")).json()
    (job,) = [job for job in body["jobs"] if job["id"] == prompt_id]
    return job


async def _agrees_with_list(client, job):
    listed = await _listed(client, job["id"])
    assert {key: job[key] for key in listed} == listed  # the list's record, unchanged, inside the job's


async def test_completed_job_has_the_captured_comfyui_shape(client):
    captured = DETAIL["body"]
    prompt_id = await _queue(client, captured["workflow"]["prompt"], client_id="cap")
    await wait_for_job(client, prompt_id)
    job = await _job(client, prompt_id)
    assert same_shape(job, captured) == []
    assert set(captured) <= set(job) and job["status"] == captured["status"] == "completed"
    assert job["id"] == prompt_id and job["fluxgraph_status"] == "success" and job["prompt_id"] == prompt_id
    assert job["outputs_count"] == 1 and job["outputs"]["2"]["images"][0]["type"] == "temp"
    assert job["preview_output"] == {**job["outputs"]["2"]["images"][0], "nodeId": "2", "mediaType": "images"}
    assert job["execution_status"]["status_str"] == "success" and job["execution_status"]["completed"] is True
    assert [m[0] for m in job["execution_status"]["messages"]][-1] == "execution_success"
    assert job["workflow"]["prompt"] == captured["workflow"]["prompt"]
    assert job["workflow"]["extra_data"]["client_id"] == "cap"
    assert job["execution_end_time"] >= job["execution_start_time"] >= job["create_time"] - 1000
    history = (await (await client.get(f"/history/{prompt_id}")).json())[prompt_id]
    assert job["outputs"] == history["outputs"] and job["execution_status"] == history["status"]
    await _agrees_with_list(client, job)


async def test_every_status_is_comfyuis_and_matches_the_list(client):
    failed = await _queue(client, FAILING)
    await wait_for_job(client, failed)
    running = await _queue(client, sleep_graph(1, seconds=60, steps=600))
    await wait_for_job(client, running, statuses=("in_progress",))
    pending = await _queue(client, sleep_graph(2))
    cancelled_pending = await _queue(client, sleep_graph(3))

    job = await _job(client, failed)
    assert (job["status"], job["fluxgraph_status"]) == ("failed", "error")
    assert job["execution_error"]["node_type"] == "TestFail" and "refuses 3" in job["execution_error"][
        "exception_message"]
    assert job["execution_status"]["status_str"] == "error" and job["error"]["message"]
    await _agrees_with_list(client, job)

    job = await _job(client, running)
    assert (job["status"], job["fluxgraph_status"]) == ("in_progress", "running")
    assert job["execution_start_time"] >= job["create_time"] - 1000 and job["workflow"]["prompt"]["1"][
        "class_type"] == "TestSleep"
    await _agrees_with_list(client, job)

    job = await _job(client, pending)
    assert (job["status"], job["fluxgraph_status"]) == ("pending", "queued")
    assert job["queue_position"] == 0 and job["outputs"] == {} and job["priority"] == job["number"]
    assert job["workflow"]["prompt"] == sleep_graph(2) and job["workflow"]["extra_data"]["client_id"] == "t"
    await _agrees_with_list(client, job)

    assert (await client.post(f"/api/jobs/{cancelled_pending}/cancel")).status == 200
    job = await _job(client, cancelled_pending)
    assert (job["status"], job["fluxgraph_status"]) == ("cancelled", "interrupted")
    await _agrees_with_list(client, job)
    await client.post("/interrupt")
    job = await wait_for_job(client, running)
    assert (job["status"], job["fluxgraph_status"]) == ("cancelled", "interrupted")
    await _agrees_with_list(client, job)

    seen = {(await _job(client, pid))["status"] for pid in (failed, running, pending, cancelled_pending)}
    assert seen <= COMFY_STATUSES and COMFY_STATUSES == {"pending", "in_progress", "completed", "failed",
                                                         "cancelled"}


async def test_unknown_job_is_a_404_naming_the_id(client):
    response = await client.get("/api/jobs/no-such-job")
    body = await response.json()
    assert response.status == 404 and body["error"]["type"] == "unknown_prompt_id"
    assert body["error"]["details"] == "no-such-job"
