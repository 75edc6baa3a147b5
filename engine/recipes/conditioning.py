"""/api/generate's FLUX.1 conditioning recipe: fill / outpaint, Kontext edits, Redux styles, LoRAs.

Request fields (image names are files in input/, e.g. from POST /upload/image):
- `"model": "flux-fill"` with `image` (and optional `mask`, white = repaint; without it the image's
  transparency is the mask) runs workflows/flux_fill_inpaint.json; adding `outpaint`
  (`{"left", "top", "right", "bottom": pixels, "feathering": pixels}`) runs flux_fill_outpaint.json;
- `"model": "flux-kontext"` with `images` (one or more reference images) runs flux_kontext_edit.json with one
  ReferenceLatent per image; the output takes the first image's size unless width/height are given;
- `style_images` (with any FLUX.1 variant): one CLIPVisionEncode + StyleModelApply per image (Redux), with
  `style_strength` (0..10, default 1) and the SigLIP / Redux files that workflows/flux_redux.json names;
- `loras`: `[{"name": file in models/loras, "strength": -100..100}, ...]`, chained LoraLoader nodes between the
  loaders and everything that used their model and text encoders.
Shapes and ranges are checked here (`RecipeError`: the server's 400 invalid_request); missing files fail the
graph's validation like any prompt (400 with node_errors).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.json_text import dumps
from engine.recipes.errors import RecipeError
from engine.recipes.graph_tools import NewIds, nodes_of_class, positive_encoders, relink

WORKFLOWS = {"fill": "flux_fill_inpaint.json", "outpaint": "flux_fill_outpaint.json",
             "kontext": "flux_kontext_edit.json", "redux": "flux_redux.json"}
VARIANTS = {"flux-fill": "fill", "flux-kontext": "kontext"}
MAX_STYLE_IMAGES = 4
MAX_LORAS = 8
MAX_REFERENCES = 4
_OUTPAINT_SIDES = ("left", "top", "right", "bottom")


@dataclass
class ConditioningRequest:
    mode: str | None = None  # "fill" | "outpaint" | "kontext" | None (a plain txt2img variant)
    image: str | None = None
    mask: str | None = None
    outpaint: dict[str, int] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    style_strength: float = 1.0
    loras: list[tuple[str, float]] = field(default_factory=list)

    @property
    def takes_images(self) -> bool:
        """Whether this request consumed `images` (Kontext references)."""
        return self.mode == "kontext"


def _bad(field_name: str, expected: str, value: Any) -> RecipeError:
    return RecipeError(f"'{field_name}' must be {expected}", f"got {dumps(value)[:100]}")


def _name(body: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad(key, "an image file name (in input/)", value)
    return value


def _names(body: dict[str, Any], key: str, limit: int) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _bad(key, "a list of image file names (in input/)", value)
    if len(value) > limit:
        raise RecipeError(f"at most {limit} '{key}'", f"got {len(value)}")
    return value


def _number(value: Any, key: str, low: float, high: float, integer: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise _bad(key, f"{'an integer' if integer else 'a number'} between {low} and {high}", value)
    return value


def parse_conditioning(body: dict[str, Any], variant: str) -> ConditioningRequest:
    request = ConditioningRequest(mode=VARIANTS.get(variant))
    if request.mode == "fill":
        request.image = _name(body, "image", required=True)
        request.mask = _name(body, "mask")
        outpaint = body.get("outpaint")
        if outpaint is not None:
            if not isinstance(outpaint, dict) or set(outpaint) - {*_OUTPAINT_SIDES, "feathering"}:
                raise _bad("outpaint", 'an object {"left", "top", "right", "bottom", "feathering"}', outpaint)
            request.outpaint = {k: _number(outpaint.get(k, 0), f"outpaint.{k}", 0, 4096, integer=True)
                                for k in (*_OUTPAINT_SIDES, "feathering")}
            if not any(request.outpaint[k] for k in _OUTPAINT_SIDES):
                raise RecipeError("'outpaint' extends no side", "give left/top/right/bottom")
            request.mode = "outpaint"
    elif any(body.get(k) is not None for k in ("image", "mask", "outpaint")):
        raise RecipeError("'image', 'mask' and 'outpaint' need \"model\": \"flux-fill\"",
                       f"model is {variant!r}")
    if request.mode == "kontext":
        request.references = _names(body, "images", MAX_REFERENCES)
        if not request.references:
            raise RecipeError("flux-kontext edits need 'images' (reference image names)")
    request.styles = _names(body, "style_images", MAX_STYLE_IMAGES)
    if body.get("style_strength") is not None:
        request.style_strength = float(_number(body["style_strength"], "style_strength", 0, 10))
    loras = body.get("loras", [])
    if not isinstance(loras, list) or len(loras) > MAX_LORAS:
        raise _bad("loras", f'a list of at most {MAX_LORAS} {{"name": ..., "strength": ...}} objects', loras)
    for index, lora in enumerate(loras):
        if not isinstance(lora, dict) or not isinstance(lora.get("name"), str) or set(lora) - {"name", "strength"}:
            raise _bad(f"loras[{index}]", 'an object {"name": file name, "strength": number}', lora)
        request.loras.append((lora["name"], float(_number(lora.get("strength", 1.0), f"loras[{index}].strength",
                                                          -100, 100))))
    return request


def conditioning_workflow(workflows_dir: Path, request: ConditioningRequest,
                          values: dict[str, Any]) -> dict[str, Any] | None:
    """The workflow of a fill / outpaint / Kontext request (None for plain variants). A Kontext edit takes
    the first reference's size unless the request gives width and height."""
    if request.mode is None:
        return None
    path = Path(workflows_dir) / WORKFLOWS[request.mode]
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecipeError(f"the {request.mode} workflow is not available", str(exc),
                          kind="unknown_variant") from None
    if request.mode == "kontext" and values.get("width") and values.get("height"):
        for node_id in nodes_of_class(workflow, "EmptySD3LatentImage"):
            workflow[node_id]["inputs"].update(width=values["width"], height=values["height"])
    return workflow


