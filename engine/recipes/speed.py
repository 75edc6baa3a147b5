"""/api/generate's `speed` preset: a step-cache node inserted in front of the sampler.

- `exact` (default): the graph as shipped, every step computed.
- `fast`: FirstBlockCache, threshold 0.08 (First-Block-Cache's suggested FLUX.1 value: the first block's
  residual may change by 8 % before the other blocks run again).
- `fastest`: FirstBlockCache, threshold 0.12.
The node goes between the model and every sampler / guider that takes it (KSampler, KSamplerAdvanced,
CFGGuider, BasicGuider), after any LoRA or other model patch, so the cache sees the patched model.
"""

from __future__ import annotations

from typing import Any

from engine.core.json_text import dumps
from engine.recipes.errors import RecipeError
from engine.recipes.graph_tools import NewIds

PRESETS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "exact": None,
    "fast": ("FirstBlockCache", {"threshold": 0.08}),
    "fastest": ("FirstBlockCache", {"threshold": 0.12}),
}
MODEL_USERS = ("KSampler", "KSamplerAdvanced", "CFGGuider", "BasicGuider")


def parse_speed(body: dict[str, Any]) -> str:
    speed = body.get("speed")
    if speed is None:  # absent or null: the default, as for the request's other optional fields
        speed = "exact"
    if not isinstance(speed, str) or speed not in PRESETS:
        raise RecipeError(f"'speed' must be one of {', '.join(PRESETS)}", f"got {dumps(speed)[:50]}")
    return speed


def apply_speed(graph: dict[str, Any], speed: str) -> dict[str, Any]:
    """`graph` with the preset's cache node in front of each sampler's model (in place; returned)."""
    preset = PRESETS[speed]
    if preset is None:
        return graph
    class_type, inputs = preset
    new_id = NewIds(graph)
    inserted: dict[tuple[str, int], str] = {}
    for node_id in list(graph):
        node = graph[node_id]
        model = (node.get("inputs") or {}).get("model")
        if node.get("class_type") not in MODEL_USERS or not isinstance(model, list) or len(model) != 2:
            continue
        key = (str(model[0]), int(model[1]))
        if key not in inserted:
            inserted[key] = new_id()
            graph[inserted[key]] = {"class_type": class_type, "inputs": {"model": list(model), **inputs},
                                    "_meta": {"title": f"speed: {speed}"}}
        node["inputs"]["model"] = [inserted[key], 0]
    if not inserted:
        raise RecipeError(f"speed {speed!r} needs a sampler that takes a model", "this workflow has none")
    return graph
