"""The server with `--executor ray`: one local Ray instance for the test session (loopback, no dashboard, a
small object store) and two CPU workers (`num_cpus=0`, one torch thread each) serving the tiny FLUX zoo.

The issue's four scenarios over real HTTP and websockets: 20 prompts from 3 clients complete with their
events in order (and fair turns); a worker killed mid-prompt (the prompt completes on the other worker,
resumed once; a replacement worker starts); model affinity; interrupt and cancel reaching the remote worker.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
import ray
from PIL import Image

from engine.backends.runtime import Runtime
from engine.server.app import create_app
from engine.backends.ray.cluster import connect
from engine.backends.ray.options import RayOptions
from engine.backends.ray.backend import RayBackend
from tests.support.server import make_config, registry, sleep_graph
from tests.support.web import free_port, tiny_zoo_models_dir

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
TIMEOUT = 90.0


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def ray_cluster():
    connection = connect(RayOptions(object_store_mb=80, log_to_driver=False))
    assert ray.util.get_node_ip_address() == "127.0.0.1"  # a local instance listens on loopback only
    yield connection
    connection.close()


class ThreadServer:
    """The aiohttp app served from a background thread, so that every test can talk to it over HTTP."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="ray-test-server")
        self._started = threading.Event()
        self._runner: Any = None

    def _serve(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.app, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> "ThreadServer":
        self._thread.start()
        assert self._started.wait(60), "the server did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(60)


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("ray_server")
    runtime = Runtime.create(base_dir=base, models_dir=str(tiny_zoo_models_dir()), registry=registry(), models=None)
    options = RayOptions(workers=2, worker_cpus=0, threads_per_worker=1, log_to_driver=False,
                         node_packages=["nodes", "tests.support.ray_nodes"])
    backend = RayBackend(runtime, options)
    live = ThreadServer(create_app(runtime, make_config(base, workflows_dir=WORKFLOWS), backend=backend)).start()
    live.backend, live.runtime = backend, runtime
    yield live
    live.stop()
    assert backend.start_errors == []


@pytest_asyncio.fixture
async def http(server):
    async with aiohttp.ClientSession(server.url) as session:
        await wait_for_idle_workers(session, 2)
        yield session


# ---------------------------------------------------------------------------------------------- helpers
async def get_json(http, path: str) -> Any:
    async with http.get(path) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def queue_prompt(http, prompt: dict, client_id: str) -> str:
    async with http.post("/prompt", json={"prompt": prompt, "client_id": client_id}) as response:
        body = await response.json()
        assert response.status == 200, body
        return body["prompt_id"]


async def wait_for_idle_workers(http, count: int, timeout: float = TIMEOUT) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = (await get_json(http, "/system_stats"))["workers"]
        if sum(worker["state"] == "idle" for worker in workers) >= count:
            return workers
        await asyncio.sleep(0.1)
    raise TimeoutError(f"fewer than {count} idle workers after {timeout} s: {workers}")


async def wait_for_job(http, prompt_id: str, statuses=("completed", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        job = await get_json(http, f"/api/jobs/{prompt_id}")
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{prompt_id} did not reach {statuses}")


class Listener:
    """Collects one client's websocket messages in the background."""

    def __init__(self, http, client_id: str) -> None:
        self.http, self.client_id = http, client_id
        self.messages: list[dict] = []
        self.previews: list[bytes] = []  # binary frames: event type, image format, JPEG bytes
        self.changed = asyncio.Event()

    async def __aenter__(self) -> "Listener":
        self.ws = await self.http.ws_connect(f"/ws?clientId={self.client_id}")
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))
                self.changed.set()
            elif message.type == aiohttp.WSMsgType.BINARY:
                self.previews.append(message.data)

    async def __aexit__(self, *exc: Any) -> None:
        self.task.cancel()
        await self.ws.close()

    async def until(self, predicate, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))

    def of(self, prompt_id: str) -> list[dict]:
        return [m for m in self.messages if m["data"].get("prompt_id") == prompt_id]

    def done(self, prompt_id: str) -> bool:
        return any(m["type"] == "executing" and m["data"]["node"] is None for m in self.of(prompt_id))


def flux_prompt(variant: str, seed: int) -> dict:
    prompt = json.loads((WORKFLOWS / f"flux_{variant}_txt2img.json").read_text())
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptySD3LatentImage":
            inputs.update(width=64, height=64)
        if "steps" in inputs:
            inputs["steps"] = 2
        for key in ("seed", "noise_seed"):
            if key in inputs:
                inputs[key] = seed
    return prompt


def progress_and_preview_prompt(value: int) -> dict:
    return {**sleep_graph(value, 0.05, steps=3),
            "3": {"class_type": "TestPreview", "inputs": {"value": value}},
            "4": {"class_type": "TestShowInt", "inputs": {"value": ["3", 0]}}}


