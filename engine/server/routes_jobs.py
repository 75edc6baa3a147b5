"""ComfyUI 0.8's jobs list, `GET /api/jobs`: every prompt (queued, running, finished) as one kind of record.

`?status=pending,in_progress,completed,failed,cancelled&workflow_id=&sort_by=created_at|execution_duration
&sort_order=desc|asc&limit=&offset=` -> `{"jobs": [...], "pagination": {offset, limit, total, has_more}}`.
A job: `id`, `status`, `priority` (the queue `number`), `create_time`, `execution_start_time`,
`execution_end_time` (epoch milliseconds), `outputs_count`, `preview_output` (`{filename, subfolder, type,
nodeId, mediaType}`), `execution_error` (the executor's error message, for failed jobs), `workflow_id` (the
editor's workflow id, when the prompt carries it). fluxgraph's queue statuses map as queued -> pending,
running -> in_progress, success -> completed, error -> failed, interrupted -> cancelled.

`GET /api/jobs/{id}` answers the same record (same builders, so list and job agree) plus `outputs`,
`execution_status` (history's status block, finished jobs) and `workflow` (`{prompt, extra_data}`), then
fluxgraph's own fields under names ComfyUI does not use: `fluxgraph_status` (queued, running, success, error,
interrupted), `prompt_id`, `number`, `resumed`, `queue_position`, `created_at`, `started_at`, `finished_at`,
`execution_time`, `error`, and `worker` with `--executor ray`. Its cancel stays in `routes_prompt`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

from aiohttp import web

from engine.queue.store import ERROR, INTERRUPTED, QUEUED, RUNNING, SUCCESS, PromptQueue, QueueItem
from engine.server.errors import ApiError, json_response, query_int
from engine.server.state import ServerState, state_of
from engine.workflow.ui_format import carried_workflow

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
SORT_KEYS = ("created_at", "execution_duration")
# fluxgraph's queue status -> ComfyUI's job status (finished ones are told apart by history's messages, below)
COMFY_STATUS = {QUEUED: "pending", RUNNING: "in_progress", SUCCESS: "completed", ERROR: "failed",
                INTERRUPTED: "cancelled"}
_ERROR_FIELDS = {"node_id": str, "node_type": str, "exception_message": str, "exception_type": str,
                 "traceback": list}


def _statuses(request: web.Request) -> set[str]:
    raw = request.query.get("status", "")
    wanted = {s.strip() for s in raw.split(",") if s.strip()}
    unknown = sorted(wanted - set(STATUSES))
    if unknown:
        raise ApiError(400, "invalid_query", f"Invalid status value(s): {', '.join(unknown)[:200]}",
                       f"valid values: {', '.join(STATUSES)}")
    return wanted or set(STATUSES)


def _choice(request: web.Request, name: str, choices: Iterable[str], default: str) -> str:
    value = request.query.get(name) or default
    if value not in choices:
        raise ApiError(400, "invalid_query", f"Query parameter '{name}' must be one of {', '.join(choices)}",
                       f"got {value[:50]!r}")
    return value


def _outputs_summary(outputs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """How many files the outputs list, and the first one (images first) as the preview."""
    count, preview, first_other = 0, None, None
    for node_id, ui in (outputs or {}).items():
        for media, records in (ui or {}).items() if isinstance(ui, dict) else ():
            for record in records if isinstance(records, list) else ():
                if not isinstance(record, dict) or not isinstance(record.get("filename"), str):
                    continue
                count += 1
                item = {"filename": record["filename"], "subfolder": str(record.get("subfolder") or ""),
                        "type": record.get("type") or "output", "nodeId": str(node_id), "mediaType": media}
                if media == "images" and preview is None:
                    preview = item
                elif first_other is None:
                    first_other = item
    return count, preview or first_other


def _workflow_id(extra_data: dict[str, Any]) -> str | None:
    workflow = carried_workflow(extra_data)
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return value if isinstance(value, str) else None


def _base(prompt_id: str, status: str, number: Any, extra_data: dict[str, Any], created_at: float | None) -> dict:
    create_time = extra_data.get("create_time")
    if not isinstance(create_time, (int, float)) or isinstance(create_time, bool):
        create_time = int((created_at or 0) * 1000)
    job: dict[str, Any] = {"id": prompt_id, "status": status, "priority": number, "create_time": create_time}
    workflow_id = _workflow_id(extra_data)
    if workflow_id:
        job["workflow_id"] = workflow_id
    return job


def _finished(prompt_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    number, _, _, extra_data, _ = entry["prompt"]
    messages = entry.get("status", {}).get("messages") or []
    kinds = {kind: data for kind, data in messages if isinstance(data, dict)}
    if entry.get("status", {}).get("completed"):
        status = COMFY_STATUS[SUCCESS]
    elif "execution_interrupted" in kinds:
        status = COMFY_STATUS[INTERRUPTED]
    else:
        status = COMFY_STATUS[ERROR]
    job = _base(prompt_id, status, number, extra_data, None)
    start = kinds.get("execution_start", {}).get("timestamp")
    end = next((kinds[k].get("timestamp") for k in ("execution_success", "execution_error", "execution_interrupted")
                if k in kinds), None)
    job["execution_start_time"] = start
    job["execution_end_time"] = end
    job["outputs_count"], preview = _outputs_summary(entry.get("outputs") or {})
    if preview is not None:
        job["preview_output"] = preview
    error = kinds.get("execution_error")
    if status == COMFY_STATUS[ERROR] and error and all(isinstance(error.get(k), t) for k, t in _ERROR_FIELDS.items()):
        job["execution_error"] = error
    return job


def _running(queue: PromptQueue, item: QueueItem) -> dict[str, Any]:
    info = queue.job(item.prompt_id) or {}
    job = _base(item.prompt_id, COMFY_STATUS[RUNNING], item.number, item.extra_data, info.get("created_at"))
    started = info.get("started_at")
    job["execution_start_time"] = int(started * 1000) if started else None
    return job


def _pending(item: QueueItem) -> dict[str, Any]:
    return _base(item.prompt_id, COMFY_STATUS[QUEUED], item.number, item.extra_data, None)


def _all_jobs(state: ServerState) -> list[dict[str, Any]]:
    queue = state.queue
    jobs = [_running(queue, item) for item in queue.running()]
    jobs.extend(_pending(item) for item in queue.pending())
    jobs.extend(_finished(prompt_id, entry) for prompt_id, entry in queue.history().items())
    return jobs


def _find(queue: PromptQueue, prompt_id: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
    """(list record, prompt, extra_data) of one job, looked up where a job moves on to: pending, running,
    history; with `outputs` and `execution_status` for a finished one. None if it is in none of them."""
    for item in queue.pending():
        if item.prompt_id == prompt_id:
            return _pending(item), item.prompt, item.extra_data
    for item in queue.running():
        if item.prompt_id == prompt_id:
            return _running(queue, item), item.prompt, item.extra_data
    entry = queue.history(prompt_id=prompt_id).get(prompt_id)
    if entry is None:
        return None
    job = _finished(prompt_id, entry)
    job["outputs"] = entry.get("outputs") or {}
    job["execution_status"] = entry.get("status")
    return job, entry["prompt"][2], entry["prompt"][3]


_PHASES = {COMFY_STATUS[QUEUED]: QUEUED, COMFY_STATUS[RUNNING]: RUNNING}


def job_detail(state: ServerState, prompt_id: str) -> dict[str, Any] | None:
    """GET /api/jobs/{id}: the list's record, its outputs and workflow, then fluxgraph's typed status."""
    queue = state.queue
    for _ in range(5):  # a job that moved on (queued -> running -> finished) between two looks: look again
        found = _find(queue, prompt_id)
        typed = queue.job(prompt_id)
        if typed is None:
            return None
        phase = typed["status"] if typed["status"] in (QUEUED, RUNNING) else "finished"
        if found is not None and _PHASES.get(found[0]["status"], "finished") == phase:
            break
    else:
        return None
    job, prompt, extra_data = found
    outputs = typed.pop("outputs")
    job.setdefault("outputs", outputs)
    job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    job["fluxgraph_status"] = typed.pop("status")
    job.update(typed)
    return job


def _duration(job: dict[str, Any]) -> float:
    start, end = job.get("execution_start_time"), job.get("execution_end_time")
    return (end - start) if isinstance(start, (int, float)) and isinstance(end, (int, float)) else -1


async def list_jobs(request: web.Request) -> web.Response:
    statuses = _statuses(request)
    sort_by = _choice(request, "sort_by", SORT_KEYS, "created_at")
    descending = _choice(request, "sort_order", ("asc", "desc"), "desc") == "desc"
    limit = query_int(request, "limit")
    offset = query_int(request, "offset", default=0) or 0
    workflow_id = request.query.get("workflow_id")
    jobs = await asyncio.get_running_loop().run_in_executor(None, _all_jobs, state_of(request))
    jobs = [j for j in jobs if j["status"] in statuses and (not workflow_id or j.get("workflow_id") == workflow_id)]
    key = (lambda j: (_duration(j), j["create_time"])) if sort_by == "execution_duration" else (
        lambda j: j["create_time"])
    jobs.sort(key=key, reverse=descending)
    total = len(jobs)
    page = jobs[offset:] if limit is None else jobs[offset:offset + limit]
    return json_response({"jobs": page, "pagination": {
        "offset": offset, "limit": limit if limit is not None else total,
        "total": total, "has_more": offset + len(page) < total}})


async def get_job(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    state = state_of(request)
    job = await asyncio.get_running_loop().run_in_executor(None, job_detail, state, prompt_id)
    if job is None:
        raise ApiError(404, "unknown_prompt_id", "No job with this prompt_id", prompt_id)
    placement = state.worker.backend.placement(prompt_id)
    if placement is not None:
        job["worker"] = placement  # the (last) worker that ran it, with --executor ray
    return json_response(job)


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/jobs", list_jobs), ("GET", "/jobs/{prompt_id}", get_job)]
