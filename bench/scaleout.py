"""Scale-out benchmark (`--executor ray`): prints one JSON object.

    python bench/scaleout.py [--prompts 8] [--size 256] [--steps 8] [--chain-runs 20]

Everything goes through the real server (HTTP + websocket), one after the other in one run, on one local Ray
instance (loopback, no dashboard):
- throughput: N tiny FLUX schnell prompts of the same cost (a new seed each, so nothing is cached) queued at
  once, until the last `executing null`; with the in-process executor, 1 Ray worker and 2 Ray workers. Every
  executor gets one torch compute thread per worker (the in-process one too). Each worker runs one warm-up
  prompt first, so model loading is not counted.
- chain_100_latency: the 100-node no-model chain (EmptyImage -> 98 ImageInvert -> PreviewImage), a new color
  each run, queued alone and followed until `executing null`; in-process and on one Ray worker. added_ms is
  the median difference: what a remote run costs on top of a local one.
- load_average before and after: the scaling figure means something only on an otherwise idle machine.
Targets (issue 13): 2 workers >= 1.7x the throughput of 1; Ray adds <= 20 ms per prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from server import chain  # noqa: E402  (bench/server.py: the same 100-node no-model chain)


class LiveApp:
    """The server app in a background thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, handle_signals=False)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> "LiveApp":
        self.thread.start()
        self.ready.wait(60)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)


def flux_prompt(seed: int, size: int, steps: int) -> dict[str, Any]:
    prompt = json.loads((ROOT / "workflows" / "flux_schnell_txt2img.json").read_text())
    prompt["5"]["inputs"].update(width=size, height=size)
    prompt["17"]["inputs"]["steps"] = steps
    prompt["25"]["inputs"]["noise_seed"] = seed
    return prompt


async def run_prompts(url: str, prompts: list[dict[str, Any]]) -> float:
    """Queue every prompt at once; seconds until the last one's `executing null` (all must succeed)."""
    import aiohttp

    async with aiohttp.ClientSession(url) as http:
        ws = await http.ws_connect("/ws?clientId=bench")
        started = time.perf_counter()
        waiting = set()
        for prompt in prompts:
            async with http.post("/prompt", json={"prompt": prompt, "client_id": "bench"}) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"prompt refused: {body}")
                waiting.add(body["prompt_id"])
        failed = []
        async for message in ws:
            data = json.loads(message.data) if message.type == aiohttp.WSMsgType.TEXT else None
            if data and data["type"] == "execution_error":
                failed.append(data["data"].get("exception_message"))
            if data and data["type"] == "executing" and data["data"].get("node") is None:
                waiting.discard(data["data"].get("prompt_id"))
                if not waiting:
                    break
        elapsed = time.perf_counter() - started
        await ws.close()
    if failed:
        raise RuntimeError(f"prompts failed: {failed[:3]}")
    return elapsed


async def wait_for_workers(url: str, count: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession(url) as http:
        for _ in range(6000):
            async with http.get("/system_stats") as response:
                workers = (await response.json()).get("workers", [])
            if sum(worker["state"] == "idle" for worker in workers) >= count:
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{count} workers did not become ready")


def make_app(models_dir: Path, workers: int | None) -> tuple[Any, Any]:
    from engine.backends.runtime import Runtime
    from engine.server.app import create_app
    from engine.server.config import ServerConfig

    base = Path(tempfile.mkdtemp(prefix="fluxgraph-scaleout-"))
    runtime = Runtime.create(base_dir=base, models_dir=str(models_dir))
    backend = None
    if workers is not None:
        from engine.backends.ray.options import RayOptions
        from engine.backends.ray.backend import RayBackend

        backend = RayBackend(runtime, RayOptions(workers=workers, worker_cpus=1, threads_per_worker=1,
                                                 log_to_driver=False))
    return create_app(runtime, ServerConfig(port=0), backend=backend), backend


def measure(models_dir: Path, workers: int | None, args: argparse.Namespace, seeds: Any) -> dict[str, Any]:
    app, backend = make_app(models_dir, workers)
    result: dict[str, Any] = {}
    with LiveApp(app) as live:
        if workers is not None:
            started = time.perf_counter()
            asyncio.run(wait_for_workers(live.url, workers))
            result["workers_ready_s"] = round(time.perf_counter() - started, 2)
        warm = [flux_prompt(next(seeds), args.size, args.steps) for _ in range(workers or 1)]
        asyncio.run(run_prompts(live.url, warm))  # each worker loads its models here, untimed
        prompts = [flux_prompt(next(seeds), args.size, args.steps) for _ in range(args.prompts)]
        seconds = asyncio.run(run_prompts(live.url, prompts))
        result.update(prompts=args.prompts, seconds=round(seconds, 3),
                      prompts_per_s=round(args.prompts / seconds, 3))
        if workers in (None, 1):
            asyncio.run(run_prompts(live.url, [chain(100, color=1)]))  # warm
            samples = [asyncio.run(run_prompts(live.url, [chain(100, color=color)]))
                       for color in range(2, 2 + args.chain_runs)]
            result["chain_100_ms"] = round(statistics.median(samples) * 1000, 2)
            result["chain_100_ms_min"] = round(min(samples) * 1000, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--chain-runs", type=int, default=20)
    args = parser.parse_args()

    import itertools
    import logging

    import torch

    from engine.backends.ray.cluster import connect
    from engine.backends.ray.options import RayOptions
    from tests.support.web import tiny_zoo_models_dir

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # the in-process executor gets one compute thread, like each worker
    models_dir = tiny_zoo_models_dir()
    load_before = os.getloadavg()
    started = time.perf_counter()
    connection = connect(RayOptions(object_store_mb=128, log_to_driver=False))
    ray_start = time.perf_counter() - started
    seeds = itertools.count(1)
    try:
        inprocess = measure(models_dir, None, args, seeds)
        one = measure(models_dir, 1, args, seeds)
        two = measure(models_dir, 2, args, seeds)
    finally:
        connection.close()
    speedup = two["prompts_per_s"] / one["prompts_per_s"]
    added = one["chain_100_ms"] - inprocess["chain_100_ms"]
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "ray_start_s": round(ray_start, 2),
        "workload": {"graph": "flux_schnell_txt2img (tiny zoo)", "size": args.size, "steps": args.steps,
                     "threads_per_worker": 1},
        "throughput": {"inprocess": inprocess, "ray_1_worker": one, "ray_2_workers": two,
                       "speedup_2_over_1": round(speedup, 2), "target_speedup": 1.7,
                       "meets_target": speedup >= 1.7},
        "chain_100_latency": {"inprocess_ms": inprocess["chain_100_ms"], "ray_ms": one["chain_100_ms"],
                              "added_ms": round(added, 2), "target_added_ms": 20, "meets_target": added <= 20},
    }, indent=2))


if __name__ == "__main__":
    main()
