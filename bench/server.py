"""Server benchmark: prints one JSON object.

    python bench/server.py [--runs 20]

- startup_s: `python -m engine.server` spawned until its first answer (GET /object_info).
- object_info_ms: GET /object_info over HTTP keep-alive (median, p95).
- validate_100_nodes_ms: `validate_prompt` of the 100-node chain, in process.
- ws_event_latency_ms: an event published by a worker thread until the websocket client has it (in process).
- chain_100: the 100-node no-model chain (EmptyImage -> 98 ImageInvert -> PreviewImage, as in ComfyUI's
  capture) queued over HTTP until `executing {node: null}` arrives on the websocket, fresh (a new color each
  run, so nothing is cached) and fully cached; with the websocket bytes and messages of one prompt.
  server_cpu_ms_per_prompt is the server process's CPU time per prompt, which other load does not inflate.
- ws_bytes_by_nodes: websocket bytes per prompt for chains of several lengths (linear, not quadratic).
Targets (issue 5): startup <= 1 s, /object_info <= 20 ms, chain <= 30 ms. A ComfyUI 0.8.0 server on the same
machine type: startup 9.1 s, /object_info 125 ms, chain 203 ms (118 ms cached), 2.0 MB of websocket messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def chain(n: int, color: int = 1000) -> dict[str, Any]:
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                          "color": color}}}
    for index in range(2, n):
        graph[str(index)] = {"class_type": "ImageInvert", "inputs": {"image": [str(index - 1), 0]}}
    graph[str(n)] = {"class_type": "PreviewImage", "inputs": {"images": [str(n - 1), 0]}}
    return graph


def stats_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median": round(statistics.median(ordered) * 1000, 2),
            "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000, 2),
            "min": round(ordered[0] * 1000, 2), "n": len(ordered)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- subprocess server
def start_server(base: Path, port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "engine.server", "--base-dir", str(base), "--port", str(port)],
                               env=env, cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/object_info"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            return process, time.perf_counter() - started
        except OSError:
            time.sleep(0.005)


async def http_latency(url: str, runs: int) -> list[float]:
    import aiohttp

    samples = []
    async with aiohttp.ClientSession() as session:
        for _ in range(runs + 3):
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
            samples.append(time.perf_counter() - started)
    return samples[3:]  # the first requests warm the connection


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc), insensitive to other load on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def chain_runs(base_url: str, sizes: list[int], runs: int, pid: int) -> dict[str, Any]:
    """Queue chains over HTTP and time them until the websocket's done signal; count websocket bytes."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{base_url}/ws?clientId=bench")
        await ws.receive()

        async def run(graph: dict[str, Any]) -> tuple[float, int, int]:
            started = time.perf_counter()
            async with session.post(f"{base_url}/prompt", json={"prompt": graph, "client_id": "bench"}) as r:
                prompt_id = (await r.json())["prompt_id"]
            size = count = 0
            while True:
                message = await ws.receive(timeout=60)
                size += len(message.data.encode() if isinstance(message.data, str) else message.data)
                count += 1
                data = json.loads(message.data)
                if data["type"] == "executing" and data["data"].get("node") is None \
                        and data["data"].get("prompt_id") == prompt_id:
                    return time.perf_counter() - started, size, count

        await run(chain(100, color=1))  # loads torch and warms every code path once
        fresh, cached, sizes_out = [], [], {}
        cpu_before = process_cpu_s(pid)
        for index in range(runs):
            elapsed, size, count = await run(chain(100, color=2 + index))
            fresh.append(elapsed)
        cpu_fresh = (process_cpu_s(pid) - cpu_before) / runs
        cpu_before = process_cpu_s(pid)
        for index in range(runs):
            cached.append((await run(chain(100, color=2 + index)))[0])
        cpu_cached = (process_cpu_s(pid) - cpu_before) / runs
        one = await run(chain(100, color=999_999))
        for n in sizes:
            sizes_out[str(n)] = (await run(chain(n, color=500_000 + n)))[1]
        await ws.close()
    return {"end_to_end_ms": stats_ms(fresh), "cached_ms": stats_ms(cached),
            "server_cpu_ms_per_prompt": round(cpu_fresh * 1000, 1),
            "server_cpu_ms_per_cached_prompt": round(cpu_cached * 1000, 1), "ws_bytes": one[1],
            "ws_messages": one[2], "sizes": sizes_out}


# ----------------------------------------------------------------------------- in process
def validation_time(runs: int) -> list[float]:
    from engine.backends.runtime import Runtime
    from engine.memory.manager import MemoryManager

    runtime = Runtime.create(base_dir=tempfile.mkdtemp(prefix="fg-bench-"), models=MemoryManager())
    graph = chain(100)
    samples = []
    for _ in range(runs + 2):
        started = time.perf_counter()
        result = runtime.validate(graph)
        samples.append(time.perf_counter() - started)
        assert result.ok, result.error
    return samples[2:]


def ws_latency(events: int) -> list[float]:
    """Events published from a thread (as the worker does) until the websocket client receives them."""
    from aiohttp import web

    from engine.server.app import create_app
    from engine.server.state import STATE
    from engine.backends.runtime import Runtime
    from engine.memory.manager import MemoryManager

    base = tempfile.mkdtemp(prefix="fg-bench-ws-")
    app = create_app(Runtime.create(base_dir=base, models=MemoryManager()))
    hub = app[STATE].hub
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)

    async def client() -> list[float]:
        import aiohttp

        samples = []
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/ws?clientId=lat")
            await ws.receive()
            for index in range(events + 5):
                sent = time.perf_counter()
                threading.Thread(target=hub.publish, args=("executing", {"node": str(index), "prompt_id": "p"},
                                                           "lat")).start()
                await ws.receive(timeout=10)
                samples.append(time.perf_counter() - sent)
            await ws.close()
        return samples[5:]

    try:
        return asyncio.run(client())
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fg-bench-server-"))
    port = free_port()
    process, startup = start_server(base, port)
    try:
        url = f"http://127.0.0.1:{port}"
        object_info = asyncio.run(http_latency(f"{url}/object_info", args.runs * 2))
        chains = asyncio.run(chain_runs(url, [25, 50, 100, 200, 400], max(3, args.runs // 2), process.pid))
    finally:
        process.terminate()
        process.wait(20)
    validate = validation_time(args.runs)
    latency = ws_latency(args.runs * 5)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                "load_average_1min": round(os.getloadavg()[0], 2)},
        "startup_s": round(startup, 3),
        "object_info_ms": stats_ms(object_info),
        "validate_100_nodes_ms": stats_ms(validate),
        "ws_event_latency_ms": stats_ms(latency),
        "chain_100": {k: v for k, v in chains.items() if k != "sizes"},
        "ws_bytes_by_nodes": chains["sizes"],
        "targets": {"startup_s": 1.0, "object_info_ms": 20, "chain_100_ms": 30},
        "comfyui_0_8_0_same_machine_type": {"startup_s": 9.1, "object_info_ms": 125, "chain_100_ms": 203,
                                            "chain_100_cached_ms": 118, "ws_bytes": 2_000_000},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
