"""POST /api/generate: a plain request (prompt, model variant, size, steps, seed, guidance) -> a queued graph.

The graph is a shipped workflow (API format; which file per variant: `engine.recipes.variants`), with the
request's values written into the nodes that hold them (found by class and input name, so any equivalent
wiring works). A variant is *installed* when its workflow exists and every file it names is present (its
graph passes validation); an unknown or missing variant gets a 400 that lists the installed ones. FLUX.2
variants also take `images`: reference images (files in input/, e.g. from /upload/image). FLUX.1 fill,
Kontext edits, Redux style images and LoRAs: engine/server/generate_conditioning.py.
GET /api/variants lists every variant with its defaults.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.server.errors import ApiError, dumps, json_response, json_type, read_json_object
from engine.server.generate_conditioning import apply_conditioning, conditioning_workflow, parse_conditioning
from engine.server.routes_prompt import submit_prompt
from engine.server.state import ServerState, state_of
from engine.recipes.variants import (MAX_REFERENCE_IMAGES, add_reference_images, describe_variant, known_variants,
                                    workflow_file)

SEED_MAX = 2**64 - 1
MAX_PROMPT_CHARS = 20_000
TEXT_ENCODERS = {"CLIPTextEncode": ("text",), "CLIPTextEncodeFlux": ("clip_l", "t5xxl")}
# Where each request field goes: (class_type, input name) pairs, every literal match is set.
TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "width": (("EmptySD3LatentImage", "width"), ("EmptyLatentImage", "width"), ("EmptyFlux2LatentImage", "width"),
              ("ModelSamplingFlux", "width"), ("Flux2Scheduler", "width")),
    "height": (("EmptySD3LatentImage", "height"), ("EmptyLatentImage", "height"),
               ("EmptyFlux2LatentImage", "height"), ("ModelSamplingFlux", "height"), ("Flux2Scheduler", "height")),
    "steps": (("KSampler", "steps"), ("KSamplerAdvanced", "steps"), ("BasicScheduler", "steps"),
              ("Flux2Scheduler", "steps")),
    "seed": (("KSampler", "seed"), ("KSamplerAdvanced", "noise_seed"), ("RandomNoise", "noise_seed")),
    "guidance": (("FluxGuidance", "guidance"), ("CLIPTextEncodeFlux", "guidance")),
    "cfg": (("CFGGuider", "cfg"), ("KSampler", "cfg"), ("KSamplerAdvanced", "cfg")),
    "batch_size": (("EmptySD3LatentImage", "batch_size"), ("EmptyLatentImage", "batch_size"),
                   ("EmptyFlux2LatentImage", "batch_size")),
    "filename_prefix": (("SaveImage", "filename_prefix"),),
}
# Inputs through which a positive text conditioning reaches the sampler.
POSITIVE_INPUTS = {"positive", "conditioning"}


def load_workflow(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise ValueError(f"{path.name} is not an API-format workflow")
    return data


def installed_variants(state: ServerState) -> dict[str, dict[str, Any]]:
    """variant -> its workflow, for the variants whose workflow validates (all model files present)."""
    found = {}
    for variant in known_variants(state.config.workflows_dir):
        try:
            workflow = load_workflow(workflow_file(state.config.workflows_dir, variant))
        except (OSError, ValueError):
            continue
        if state.runtime.validate(workflow).ok:
            found[variant] = workflow
    return found


def _int_field(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, "invalid_request", f"'{key}' must be an integer", f"got a JSON {json_type(value)}")
    if not low <= value <= high:
        raise ApiError(400, "invalid_request", f"'{key}' must be between {low} and {high}", f"got {value}")
    return value


def parse_request(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "invalid_request", "'prompt' must be a non-empty string",
                       f"got {dumps(text)[:100]}" if "prompt" in body else "'prompt' is missing")
    if len(text) > MAX_PROMPT_CHARS:
        raise ApiError(400, "invalid_request", f"'prompt' is longer than {MAX_PROMPT_CHARS} characters",
                       f"{len(text)} characters")
    variant = body.get("model", body.get("variant", "flux-schnell"))
    if not isinstance(variant, str):
        raise ApiError(400, "invalid_request", "'model' must be a variant name such as flux-schnell",
                       f"got a JSON {json_type(variant)}")
    values: dict[str, Any] = {
        "width": _int_field(body, "width", 16, 16384), "height": _int_field(body, "height", 16, 16384),
        "steps": _int_field(body, "steps", 1, 10000), "seed": _int_field(body, "seed", 0, SEED_MAX),
        "batch_size": _int_field(body, "batch_size", 1, 64),
    }
    for key in ("guidance", "cfg"):
        number = body.get(key)
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= 100:
                raise ApiError(400, "invalid_request", f"'{key}' must be a number between 0 and 100",
                               f"got {dumps(number)[:50]}")
            values[key] = float(number)
    prefix = body.get("filename_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise ApiError(400, "invalid_request", "'filename_prefix' must be a string", f"got a JSON {json_type(prefix)}")
    values["filename_prefix"] = prefix
    if values["seed"] is None:
        values["seed"] = random.randint(0, 2**53)  # like the editor's "randomize"; reported back
    client_id = body.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        raise ApiError(400, "invalid_request", "'client_id' must be a string", f"got a JSON {json_type(client_id)}")
    return {"text": text, "variant": variant, "values": values, "client_id": client_id,
            "images": _reference_images(body)}


def _reference_images(body: dict[str, Any]) -> list[str]:
    images = body.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) and i.strip() for i in images):
        raise ApiError(400, "invalid_request", "'images' must be a list of image file names (in input/)",
                       f"got {dumps(images)[:100]}")
    if len(images) > MAX_REFERENCE_IMAGES:
        raise ApiError(400, "invalid_request", f"at most {MAX_REFERENCE_IMAGES} reference images",
                       f"got {len(images)}")
    return images


def positive_encoders(workflow: dict[str, Any]) -> list[str]:
    """Text-encoder nodes that feed a sampler's positive (or guider's) conditioning, directly or via others."""
    encoders = [nid for nid, n in workflow.items() if n.get("class_type") in TEXT_ENCODERS]
    if len(encoders) <= 1:
        return encoders
    positive: set[str] = set()
    for node in workflow.values():
        for name, value in (node.get("inputs") or {}).items():
            if name in POSITIVE_INPUTS and isinstance(value, list) and value:
                stack = [str(value[0])]
                while stack:
                    current = stack.pop()
                    if current in positive or current not in workflow:
                        continue
                    if current in encoders:
                        positive.add(current)
                        continue
                    stack.extend(str(v[0]) for v in (workflow[current].get("inputs") or {}).values()
                                 if isinstance(v, list) and v)
    return sorted(positive) or encoders[:1]


def build_graph(workflow: dict[str, Any], text: str, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The workflow with the request written in; also the names of fields the workflow has no place for."""
    graph = copy.deepcopy(workflow)
    for node_id in positive_encoders(graph):
        node = graph[node_id]
        for name in TEXT_ENCODERS[node["class_type"]]:
            node.setdefault("inputs", {})[name] = text
    ignored = []
    for field, value in values.items():
        if value is None:
            continue
        hits = 0
        for node in graph.values():
            inputs = node.setdefault("inputs", {})
            for class_type, name in TARGETS[field]:
                if node.get("class_type") == class_type and not isinstance(inputs.get(name), list):
                    inputs[name] = value
                    hits += 1
        if not hits:
            ignored.append(field)
    return graph, ignored