def apply_conditioning(graph: dict[str, Any], request: ConditioningRequest, workflows_dir: Path) -> dict[str, Any]:
    """`graph` with the request's images, references, styles and LoRAs wired in (a copy)."""
    graph = copy.deepcopy(graph)
    ids = NewIds(graph)
    if request.mode in ("fill", "outpaint"):
        _set_fill_inputs(graph, request, ids)
    if request.mode == "kontext":
        _set_references(graph, request.references, ids)
    if request.styles:
        _add_styles(graph, request, ids, workflows_dir)
    for name, strength in request.loras:
        _add_lora(graph, name, strength, ids)
    return graph


def _set_fill_inputs(graph: dict[str, Any], request: ConditioningRequest, ids: NewIds) -> None:
    (load,) = nodes_of_class(graph, "LoadImage")
    graph[load]["inputs"]["image"] = request.image
    if request.mode == "outpaint":
        for pad in nodes_of_class(graph, "ImagePadForOutpaint"):
            graph[pad]["inputs"].update(request.outpaint)
    elif request.mask is not None:
        mask = ids()
        graph[mask] = {"class_type": "LoadImageMask", "inputs": {"image": request.mask, "channel": "red"},
                       "_meta": {"title": "Mask (white = repaint)"}}
        for node_id in nodes_of_class(graph, "InpaintModelConditioning"):
            graph[node_id]["inputs"]["mask"] = [mask, 0]


