"""Queue and execution routes: /prompt, /queue, /history, /interrupt, /free and /api/jobs/{id}'s cancel.

`GET /api/jobs` and `GET /api/jobs/{id}` (ComfyUI's job records) are in `routes_jobs`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiohttp import web

from engine.queue.store import QUEUED, RUNNING
from engine.server.errors import (ApiError, dumps, expect_bool, expect_id_list, finite_number, json_response,
                                  json_type, query_int, read_json, read_json_object)
from engine.core.prompt_paths import unsafe_path_errors
from engine.server.state import ServerState, state_of
from engine.server.user_files import resolve_user_file
from engine.workflow.model_hints import add_download_hints, extra_data_model_hints

MAX_ID_LENGTH = 256


def _text_field(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ApiError(400, "invalid_request", f"'{key}' must be a string", f"got a JSON {json_type(value)}",
                       node_errors={})
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH or not text.isprintable():
        raise ApiError(400, "invalid_request", f"'{key}' must be 1 to {MAX_ID_LENGTH} printable characters",
                       f"got {dumps(text[:60])}", node_errors={})
    return text


def _prepare_submission(body: dict[str, Any]) -> dict[str, Any]:
    """Check the POST /prompt fields (everything but the graph itself) and normalise them."""
    if "prompt" not in body:
        raise ApiError(400, "no_prompt", "No prompt provided", "No prompt provided", node_errors={})
    extra_data = body.get("extra_data", {})
    if extra_data is None:
        extra_data = {}
    if not isinstance(extra_data, dict):
        raise ApiError(400, "invalid_request", "'extra_data' must be a JSON object",
                       f"got a JSON {json_type(extra_data)}", node_errors={})
    extra_data = dict(extra_data)
    client_id = _text_field(body, "client_id")
    if client_id is not None:
        extra_data["client_id"] = client_id
    extra_data.setdefault("create_time", int(time.time() * 1000))
    targets = body.get("partial_execution_targets")
    if targets is not None:
        if not isinstance(targets, list) or not all(isinstance(t, (str, int)) and not isinstance(t, bool)
                                                    for t in targets):
            raise ApiError(400, "invalid_request", "'partial_execution_targets' must be a list of node ids",
                           f"got {dumps(targets)[:200]}", node_errors={})
        targets = [str(t) for t in targets]
    number = body.get("number")
    return {"prompt": body["prompt"], "prompt_id": _text_field(body, "prompt_id") or str(uuid.uuid4()),
            "extra_data": extra_data, "targets": targets, "front": bool(body.get("front")),
            "number": None if number is None else finite_number(number, "number")}


def _validate_and_queue(state: ServerState, sub: dict[str, Any]) -> dict[str, Any]:
    """Runs in a thread: validation may list folders and the queue commit waits for the disk."""
    runtime = state.runtime
    if state.queue.has_prompt_id(sub["prompt_id"]):
        raise ApiError(400, "duplicate_prompt_id", "A prompt with this prompt_id already exists",
                       sub["prompt_id"], node_errors={})
    result = runtime.validate(sub["prompt"], sub["targets"])
    # a missing model names what to get, from the editor's workflow the prompt carries (docs/protocol.md)
    result.node_errors = add_download_hints(result.node_errors, extra_data_model_hints(sub["extra_data"]))
    unsafe = unsafe_path_errors(sub["prompt"], runtime.registry, runtime.folders)
    if unsafe:
        node_errors = {**result.node_errors, **unsafe}
        details = "\n".join(f"{e['class_type']} #{nid}: {err['message']}: {err['details']}"
                            for nid, e in unsafe.items() for err in e["errors"])
        raise ApiError(400, "prompt_outputs_failed_validation", "Prompt outputs failed validation", details,
                       node_errors=node_errors)
    if not result.ok:
        error = result.error or {}
        raise ApiError(400, error.get("type", "invalid_prompt"), error.get("message", "Invalid prompt"),
                       error.get("details", ""), node_errors=result.node_errors, **error.get("extra_info", {}))
    try:
        item = state.queue.put(sub["prompt_id"], result.prompt, sub["extra_data"], result.outputs,
                               number=sub["number"], front=sub["front"])
    except ValueError as exc:
        raise ApiError(400, "duplicate_prompt_id", str(exc), sub["prompt_id"], node_errors={}) from None
    return {"prompt_id": item.prompt_id, "number": item.number, "node_errors": result.node_errors}


async def submit_prompt(state: ServerState, body: dict[str, Any]) -> dict[str, Any]:
    submission = _prepare_submission(body)
    return await asyncio.get_running_loop().run_in_executor(None, _validate_and_queue, state, submission)


# ----------------------------------------------------------------------------- /prompt
async def get_prompt(request: web.Request) -> web.Response:
    return json_response({"exec_info": {"queue_remaining": state_of(request).queue.queue_remaining()}})


async def post_prompt(request: web.Request) -> web.Response:
    body = await read_json_object(request, node_errors=True)
    return json_response(await submit_prompt(state_of(request), body))


# ----------------------------------------------------------------------------- /queue
def _clear_or_delete(body: dict) -> tuple[bool, list[str]]:
    """The `{"clear": true}` / `{"delete": [ids]}` body shared by POST /queue and POST /history."""
    if "clear" not in body and "delete" not in body:
        raise ApiError(400, "invalid_request", "Expected 'clear' or 'delete'",
                       'send {"clear": true} or {"delete": ["prompt_id", ...]}')
    return expect_bool(body, "clear"), (expect_id_list(body, "delete") if "delete" in body else [])


async def get_queue(request: web.Request) -> web.Response:
    state = state_of(request)
    queue = state.queue
    body: dict[str, Any] = {"queue_running": [i.as_list() for i in queue.running()],
                            "queue_pending": [i.as_list() for i in queue.pending()]}
    backend = state.worker.backend
    if backend.name != "inprocess":  # which worker runs each running prompt (docs/scaleout.md)
        body["running_on"] = backend.placements()
    return json_response(body)


async def post_queue(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    queue = state_of(request).queue
    clear, delete = _clear_or_delete(body)
    loop = asyncio.get_running_loop()
    if clear:
        await loop.run_in_executor(None, queue.wipe_queue)
    if delete:
        await loop.run_in_executor(None, queue.delete_queued, delete)
    return web.Response(status=200)


# ----------------------------------------------------------------------------- /interrupt, /free
async def post_interrupt(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_json(request, allow_empty=True)
    except ApiError:
        body = None  # ComfyUI: no or invalid JSON means a global interrupt
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    if prompt_id is not None and not isinstance(prompt_id, str):
        raise ApiError(400, "invalid_request", "'prompt_id' must be a string", f"got a JSON {json_type(prompt_id)}")
    state.worker.interrupt(prompt_id)
    return web.Response(status=200)


async def post_free(request: web.Request) -> web.Response:
    body = await read_json_object(request, allow_empty=True)
    unload = expect_bool(body, "unload_models")
    free = expect_bool(body, "free_memory")
    queue = state_of(request).queue
    if free:
        queue.set_flag("free_memory", True)
    if unload or free:
        queue.set_flag("unload_models", True)
    return web.Response(status=200)


# ----------------------------------------------------------------------------- /history
async def get_history(request: web.Request) -> web.Response:
    max_items = query_int(request, "max_items")
    offset = query_int(request, "offset", default=-1, minimum=-1)
    queue = state_of(request).queue
    entries = await asyncio.get_running_loop().run_in_executor(None, queue.history, max_items, offset)
    return json_response(entries)


async def get_history_item(request: web.Request) -> web.Response:
    return json_response(state_of(request).queue.history(prompt_id=request.match_info["prompt_id"]))


async def post_history(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    queue = state_of(request).queue
    clear, delete = _clear_or_delete(body)
    loop = asyncio.get_running_loop()
    if expect_bool(body, "delete_outputs"):  # files go only when asked: history is not the only index
        entries = await loop.run_in_executor(None, queue.history) if clear else {
            pid: entry for pid in delete for pid, entry in queue.history(prompt_id=pid).items()}
        await loop.run_in_executor(None, _delete_output_files, state_of(request), entries)
    if clear:
        await loop.run_in_executor(None, queue.clear_history)
    if delete:
        await loop.run_in_executor(None, queue.delete_history, delete)
    return web.Response(status=200)


def _delete_output_files(state: ServerState, entries: dict[str, Any]) -> None:
    """Remove the files listed in these history entries' outputs (inside output/ and temp/ only)."""
    for entry in entries.values():
        for ui in (entry.get("outputs") or {}).values():
            for records in (ui or {}).values():
                for record in records if isinstance(records, list) else []:
                    if not isinstance(record, dict) or record.get("type") not in ("output", "temp"):
                        continue
                    try:
                        path = resolve_user_file(state.runtime.folders, str(record.get("filename", "")),
                                                 record["type"], str(record.get("subfolder") or ""))
                    except ApiError:
                        continue
                    path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- /api/jobs/{id} cancel