def invert_prompt(image: str, prefix: str) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


def assert_in_order(messages: list[dict]) -> None:
    """One prompt's events as a local run sends them: start, cached, per node executing -> progress ->
    executed (a cached output node: executed alone), success, and the closing `executing null` last."""
    kinds = [m["type"] for m in messages]
    assert kinds[:2] == ["execution_start", "execution_cached"], kinds
    assert kinds[-2:] == ["execution_success", "executing"] and messages[-1]["data"]["node"] is None, kinds
    cached = set(messages[1]["data"]["nodes"])
    current, executed, last_progress = None, set(), {}
    for message in messages[2:-2]:
        kind, data = message["type"], message["data"]
        assert kind in ("executing", "progress", "executed"), kind
        if kind == "executing":
            current = data["node"]
        elif kind == "progress":
            assert data["node"] == current and data["value"] > last_progress.get(current, 0)
            last_progress[current] = data["value"]
        else:
            assert data["node"] in cached or data["node"] == current, (data["node"], current)
            assert data["node"] not in executed
            executed.add(data["node"])


async def view(http, record: dict) -> np.ndarray:
    async with http.get("/view", params=record) as response:
        assert response.status == 200
        return np.asarray(Image.open(io.BytesIO(await response.read())).convert("RGB"))


# ---------------------------------------------------------------------------------------------- scenarios
async def test_twenty_prompts_from_three_clients_complete_in_order_and_take_fair_turns(http):
    picture = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    upload = io.BytesIO()
    Image.fromarray(picture).save(upload, format="PNG")
    form = aiohttp.FormData()
    form.add_field("image", upload.getvalue(), filename="noise.png", content_type="image/png")
    async with http.post("/upload/image", data=form) as response:
        uploaded = (await response.json())["name"]

    async with Listener(http, "alice") as alice, Listener(http, "bob") as bob, Listener(http, "carol") as carol, \
            Listener(http, "zed") as zed:
        # Two slow prompts hold both workers while the twenty are queued: then the order they start in is
        # the scheduler's choice alone, whatever the timing of the requests.
        blockers = [await queue_prompt(http, sleep_graph(i, seconds=4.0, steps=4), "zed") for i in range(2)]
        await zed.until(lambda _: all(any(m["type"] == "progress" for m in zed.of(b)) for b in blockers))
        queued: dict[str, list[str]] = {"alice": [], "bob": [], "carol": []}
        for index in range(7):  # each client queues all of its prompts before the next client
            queued["alice"].append(await queue_prompt(http, flux_prompt("schnell", index), "alice"))
        for index in range(7):
            queued["bob"].append(await queue_prompt(http, invert_prompt(uploaded, "bob"), "bob"))
        for index in range(6):
            queued["carol"].append(await queue_prompt(http, progress_and_preview_prompt(index), "carol"))
        running = await get_json(http, "/queue")
        assert set(running["running_on"]) == set(blockers) and len(running["queue_pending"]) == 20
        for listener in (alice, bob, carol):
            await listener.until(lambda _, lst=listener: all(lst.done(p) for p in queued[lst.client_id]))

    jobs = {pid: await get_json(http, f"/api/jobs/{pid}") for pids in queued.values() for pid in pids}
    assert {job["status"] for job in jobs.values()} == {"completed"}
    assert len({job["worker"]["worker"] for job in jobs.values()}) == 2
    owner = {pid: client for client, pids in queued.items() for pid in pids}
    order = [owner[pid] for pid in sorted(jobs, key=lambda pid: jobs[pid]["started_at"])]
    # Turns, not queue order: each client's first prompt starts before anyone's second (alice queued all of
    # hers first), then whoever has fewer running goes next (the exact sequence: test_ray_scheduling.py).
    assert sorted(order[:3]) == ["alice", "bob", "carol"], order
    assert max(Counter(order[:6]).values()) <= 3, order

    alice_files = set()
    for listener in (alice, bob, carol):
        for prompt_id in queued[listener.client_id]:
            messages = listener.of(prompt_id)
            assert_in_order(messages)
            outputs = [m["data"]["output"] for m in messages if m["type"] == "executed"]
            history = (await get_json(http, f"/history/{prompt_id}"))[prompt_id]
            assert list(history["outputs"].values()) == outputs
            for output in outputs:
                for record in output.get("images", []):
                    image = await view(http, record)
                    if listener.client_id == "bob":  # the upload reached the worker, its result came back
                        # (repeats: cached, naming the same file); 8-bit saving truncates, as ComfyUI's does
                        inverted = 255.0 * (1.0 - picture.astype(np.float32) / np.float32(255.0))
                        assert np.array_equal(image, np.clip(inverted, 0, 255).astype(np.uint8))
                    elif listener.client_id == "alice":
                        alice_files.add(record["filename"])
                        assert image.shape == (64, 64, 3)
            if listener.client_id == "carol":
                assert sorted(m["data"]["node"] for m in messages if m["type"] == "progress") == ["1", "1", "1", "3"]
    assert len(carol.previews) == 6  # one preview image per prompt, sent by the worker
    for frame in carol.previews:
        assert frame[:8] == bytes([0, 0, 0, 1, 0, 0, 0, 1])  # PREVIEW_IMAGE, JPEG
        assert Image.open(io.BytesIO(frame[8:])).size == (16, 8)
    assert len(alice_files) == 7  # both workers counted from 00001: the server stored each image under its own name


