"""Captures from a real ComfyUI server, kept in tests/fixtures/comfy_reference so that a fresh clone needs
nothing else, and the normalisation that compares our /object_info entries with them.

Compared: input names, order, types, defaults, ranges, combo forms and options, hidden inputs, outputs,
output names and list flags, category, display name, output-node flag. Ignored: tooltips and descriptions
(stripped from the captures), python_module, and V3-only bookkeeping keys (api_node, output_matchtypes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "comfy_reference"  # ComfyUI 0.8.0
OBJECT_INFO_CAPTURES = ("object_info_core.json", "object_info_more.json")
IGNORED_KEYS = {"description", "python_module", "api_node", "output_matchtypes", "output_tooltips"}


def load_reference(name: str) -> Any:
    return json.loads((REFERENCE_DIR / name).read_text())


def object_info_reference() -> dict:
    """Every captured /object_info entry by node name (core and more nodes)."""
    captures: dict = {}
    for name in OBJECT_INFO_CAPTURES:
        captures.update(load_reference(name))
    return captures


def _normalise_spec(spec: list) -> list:
    """Drop tooltips and the empty option dict they leave behind (`["IMAGE", {}]` == `["IMAGE"]`)."""
    if len(spec) == 2 and isinstance(spec[1], dict):
        options = {k: v for k, v in spec[1].items() if k != "tooltip"}
        return [spec[0], options] if options else [spec[0]]
    return list(spec)


def normalise(info: dict) -> dict:
    """One /object_info entry without what legitimately differs between ComfyUI and us (see the docstring)."""
    info = {k: v for k, v in info.items() if k not in IGNORED_KEYS}
    if info.get("display_name") is None:  # V3 nodes without one: the editor shows the name
        info["display_name"] = info["name"]
    for flag in ("deprecated", "experimental"):  # V3 nodes always send them, legacy ones only when true
        if not info.get(flag):
            info.pop(flag, None)
    inputs = {}
    for section, specs in info["input"].items():
        if section == "hidden":  # legacy nodes send "PROMPT", V3 nodes ["PROMPT"]
            inputs[section] = {k: v[0] if isinstance(v, list) else v for k, v in specs.items()}
        else:
            inputs[section] = {k: _normalise_spec(v) for k, v in specs.items()}
    info["input"] = inputs
    return info


# fluxgraph's documented optional inputs beyond ComfyUI's declaration (off by default, so saved workflows run
# the same): diffusers reproduction options (docs/flux.md, docs/flux-conditioning.md).
EXTENSION_INPUTS = {"CLIPTextEncode": ("t5_max_length",), "CLIPTextEncodeFlux": ("t5_max_length",),
                    "InpaintModelConditioning": ("noise_order",)}


def without_extensions(info: dict) -> dict:
    """Our /object_info entry less its extension inputs, which must be optional (and last in input_order)."""
    names = EXTENSION_INPUTS.get(info.get("name"), ())
    if not names:
        return info
    info = {**info, "input": {k: dict(v) for k, v in info["input"].items()}}
    for name in names:
        assert name in info["input"].get("optional", {}), f"{info['name']}: extension input {name} is not optional"
        del info["input"]["optional"][name]
    if not info["input"].get("optional", True):
        del info["input"]["optional"]
    if "input_order" in info:
        order = {k: [n for n in v if n not in names] for k, v in info["input_order"].items()}
        info["input_order"] = {k: v for k, v in order.items() if v or k != "optional"}
    return info
