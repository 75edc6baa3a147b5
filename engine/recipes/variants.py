"""The model variants behind /api/generate: which workflow each one runs, its defaults, reference images.

A variant is named after its workflow, `workflows/<name with _>_txt2img.json` (flux-dev, flux-schnell,
flux2-dev, flux2-klein-9b), except where `WORKFLOW_ALIASES` says otherwise: the shipped klein workflow,
`flux2_klein_txt2img.json`, is the 4B one. A variant's defaults are read from its workflow (the step
count of its scheduler or sampler, FluxGuidance's guidance, the guider's cfg, the empty latent's size), so a
caller need not know them and the workflow stays the one source of truth.

FLUX.2 variants take reference images (edit / multi-reference generation): `add_reference_images` wires,
for each image file in input/, LoadImage -> ImageScaleToTotalPixels (1 megapixel, sides on the 16-pixel
grid, as ComfyUI's FLUX.2 templates) -> VAEEncode -> ReferenceLatent, chained onto the conditioning of every
guider / sampler input (positive and negative: with CFG the reference pipeline's unconditional pass sees the
references too).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

from engine.recipes.graph_tools import NewIds

WORKFLOW_SUFFIX = "_txt2img.json"
WORKFLOW_ALIASES = {"flux2-klein-4b": "flux2_klein_txt2img.json"}
MAX_REFERENCE_IMAGES = 10
REFERENCE_MEGAPIXELS = 1.0
_STEPS = (("Flux2Scheduler", "steps"), ("BasicScheduler", "steps"), ("KSampler", "steps"),
          ("KSamplerAdvanced", "steps"))
_GUIDANCE = (("FluxGuidance", "guidance"), ("CLIPTextEncodeFlux", "guidance"))
_CFG = (("CFGGuider", "cfg"), ("KSampler", "cfg"), ("KSamplerAdvanced", "cfg"))
_SIZE = ("EmptyFlux2LatentImage", "EmptySD3LatentImage", "EmptyLatentImage")
# Inputs that carry a guider's / sampler's conditioning, where references are chained in.
_CONDITIONING_INPUTS = {"CFGGuider": ("positive", "negative"), "BasicGuider": ("conditioning",),
                        "KSampler": ("positive", "negative"), "KSamplerAdvanced": ("positive", "negative")}


def workflow_file(workflows_dir: Path, variant: str) -> Path:
    return workflows_dir / (WORKFLOW_ALIASES.get(variant) or f"{variant.replace('-', '_')}{WORKFLOW_SUFFIX}")


def known_variants(workflows_dir: Path) -> list[str]:
    if not workflows_dir.is_dir():
        return []
    aliased = {name: variant for variant, name in WORKFLOW_ALIASES.items()}
    return sorted(aliased.get(p.name) or p.name[: -len(WORKFLOW_SUFFIX)].replace("_", "-")
                  for p in workflows_dir.glob(f"flux*{WORKFLOW_SUFFIX}"))


def load_workflow(path: Path) -> dict[str, Any]:
    """An API-format workflow file (bare, or the `{"prompt": ...}` body /prompt takes)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise ValueError(f"{path.name} is not an API-format workflow")
    return data


def installed_variants(workflows_dir: Path, runnable: Callable[[dict[str, Any]], bool]) -> dict[str, dict[str, Any]]:
    """variant -> its workflow, for the variants whose workflow is `runnable` (validates: model files present)."""
    found = {}
    for variant in known_variants(workflows_dir):
        try:
            workflow = load_workflow(workflow_file(workflows_dir, variant))
        except (OSError, ValueError):
            continue
        if runnable(workflow):
            found[variant] = workflow
    return found


def describe_variants(workflows_dir: Path, installed: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every known variant whose workflow loads, installed or not (what GET /api/variants lists)."""
    variants = []
    for name in known_variants(workflows_dir):
        try:
            workflow = installed.get(name) or load_workflow(workflow_file(workflows_dir, name))
        except (OSError, ValueError):
            continue
        variants.append(describe_variant(name, workflow, name in installed))
    return variants


def _literal(workflow: dict[str, Any], targets: tuple[tuple[str, str], ...]) -> Any:
    for class_type, name in targets:
        for node in workflow.values():
            value = (node.get("inputs") or {}).get(name)
            if node.get("class_type") == class_type and value is not None and not isinstance(value, list):
                return value
    return None


def family(workflow: dict[str, Any]) -> str:
    return "flux2" if any(n.get("class_type") == "EmptyFlux2LatentImage" for n in workflow.values()) else "flux1"


def describe_variant(name: str, workflow: dict[str, Any], installed: bool) -> dict[str, Any]:
    """What GET /api/variants says about one variant (defaults read from its workflow)."""
    defaults: dict[str, Any] = {"steps": _literal(workflow, _STEPS)}
    guidance, cfg = _literal(workflow, _GUIDANCE), _literal(workflow, _CFG)
    if guidance is not None:
        defaults["guidance"] = guidance
    defaults["cfg"] = cfg if cfg is not None else 1.0
    for key in ("width", "height"):
        defaults[key] = _literal(workflow, tuple((cls, key) for cls in _SIZE))
    kind = family(workflow)
    return {"name": name, "installed": installed, "family": kind, "defaults": defaults,
            "reference_images": MAX_REFERENCE_IMAGES if kind == "flux2" else 0}


def add_reference_images(workflow: dict[str, Any], images: list[str]) -> dict[str, Any]:
    """A copy of `workflow` with `images` (files in input/) as FLUX.2 reference images (module docstring)."""
    graph = copy.deepcopy(workflow)
    decode = next((n for n in graph.values() if n.get("class_type") == "VAEDecode"), None)
    vae = (decode or {}).get("inputs", {}).get("vae")
    if not isinstance(vae, list):
        raise ValueError("this workflow has no VAEDecode with a VAE link to encode reference images with")
    new_id = NewIds(graph)
    encoded = []
    for name in images:
        load, scale, encode = new_id(), new_id(), new_id()
        graph[load] = {"class_type": "LoadImage", "inputs": {"image": name}, "_meta": {"title": "Reference image"}}
        graph[scale] = {"class_type": "ImageScaleToTotalPixels", "inputs": {
            "image": [load, 0], "upscale_method": "lanczos", "megapixels": REFERENCE_MEGAPIXELS,
            "resolution_steps": 16}}
        graph[encode] = {"class_type": "VAEEncode", "inputs": {"pixels": [scale, 0], "vae": list(vae)}}
        encoded.append(encode)
    for node_id, node in list(graph.items()):
        for input_name in _CONDITIONING_INPUTS.get(node.get("class_type"), ()):
            link = node["inputs"].get(input_name)
            if not isinstance(link, list):
                continue
            for encode in encoded:
                ref = new_id()
                graph[ref] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": link, "latent": [encode, 0]}}
                link = [ref, 0]
            node["inputs"][input_name] = link
    return graph
