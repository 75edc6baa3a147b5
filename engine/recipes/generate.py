"""/api/generate's recipe: a plain request (prompt, model variant, size, steps, seed, guidance) -> a prompt.

The graph is a shipped workflow (API format; which file per variant: `engine.recipes.variants`), with the
request's values written into the nodes that hold them (found by class and input name, so any equivalent
wiring works). A variant is *installed* when its workflow exists and every file it names is present (its
graph passes validation); an unknown or missing variant is refused with the installed ones listed. FLUX.2
variants also take `images`: reference images (files in input/, e.g. from /upload/image). FLUX.1 fill,
Kontext edits, Redux style images and LoRAs: engine/recipes/conditioning.py; depth / canny control:
engine/recipes/control.py.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.core.json_text import dumps, json_type
from engine.recipes.conditioning import apply_conditioning, conditioning_workflow, parse_conditioning
from engine.recipes.control import apply_control, parse_control
from engine.recipes.errors import RecipeError
from engine.recipes.graph_tools import TEXT_ENCODERS, positive_encoders
from engine.recipes.speed import apply_speed, parse_speed
from engine.recipes.variants import (
    MAX_REFERENCE_IMAGES,
    add_reference_images,
    describe_variant,
    installed_variants,
    known_variants,
)

SEED_MAX = 2**64 - 1
MAX_PROMPT_CHARS = 20_000
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


@dataclass
class GeneratedPrompt:
    prompt: dict[str, Any]  # API format, ready for validation and the queue
    variant: str
    seed: int  # the one used (random when the request left it out)
    ignored: list[str]  # request fields the workflow has no place for
    client_id: str | None


def _int_field(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"'{key}' must be an integer", f"got a JSON {json_type(value)}")
    if not low <= value <= high:
        raise RecipeError(f"'{key}' must be between {low} and {high}", f"got {value}")
    return value


def parse_request(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise RecipeError("'prompt' must be a non-empty string",
                          f"got {dumps(text)[:100]}" if "prompt" in body else "'prompt' is missing")
    if len(text) > MAX_PROMPT_CHARS:
        raise RecipeError(f"'prompt' is longer than {MAX_PROMPT_CHARS} characters", f"{len(text)} characters")
    variant = body.get("model", body.get("variant", "flux-schnell"))
    if not isinstance(variant, str):
        raise RecipeError("'model' must be a variant name such as flux-schnell", f"got a JSON {json_type(variant)}")
    values: dict[str, Any] = {
        "width": _int_field(body, "width", 16, 16384), "height": _int_field(body, "height", 16, 16384),
        "steps": _int_field(body, "steps", 1, 10000), "seed": _int_field(body, "seed", 0, SEED_MAX),
        "batch_size": _int_field(body, "batch_size", 1, 64),
    }
    for key in ("guidance", "cfg"):
        number = body.get(key)
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= 100:
                raise RecipeError(f"'{key}' must be a number between 0 and 100", f"got {dumps(number)[:50]}")
            values[key] = float(number)
    prefix = body.get("filename_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise RecipeError("'filename_prefix' must be a string", f"got a JSON {json_type(prefix)}")
    values["filename_prefix"] = prefix
    if values["seed"] is None:
        values["seed"] = random.randint(0, 2**53)  # like the editor's "randomize"; reported back
    client_id = body.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        raise RecipeError("'client_id' must be a string", f"got a JSON {json_type(client_id)}")
    return {"text": text, "variant": variant, "values": values, "client_id": client_id,
            "images": _reference_images(body)}


def _reference_images(body: dict[str, Any]) -> list[str]:
    images = body.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, str) and i.strip() for i in images):
        raise RecipeError("'images' must be a list of image file names (in input/)", f"got {dumps(images)[:100]}")
    if len(images) > MAX_REFERENCE_IMAGES:
        raise RecipeError(f"at most {MAX_REFERENCE_IMAGES} reference images", f"got {len(images)}")
    return images


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


def generate_prompt(body: dict[str, Any], workflows_dir: Path,
                    runnable: Callable[[dict[str, Any]], bool]) -> GeneratedPrompt:
    """The prompt a /api/generate request body asks for. `runnable(workflow)`: whether a variant's workflow
    validates here (its model files are present). Blocking: reads and validates workflow files."""
    req = parse_request(body)
    conditioning = parse_conditioning(body, req["variant"])  # fill / Kontext / Redux / LoRA fields
    control = parse_control(body, req["variant"])  # depth / canny ControlNet
    workflow = conditioning_workflow(workflows_dir, conditioning, req["values"])
    installed = {req["variant"]: workflow} if workflow is not None else installed_variants(workflows_dir, runnable)
    if req["variant"] not in installed:
        known = known_variants(workflows_dir)
        reason = "its model files are missing" if req["variant"] in known else "unknown model variant"
        raise RecipeError(f"Model variant {req['variant'][:50]!r} is not available: {reason}",
                          f"installed variants: {', '.join(installed) or 'none'}", kind="unknown_variant",
                          installed=list(installed), known=known)
    graph, ignored = build_graph(installed[req["variant"]], req["text"], req["values"])
    graph = apply_conditioning(graph, conditioning, workflows_dir)
    graph = apply_control(graph, control, workflows_dir)
    graph = apply_speed(graph, parse_speed(body))  # exact / fast / fastest: engine/recipes/speed.py
    if req["images"] and not conditioning.takes_images:
        if not describe_variant(req["variant"], graph, True)["reference_images"]:
            raise RecipeError(f"Model variant {req['variant']!r} takes no reference images",
                              "reference images work with the FLUX.2 variants")
        graph = add_reference_images(graph, req["images"])
    return GeneratedPrompt(prompt=graph, variant=req["variant"], seed=req["values"]["seed"],
                           ignored=[f for f in ignored if f != "filename_prefix" or req["values"][f]],
                           client_id=req["client_id"])
