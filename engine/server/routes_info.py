"""Node and model information: /object_info, /system_stats, /models, /embeddings, /extensions, /features.

Nothing here imports torch: versions come from package metadata and devices are listed only when torch is
already loaded (a prompt with models ran), so these answer in milliseconds right after start-up.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import web

import engine
from engine.core.folders import DEFAULT_MODEL_FOLDERS
from engine.memory.system_ram import ram_info
from engine.server.errors import ApiError, json_response
from engine.server.routes_frontend import extension_urls
from engine.server.state import state_of

# The ComfyUI protocol level these routes follow (clients read `comfyui_version`).
COMPATIBLE_COMFYUI_VERSION = "0.8.0"


async def get_object_info(request: web.Request) -> web.Response:
    runtime = state_of(request).runtime
    return json_response(runtime.registry.object_info(runtime.folders))


async def get_object_info_class(request: web.Request) -> web.Response:
    runtime = state_of(request).runtime
    schema = runtime.registry.get(request.match_info["node_class"])
    if schema is None:
        return json_response({})  # ComfyUI answers an unknown class with {} and 200
    return json_response({schema.name: schema.object_info(runtime.folders)})


async def get_features(request: web.Request) -> web.Response:
    return json_response(state_of(request).feature_flags())


async def get_models(request: web.Request) -> web.Response:
    return json_response(list(DEFAULT_MODEL_FOLDERS))


async def get_models_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in DEFAULT_MODEL_FOLDERS:
        raise ApiError(404, "unknown_model_folder", "Unknown model folder", folder,
                       known=list(DEFAULT_MODEL_FOLDERS))
    folders = state_of(request).runtime.folders
    include_dirs = folder in ("diffusers", "text_encoders", "segmentation", "tokenizers")
    return json_response(folders.list_models(folder, include_dirs=include_dirs))


async def get_embeddings(request: web.Request) -> web.Response:
    folders = state_of(request).runtime.folders
    return json_response(sorted({Path(name).with_suffix("").as_posix() for name in folders.list_models("embeddings")}))


async def get_extensions(request: web.Request) -> web.Response:
    """fluxgraph's own frontend extension scripts (web/extensions/), as ComfyUI lists a node pack's WEB_DIRECTORY."""
    return json_response(extension_urls(state_of(request).config.web_dir))


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes, from /proc/meminfo or sysconf."""
    total, available = ram_info()
    if total is not None:
        return total, available if available is not None else 0
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    return pages * size, pages * size


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _devices(ram_total: int, ram_free: int) -> list[dict[str, Any]]:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        devices = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            reserved = torch.cuda.memory_reserved(index)
            allocated = torch.cuda.memory_allocated(index)
            devices.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                            "index": index, "vram_total": total, "vram_free": free,
                            "torch_vram_total": reserved, "torch_vram_free": reserved - allocated})
        return devices
    return [{"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
             "torch_vram_total": ram_total, "torch_vram_free": ram_free}]


def _redacted_argv() -> list[str]:
    """sys.argv without the auth token's value (it would be readable by anyone the CORS origin admits)."""
    argv, hide_next = [], False
    for arg in sys.argv:
        if hide_next:
            argv.append("***")
            hide_next = False
        elif arg == "--auth-token":
            argv.append(arg)
            hide_next = True
        elif arg.startswith("--auth-token="):
            argv.append("--auth-token=***")
        else:
            argv.append(arg)
    return argv


async def get_system_stats(request: web.Request) -> web.Response:
    ram_total, ram_free = _memory()
    system = {
        "os": sys.platform,
        "ram_total": ram_total,
        "ram_free": ram_free,
        "comfyui_version": COMPATIBLE_COMFYUI_VERSION,
        "fluxgraph_version": engine.__version__,
        "required_frontend_version": engine.__version__,  # the editor ships with the server
        "installed_templates_version": "",
        "required_templates_version": "",
        "python_version": sys.version,
        "pytorch_version": _package_version("torch"),
        "embedded_python": False,
        # the frontend then never calls api.comfy.org (fluxgraph has no API nodes and works offline)
        "argv": _redacted_argv() + ["--disable-api-nodes"],
        "machine": platform.machine(),
    }
    body = {"system": system, "devices": _devices(ram_total, ram_free)}
    backend = state_of(request).worker.backend
    if backend.name != "inprocess":  # each worker with its device and memory (docs/scaleout.md)
        body["workers"] = await asyncio.get_running_loop().run_in_executor(None, backend.workers_info)
    models = getattr(state_of(request).runtime, "models", None)
    if hasattr(models, "stats"):
        body["memory"] = models.stats()  # mode, budget and each loaded model's placement (docs/memory.md)
    return json_response(body)


async def get_workflow_templates(request: web.Request) -> web.Response:
    """Example workflows of custom node packs, by pack: fluxgraph has none ({} as ComfyUI answers then)."""
    return json_response({})


def routes() -> list[tuple[str, str, Any]]:
    return [
        ("GET", "/object_info", get_object_info), ("GET", "/object_info/{node_class}", get_object_info_class),
        ("GET", "/features", get_features), ("GET", "/models", get_models),
        ("GET", "/models/{folder}", get_models_folder), ("GET", "/embeddings", get_embeddings),
        ("GET", "/extensions", get_extensions), ("GET", "/system_stats", get_system_stats),
        ("GET", "/workflow_templates", get_workflow_templates),
    ]
