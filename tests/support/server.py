"""Shared helpers for the server tests (no tests here): a runtime with core nodes plus a toy pack, graphs,
and a websocket reader."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from PIL import Image

from engine.core.registry import NodeRegistry
from engine.backends.runtime import Runtime
from engine.core.schema import Combo, Float, Int, NodeResult, Output, Socket, String, node
from engine.server.config import ServerConfig
from tests.support.reference import REFERENCE_DIR
from tests.support.waiting import DEADLINE, wait_until_async

REFERENCE = REFERENCE_DIR  # captures of ComfyUI 0.8.0


@node("TestSleep", inputs=[Int("value", 0, min=0, max=1000), Float("seconds", 0.01, min=0.0, max=60.0),
                           Int("steps", 2, min=1, max=1000)], outputs=[Output("INT")], category="test")
def toy_sleep(ctx, value, seconds, steps):
    for step in range(steps):
        time.sleep(seconds / steps)
        ctx.progress(step + 1, steps)
    return (value,)


@node("TestShowInt", inputs=[Socket("value", "INT")], outputs=[], output_node=True, category="test")
def toy_show_int(ctx, value):
    return NodeResult(ui={"text": [str(value)]})


@node("TestFail", inputs=[Socket("value", "INT")], outputs=[Output("INT")], category="test")
def toy_fail(ctx, value):
    raise RuntimeError(f"TestFail refuses {value}")


@node("TestPreview", inputs=[Int("value", 0)], outputs=[Output("INT")], category="test")
def toy_preview(ctx, value):
    ctx.progress(1, 1, Image.new("RGB", (16, 8), (255, 0, 0)))
    return (value,)


@node("TestPathString", inputs=[String("model_name", "x.safetensors")], outputs=[], output_node=True,
      category="test")
def toy_path_string(ctx, model_name):
    return NodeResult(ui={"text": [model_name]})


def _checkpoints(folders):
    return folders.list_models("checkpoints") if folders is not None else []


# A loader whose own hook accepts any name, like ComfyUI's LoadImage: only the server's check protects it.
@node("TestTrustingLoader", inputs=[Combo("ckpt_name", _checkpoints)], outputs=[], output_node=True,
      category="test", validate_inputs=lambda ckpt_name: True)
def toy_trusting_loader(ctx, ckpt_name):
    return NodeResult(ui={"text": [ckpt_name]})


TOY_NODES = [toy_sleep, toy_show_int, toy_fail, toy_preview, toy_path_string, toy_trusting_loader]
_CORE_REGISTRY: NodeRegistry | None = None


def registry() -> NodeRegistry:
    """Core nodes (discovered once per session) plus the toy pack, in a fresh registry object."""
    global _CORE_REGISTRY
    if _CORE_REGISTRY is None:
        _CORE_REGISTRY = NodeRegistry().discover("nodes")
    reg = NodeRegistry(list(_CORE_REGISTRY))
    for schema in TOY_NODES:
        reg.register(schema)
    return reg


def make_runtime(base_dir: Path) -> Runtime:
    return Runtime.create(base_dir=base_dir, registry=registry(), models=None)


def make_config(tmp_path: Path, **changes: Any) -> ServerConfig:
    web_dir = tmp_path / "web"
    web_dir.mkdir(exist_ok=True)
    (web_dir / "index.html").write_text("<!doctype html><title>editor</title>")
    config = ServerConfig(web_dir=web_dir, workflows_dir=tmp_path / "workflows")
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def image_graph(prefix: str = "rt", width: int = 8, height: int = 8, color: int = 0xFF0000) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                         "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def sleep_graph(value: int = 1, seconds: float = 0.01, steps: int = 2) -> dict[str, Any]:
    return {"1": {"class_type": "TestSleep", "inputs": {"value": value, "seconds": seconds, "steps": steps}},
            "2": {"class_type": "TestShowInt", "inputs": {"value": ["1", 0]}}}


def chain_graph(n: int = 100) -> dict[str, Any]:
    """EmptyImage -> (n-2) ImageInvert -> PreviewImage, the chain of the ComfyUI capture."""
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                          "color": 1000}}}
    for index in range(2, n):
        graph[str(index)] = {"class_type": "ImageInvert", "inputs": {"image": [str(index - 1), 0]}}
    graph[str(n)] = {"class_type": "PreviewImage", "inputs": {"images": [str(n - 1), 0]}}
    return graph


async def receive_json(ws: Any, timeout: float = DEADLINE) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.receive(), timeout)
        if message.type.name == "TEXT":
            return json.loads(message.data)
        if message.type.name in ("CLOSE", "CLOSED", "ERROR"):
            raise ConnectionError(f"websocket closed: {message}")


async def messages_until_done(ws: Any, prompt_id: str, timeout: float = DEADLINE) -> list[dict[str, Any]]:
    """JSON messages up to and including `executing {node: null}` for this prompt."""
    seen = []
    while True:
        message = await receive_json(ws, timeout)
        seen.append(message)
        data = message.get("data", {})
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return seen


async def progress_messages(ws: Any, prompt_id: str, count: int, timeout: float = DEADLINE) -> list[dict[str, Any]]:
    """The next `count` progress messages of `prompt_id` on `ws` (other messages are skipped)."""
    seen: list[dict[str, Any]] = []
    while len(seen) < count:
        message = await receive_json(ws, timeout)
        if message["type"] == "progress" and message["data"].get("prompt_id") == prompt_id:
            seen.append(message)
    return seen


async def wait_for_job(client: Any, prompt_id: str, statuses=("completed", "failed", "cancelled"),
                       timeout: float = DEADLINE) -> dict[str, Any]:
    job: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal job
        response = await client.get(f"/api/jobs/{prompt_id}")
        job = await response.json() if response.status == 200 else {}
        return job.get("status") in statuses

    await wait_until_async(reached, timeout, what=f"job {prompt_id} to reach {statuses}")
    return job


async def generate_image(client: Any, **request: Any) -> tuple[dict[str, Any], Any]:
    """POST /api/generate ("a quiet harbour", 2 steps, seed 5, overridden by `request`), wait for the job and
    return (the graph it ran, its one image as an RGB uint8 array)."""
    import io

    import numpy as np

    response = await client.post("/api/generate", json={"prompt": "a quiet harbour", "steps": 2, "seed": 5,
                                                        **request})
    assert response.status == 200, await response.text()
    queued = await response.json()
    job = await wait_for_job(client, queued["prompt_id"], timeout=120)
    assert job["status"] == "completed", job
    entry = (await (await client.get(f"/history/{queued['prompt_id']}")).json())[queued["prompt_id"]]
    (record,) = [image for output in entry["outputs"].values() for image in output["images"]]
    raw = await (await client.get("/view", params=record)).read()
    return entry["prompt"][2], np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def same_shape(actual: Any, reference: Any, path: str = "$") -> list[str]:
    """Differences in JSON *shape* (keys and value types) between a response and a capture."""
    problems: list[str] = []
    if isinstance(reference, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {type(actual).__name__}"]
        for key, value in reference.items():
            if key == "...":
                continue
            if key not in actual:
                problems.append(f"{path}: missing key {key!r}")
            else:
                problems.extend(same_shape(actual[key], value, f"{path}.{key}"))
    elif isinstance(reference, list):
        if not isinstance(actual, list):
            return [f"{path}: expected an array, got {type(actual).__name__}"]
        if reference and actual:
            problems.extend(same_shape(actual[0], reference[0], f"{path}[0]"))
    elif reference is None:
        pass  # null in the capture: any value (or null) is fine
    elif isinstance(reference, bool):
        if not isinstance(actual, bool):
            problems.append(f"{path}: expected a boolean, got {actual!r}")
    elif isinstance(reference, (int, float)):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            problems.append(f"{path}: expected a number, got {actual!r}")
    elif isinstance(reference, str):
        if not isinstance(actual, str):
            problems.append(f"{path}: expected a string, got {actual!r}")
    return problems