def _set_references(graph: dict[str, Any], references: list[str], ids: NewIds) -> None:
    """Replace the workflow's LoadImage -> VAEEncode -> ReferenceLatent chain by one link per image."""
    chain = set(nodes_of_class(graph, "ReferenceLatent"))
    head = next(graph[n]["inputs"]["conditioning"] for n in chain
                if str(graph[n]["inputs"]["conditioning"][0]) not in chain)
    tail = next(n for n in chain if not any(str(graph[m]["inputs"]["conditioning"][0]) == n for m in chain))
    encodes = {str(graph[n]["inputs"]["latent"][0]) for n in chain}
    vae = graph[next(iter(encodes))]["inputs"]["vae"]
    loads = {str(graph[n]["inputs"]["pixels"][0]) for n in encodes}
    for node_id in chain | encodes | loads:
        del graph[node_id]
    conditioning, first = head, None
    for name in references:
        load, encode, refer = ids(), ids(), ids()
        graph[load] = {"class_type": "LoadImage", "inputs": {"image": name}, "_meta": {"title": "Reference image"}}
        graph[encode] = {"class_type": "VAEEncode", "inputs": {"pixels": [load, 0], "vae": list(vae)}}
        graph[refer] = {"class_type": "ReferenceLatent", "inputs": {"conditioning": conditioning,
                                                                    "latent": [encode, 0]}}
        conditioning, first = [refer, 0], first or load
    relink(graph, [tail, 0], conditioning, skip=set())
    for node in graph.values():  # GetImageSize (the output size) and the like read the first reference
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, list) and str(value[0]) in loads:
                node["inputs"][name] = [first, value[1]]


def _redux_files(workflows_dir: Path) -> tuple[str, str]:
    try:
        redux = json.loads((Path(workflows_dir) / WORKFLOWS["redux"]).read_text(encoding="utf-8"))
        vision = next(n["inputs"]["clip_name"] for n in redux.values() if n.get("class_type") == "CLIPVisionLoader")
        style = next(n["inputs"]["style_model_name"] for n in redux.values()
                     if n.get("class_type") == "StyleModelLoader")
    except (OSError, ValueError, StopIteration, KeyError) as exc:
        raise RecipeError("style images need workflows/flux_redux.json (it names the SigLIP and Redux files)",
                          str(exc)) from None
    return vision, style


def _add_styles(graph: dict[str, Any], request: ConditioningRequest, ids: NewIds, workflows_dir: Path) -> None:
    """StyleModelApply per image on the prompt's conditioning (before FluxGuidance, where there is one)."""
    encoders = positive_encoders(graph)
    if not encoders:
        raise RecipeError("this workflow has no prompt encoder to add style images to")
    vision_name, style_name = _redux_files(workflows_dir)
    vision, style = ids(), ids()
    graph[vision] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": vision_name}}
    graph[style] = {"class_type": "StyleModelLoader", "inputs": {"style_model_name": style_name}}
    source = [encoders[0], 0]
    conditioning = source
    for name in request.styles:
        load, encode, apply = ids(), ids(), ids()
        graph[load] = {"class_type": "LoadImage", "inputs": {"image": name}, "_meta": {"title": "Style image"}}
        graph[encode] = {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": [vision, 0], "image": [load, 0],
                                                                      "crop": "center"}}
        graph[apply] = {"class_type": "StyleModelApply", "inputs": {
            "conditioning": conditioning, "style_model": [style, 0], "clip_vision_output": [encode, 0],
            "strength": request.style_strength, "strength_type": "multiply"}}
        conditioning = [apply, 0]
    # only the positive path gets the image: nodes that zero the prompt out (the negative) keep the plain text
    negatives = set(nodes_of_class(graph, "ConditioningZeroOut"))
    relink(graph, source, conditioning, skip=negatives | {n for n in graph if n == conditioning[0]} |
            {n for n in graph if graph[n].get("class_type") == "StyleModelApply"})


def _add_lora(graph: dict[str, Any], name: str, strength: float, ids: NewIds) -> None:
    """A LoraLoader fed by the model and CLIP that the sampler and the prompt encoder use now."""
    model = next((list(v) for n in graph.values() if n.get("class_type") in ("KSampler", "BasicGuider", "CFGGuider")
                  for k, v in n["inputs"].items() if k == "model" and isinstance(v, list)), None)
    clip = next((list(n["inputs"]["clip"]) for n in graph.values()
                 if n.get("class_type") == "CLIPTextEncode" and isinstance(n["inputs"].get("clip"), list)), None)
    if model is None:
        raise RecipeError("this workflow has no sampler model input to apply LoRAs to")
    lora = ids()
    if clip is None:
        graph[lora] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": name,
                                                                       "strength_model": strength}}
    else:
        graph[lora] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": name,
                                                              "strength_model": strength, "strength_clip": strength}}
        relink(graph, clip, [lora, 1], skip={lora})
    relink(graph, model, [lora, 0], skip={lora})
