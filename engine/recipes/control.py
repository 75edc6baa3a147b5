"""/api/generate's structural control: `"control": {"image": name in input/, "type": "depth" | "canny",
"strength": 0..10 (default 1)}` on the FLUX.1 dev and schnell variants.

The request's image is preprocessed (DepthAnythingV2Preprocessor or Canny) and drives the union ControlNet in
the mode of its type (SetUnionControlNetType) through ControlNetApplyAdvanced on the sampler's positive and
negative conditioning. The files and settings (ControlNet, depth model and resolution, Canny thresholds) are
the ones workflows/flux_controlnet_union.json names, so installing that workflow's models enables it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.json_text import dumps
from engine.recipes.errors import RecipeError
from engine.recipes.graph_tools import NewIds, nodes_of_class

CONTROL_WORKFLOW = "flux_controlnet_union.json"
CONTROL_VARIANTS = ("flux-dev", "flux-schnell")
PREPROCESSORS = {"depth": "DepthAnythingV2Preprocessor", "canny": "Canny"}
UNION_TYPES = {"depth": "depth", "canny": "canny/lineart/anime_lineart/mlsd"}  # SetUnionControlNetType names
_SAMPLERS = ("KSampler", "KSamplerAdvanced", "CFGGuider", "BasicGuider")  # BasicGuider: schnell, one conditioning


@dataclass(frozen=True)
class ControlRequest:
    image: str
    type: str
    strength: float = 1.0


def parse_control(body: dict[str, Any], variant: str) -> ControlRequest | None:
    value = body.get("control")
    if value is None:
        return None
    expected = 'an object {"image": file name, "type": "depth" | "canny", "strength": 0..10}'
    if not isinstance(value, dict):
        raise RecipeError(f"'control' must be {expected}", f"got {dumps(value)[:100]}")
    unknown = sorted(set(value) - {"image", "type", "strength"})
    if unknown:
        raise RecipeError(f"'control' has unknown key(s) {', '.join(repr(k) for k in unknown)[:100]}; it takes "
                          "image, type and strength", f"got {dumps(value)[:100]}")
    image, kind, strength = value.get("image"), value.get("type"), value.get("strength", 1.0)
    if not isinstance(image, str) or not image.strip():
        raise RecipeError("'control.image' must be an image file name (in input/)", f"got {dumps(image)[:100]}")
    if kind not in PREPROCESSORS:
        raise RecipeError("'control.type' must be \"depth\" or \"canny\"", f"got {dumps(kind)[:100]}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 10:
        raise RecipeError("'control.strength' must be a number between 0 and 10", f"got {dumps(strength)[:100]}")
    if variant not in CONTROL_VARIANTS:
        raise RecipeError(f"'control' works with the {' and '.join(CONTROL_VARIANTS)} variants",
                          f"model is {variant!r}")
    return ControlRequest(image, kind, float(strength))


def _shipped_nodes(workflows_dir: Path) -> dict[str, dict[str, Any]]:
    """The first node of each class in the control workflow (where the files and settings come from)."""
    try:
        workflow = json.loads((Path(workflows_dir) / CONTROL_WORKFLOW).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecipeError(f"'control' needs workflows/{CONTROL_WORKFLOW} (it names the ControlNet and the "
                          "preprocessors' files)", str(exc)) from None
    found: dict[str, dict[str, Any]] = {}
    for node in workflow.values():
        found.setdefault(node.get("class_type"), node.get("inputs", {}))
    missing = [c for c in ("ControlNetLoader", *PREPROCESSORS.values()) if c not in found]
    if missing:
        raise RecipeError(f"workflows/{CONTROL_WORKFLOW} has no {', '.join(missing)} node")
    return found


def apply_control(graph: dict[str, Any], request: ControlRequest | None, workflows_dir: Path) -> dict[str, Any]:
    """`graph` (changed in place and returned) with the control branch before its sampler."""
    if request is None:
        return graph
    shipped = _shipped_nodes(workflows_dir)
    samplers = [n for c in _SAMPLERS for n in nodes_of_class(graph, c)]
    decoders = nodes_of_class(graph, "VAEDecode")
    if len(samplers) != 1 or not decoders:
        raise RecipeError("'control' cannot be added to this variant's workflow: it needs one sampler and a "
                          "VAEDecode", f"found {len(samplers)} sampler(s), {len(decoders)} VAEDecode node(s)")
    sampler = graph[samplers[0]]["inputs"]
    ids = NewIds(graph)
    guided_once = graph[samplers[0]]["class_type"] == "BasicGuider"
    if guided_once:  # no negative: the ControlNet's negative output goes nowhere, a zeroed one is enough
        zero = ids()
        graph[zero] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": sampler["conditioning"]}}
        positive, negative = sampler["conditioning"], [zero, 0]
    else:
        positive, negative = sampler["positive"], sampler["negative"]
    load, prepare, loader, union, apply = ids(), ids(), ids(), ids(), ids()
    preprocessor = PREPROCESSORS[request.type]
    settings = {k: v for k, v in shipped[preprocessor].items() if not isinstance(v, list)}
    graph[load] = {"class_type": "LoadImage", "inputs": {"image": request.image}, "_meta": {"title": "Control image"}}
    graph[prepare] = {"class_type": preprocessor, "inputs": {"image": [load, 0], **settings}}
    graph[loader] = {"class_type": "ControlNetLoader",
                     "inputs": {"control_net_name": shipped["ControlNetLoader"]["control_net_name"]}}
    graph[union] = {"class_type": "SetUnionControlNetType",
                    "inputs": {"control_net": [loader, 0], "type": UNION_TYPES[request.type]}}
    graph[apply] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": positive, "negative": negative, "control_net": [union, 0],
        "image": [prepare, 0], "strength": request.strength, "start_percent": 0.0, "end_percent": 1.0,
        "vae": graph[decoders[0]]["inputs"]["vae"]}}
    if guided_once:
        sampler["conditioning"] = [apply, 0]
    else:
        sampler["positive"], sampler["negative"] = [apply, 0], [apply, 1]
    return graph