async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a pending prompt (recorded as interrupted) or interrupt the running one."""
    state = state_of(request)
    prompt_id = request.match_info["prompt_id"]
    job = state.queue.job(prompt_id)
    if job is None:
        raise ApiError(404, "unknown_prompt_id", "No job with this prompt_id", prompt_id)
    if job["status"] == QUEUED:
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, state.queue.cancel_pending, prompt_id):
            return json_response({"prompt_id": prompt_id, "cancelled": True, "status": "interrupted"})
        job = state.queue.job(prompt_id) or job  # it started meanwhile
    if job["status"] == RUNNING:
        state.worker.interrupt(prompt_id)
        return json_response({"prompt_id": prompt_id, "cancelled": True, "status": "running",
                              "note": "interrupt requested; the job ends as interrupted"})
    raise ApiError(409, "job_finished", "The job already finished and cannot be cancelled",
                   f"{prompt_id} is {job['status']}")


def routes() -> list[tuple[str, str, Any]]:
    return [
        ("GET", "/prompt", get_prompt), ("POST", "/prompt", post_prompt),
        ("GET", "/queue", get_queue), ("POST", "/queue", post_queue),
        ("POST", "/interrupt", post_interrupt), ("POST", "/free", post_free),
        ("GET", "/history", get_history), ("GET", "/history/{prompt_id}", get_history_item),
        ("POST", "/history", post_history),
        ("POST", "/jobs/{prompt_id}/cancel", cancel_job),
        ("DELETE", "/jobs/{prompt_id}", cancel_job),
    ]