async def post_generate(request: web.Request) -> web.Response:
    state = state_of(request)
    raw = await read_json_object(request)
    req = parse_request(raw)
    conditioning = parse_conditioning(raw, req["variant"])  # fill / Kontext / Redux / LoRA fields
    loop = asyncio.get_running_loop()
    workflow = conditioning_workflow(state.config.workflows_dir, conditioning, req["values"])
    installed = {req["variant"]: workflow} if workflow is not None else \
        await loop.run_in_executor(None, installed_variants, state)
    if req["variant"] not in installed:
        known = known_variants(state.config.workflows_dir)
        reason = "its model files are missing" if req["variant"] in known else "unknown model variant"
        raise ApiError(400, "unknown_variant", f"Model variant {req['variant'][:50]!r} is not available: {reason}",
                       f"installed variants: {', '.join(installed) or 'none'}", installed=list(installed),
                       known=known)
    graph, ignored = build_graph(installed[req["variant"]], req["text"], req["values"])
    graph = apply_conditioning(graph, conditioning, state.config.workflows_dir)
    if req["images"] and not conditioning.takes_images:
        if not describe_variant(req["variant"], graph, True)["reference_images"]:
            raise ApiError(400, "invalid_request", f"Model variant {req['variant']!r} takes no reference images",
                           "reference images work with the FLUX.2 variants")
        graph = add_reference_images(graph, req["images"])
    body = {"prompt": graph, "extra_data": {"fluxgraph_generate": {"variant": req["variant"]}}}
    if req["client_id"]:
        body["client_id"] = req["client_id"]
    queued = await submit_prompt(state, body)
    return json_response({**queued, "variant": req["variant"], "seed": req["values"]["seed"],
                          "ignored": [f for f in ignored if f != "filename_prefix" or req["values"][f]]})


async def get_generate_variants(request: web.Request) -> web.Response:
    state = state_of(request)
    installed = await asyncio.get_running_loop().run_in_executor(None, installed_variants, state)
    return json_response({"installed": list(installed), "known": known_variants(state.config.workflows_dir)})


async def get_variants(request: web.Request) -> web.Response:
    """Every known variant: installed or not, family, defaults (steps, guidance, cfg, size), reference images."""
    state = state_of(request)
    installed = await asyncio.get_running_loop().run_in_executor(None, installed_variants, state)
    variants = []
    for name in known_variants(state.config.workflows_dir):
        try:
            workflow = installed.get(name) or load_workflow(workflow_file(state.config.workflows_dir, name))
        except (OSError, ValueError):
            continue
        variants.append(describe_variant(name, workflow, name in installed))
    return json_response({"variants": variants, "installed": list(installed)})


def routes() -> list[tuple[str, str, Any]]:
    return [("POST", "/generate", post_generate), ("GET", "/generate/variants", get_generate_variants),
            ("GET", "/variants", get_variants)]