async def test_worker_killed_mid_prompt_completes_on_the_other_worker_resumed_once(http):
    async with Listener(http, "kill") as listener:
        prompt_id = await queue_prompt(http, sleep_graph(7, seconds=3.0, steps=30), "kill")
        await listener.until(lambda _: any(m["type"] == "progress" for m in listener.of(prompt_id)))
        victim = (await get_json(http, f"/api/jobs/{prompt_id}"))["worker"]["worker"]
        workers = (await get_json(http, "/system_stats"))["workers"]
        pid = next(worker["pid"] for worker in workers if worker["name"] == victim)
        os.kill(pid, signal.SIGKILL)
        await listener.until(lambda _: listener.done(prompt_id))
        job = await wait_for_job(http, prompt_id)

    assert job["status"] == "completed" and job["resumed"] is True
    assert job["worker"]["worker"] not in (victim, None)
    messages = listener.of(prompt_id)
    kinds = [m["type"] for m in messages]
    assert kinds.count("execution_start") == 2  # the lost run, then the rerun
    assert kinds.count("execution_success") == 1 and kinds.count("executed") == 1  # completed once
    rerun = messages[len(kinds) - 1 - kinds[::-1].index("execution_start"):]
    assert_in_order(rerun)
    entry = (await get_json(http, f"/history/{prompt_id}"))[prompt_id]
    assert entry["status"]["resumed"] is True and entry["outputs"]["2"]["text"] == ["7"]
    workers = await wait_for_idle_workers(http, 2)  # Ray started a replacement
    assert victim not in {worker["name"] for worker in workers} and len(workers) == 2


async def test_repeated_prompts_on_one_model_land_on_the_worker_that_has_it_loaded(http):
    async with http.post("/free", json={"unload_models": True}) as response:
        assert response.status == 200

    async def run(prompt: dict) -> str:
        prompt_id = await queue_prompt(http, prompt, "affinity")
        job = await wait_for_job(http, prompt_id)
        assert job["status"] == "completed", job
        return job["worker"]["worker"]

    holder = await run(flux_prompt("dev", 1))
    # Without affinity the next prompt would go to the worker idle the longest, which is the other one.
    assert [await run(flux_prompt("dev", seed)) for seed in (2, 3)] == [holder, holder]
    assert await run(sleep_graph(1, 0.01, 1)) != holder  # no models: the least loaded worker
    assert await run(flux_prompt("dev", 4)) == holder
    held = {w["name"]: w["models_held"] for w in (await get_json(http, "/system_stats"))["workers"]}
    assert held[holder] == 4  # transformer, two text encoders, VAE


async def test_interrupt_and_cancel_reach_the_remote_worker(http):
    async with Listener(http, "stop") as listener:
        first = await queue_prompt(http, sleep_graph(1, seconds=30.0, steps=300), "stop")
        second = await queue_prompt(http, sleep_graph(2, seconds=30.0, steps=300), "stop")
        await listener.until(lambda _: all(any(m["type"] == "progress" for m in listener.of(p))
                                           for p in (first, second)))
        running_on = (await get_json(http, "/queue"))["running_on"]
        assert len({running_on[first]["worker"], running_on[second]["worker"]}) == 2
        stats = await get_json(http, "/system_stats")
        assert sorted(w["state"] for w in stats["workers"]) == ["busy", "busy"]
        assert all(w["device"]["type"] == "cpu" and w["device"]["vram_total"] > 0 and w["device"]["process_rss"] > 0
                   for w in stats["workers"])
        async with http.post("/interrupt", json={"prompt_id": first}) as response:
            assert response.status == 200
        async with http.delete(f"/api/jobs/{second}") as response:
            assert (await response.json())["status"] == "running"
        await listener.until(lambda _: listener.done(first) and listener.done(second))

    for prompt_id in (first, second):  # each had 30 s of work left: ended by the interrupt, not by finishing
        job = await wait_for_job(http, prompt_id)
        assert job["status"] == "cancelled" and not job["resumed"]
        kinds = [m["type"] for m in listener.of(prompt_id)]
        assert "execution_interrupted" in kinds and "execution_success" not in kinds
