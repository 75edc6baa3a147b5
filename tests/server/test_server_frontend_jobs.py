"""ComfyUI 0.8's jobs list (GET /api/jobs): statuses, fields, filter, sort and paging, against the capture."""

from __future__ import annotations

import json

import pytest

from tests.support.reference import REFERENCE_DIR
from tests.support.server import image_graph, same_shape, sleep_graph, wait_for_job

pytestmark = pytest.mark.asyncio
CAPTURES = {c["request"]: c for c in json.loads((REFERENCE_DIR / "frontend_routes.json").read_text())["captures"]}


async def _queue(client, graph):
    response = await client.post("/prompt", json={"prompt": graph, "client_id": "t"})
    assert response.status == 200, await response.text()
    return (await response.json())["prompt_id"]


async def test_jobs_list_shapes_statuses_and_paging(client):
    done = await _queue(client, image_graph())
    await wait_for_job(client, done)
    failed = await _queue(client, {"1": {"class_type": "TestFail", "inputs": {"value": 3}},
                                   "2": {"class_type": "TestShowInt", "inputs": {"value": ["1", 0]}}})
    await wait_for_job(client, failed)
    running = await _queue(client, sleep_graph(seconds=60, steps=600))
    await wait_for_job(client, running, statuses=("in_progress",))
    pending = await _queue(client, sleep_graph(value=2))

    capture = CAPTURES["GET /api/jobs?status=completed,failed&limit=5&offset=0"]
    body = await (await client.get("/api/jobs?status=completed,failed&limit=5&offset=0")).json()
    assert same_shape(body["pagination"], capture["body"]["pagination"]) == []
    assert body["pagination"] == {"offset": 0, "limit": 5, "total": 2, "has_more": False}
    by_id = {job["id"]: job for job in body["jobs"]}
    assert by_id[done]["status"] == "completed" and by_id[failed]["status"] == "failed"
    assert set(capture["body"]["jobs"][0]) <= set(by_id[done])
    assert by_id[done]["outputs_count"] == 1
    assert by_id[done]["preview_output"]["nodeId"] == "2" and by_id[done]["preview_output"]["mediaType"] == "images"
    assert by_id[done]["execution_end_time"] >= by_id[done]["execution_start_time"] >= by_id[done]["create_time"] - 1000
    error = by_id[failed]["execution_error"]
    assert error["node_type"] == "TestFail" and "refuses 3" in error["exception_message"]
    assert isinstance(error["traceback"], list)

    active = await (await client.get("/api/jobs?status=pending,in_progress&limit=200&offset=0")).json()
    assert {job["id"]: job["status"] for job in active["jobs"]} == {running: "in_progress", pending: "pending"}
    assert active["jobs"][0]["id"] == pending  # newest first by default

    everything = await (await client.get("/api/jobs")).json()
    assert everything["pagination"]["total"] == 4
    oldest = await (await client.get("/api/jobs?sort_order=asc&limit=1&offset=1")).json()
    assert [job["id"] for job in oldest["jobs"]] == [failed]
    assert oldest["pagination"] == {"offset": 1, "limit": 1, "total": 4, "has_more": True}
    await client.post("/interrupt")
    await wait_for_job(client, running)
    cancelled = await (await client.get("/api/jobs?status=cancelled")).json()
    assert [job["id"] for job in cancelled["jobs"]] == [running]


@pytest.mark.parametrize("query", ["status=cancelled,nope", "limit=-1", "offset=x", "sort_by=name",
                                   "sort_order=up"])
async def test_jobs_list_bad_queries_are_400(client, query):
    response = await client.get(f"/api/jobs?{query}")
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_query"


async def test_jobs_list_sorted_by_duration(client):
    slow = await _queue(client, sleep_graph(value=1, seconds=0.3, steps=3))
    fast = await _queue(client, sleep_graph(value=2, seconds=0.0, steps=1))
    await wait_for_job(client, fast)
    body = await (await client.get("/api/jobs?sort_by=execution_duration")).json()
    assert [job["id"] for job in body["jobs"]] == [slow, fast]
