"""Our /object_info entries of the core nodes equal those captured from a real ComfyUI 0.8.0 server.

Compared: input names, order, types, defaults, ranges, combo forms and options, hidden inputs, outputs,
output names and list flags, category, display name, output-node flag. Ignored: tooltips and descriptions
(stripped from the captures), python_module, and V3-only bookkeeping keys (api_node, output_matchtypes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from engine.core.types import ANY
from nodes.core.primitives import SWITCH_OUTPUT_TYPE

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "comfy_reference"
CORE_NODES = [
    "LoadImage", "LoadImageMask", "SaveImage", "PreviewImage", "MaskPreview", "ImageScale", "ImageScaleBy",
    "ImageScaleToTotalPixels", "ImageInvert", "ImageCompositeMasked", "EmptyImage", "SolidMask", "InvertMask",
    "GrowMask", "FeatherMask", "ThresholdMask", "MaskToImage", "ImageToMask", "MaskComposite",
    "ImagePadForOutpaint", "GetImageSize", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
    "PrimitiveStringMultiline", "PrimitiveBoolean", "ComfySwitchNode",
]
IGNORED_KEYS = {"description", "python_module", "api_node", "output_matchtypes", "output_tooltips"}


def _reference() -> dict:
    captures = {}
    for name in ("object_info_core.json", "object_info_more.json"):
        captures.update(json.loads((REFERENCE_DIR / name).read_text()))
    return captures


def _normalise_spec(spec: list) -> list:
    """Drop tooltips and the empty option dict they leave behind (`["IMAGE", {}]` == `["IMAGE"]`)."""
    if len(spec) == 2 and isinstance(spec[1], dict):
        options = {k: v for k, v in spec[1].items() if k != "tooltip"}
        return [spec[0], options] if options else [spec[0]]
    return list(spec)


def normalise(info: dict) -> dict:
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


@pytest.fixture(scope="module")
def our_info(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("base")
    (base / "input").mkdir()
    (base / "input" / "example.png").write_bytes(b"")  # the capture's server had this one input file
    registry = NodeRegistry().discover("nodes")
    assert "nodes.core" not in registry.failed, registry.failed.get("nodes.core")
    return registry.object_info(FolderPaths(base))


@pytest.mark.parametrize("name", CORE_NODES)
def test_object_info_matches_comfyui(name: str, our_info: dict) -> None:
    reference = _reference()
    assert name in reference, f"{name} is not in the ComfyUI captures"
    assert name in our_info, f"{name} is not registered"
    expected, ours = normalise(reference[name]), normalise(our_info[name])
    if name == "ComfySwitchNode" and SWITCH_OUTPUT_TYPE == ANY:
        # Declared "*" while engine.core.types cannot connect V3 match types (see nodes/core/primitives.py).
        expected["output"] = [ANY]
    # Key order matters for input_order only (which the comparison of lists covers), not for dicts.
    assert ours == expected


def test_input_dict_order_follows_input_order(our_info: dict) -> None:
    """Editors map widgets_values by input order: the dicts must list inputs in that order too."""
    for name in CORE_NODES:
        info = our_info[name]
        for section, names in info["input_order"].items():
            assert list(info["input"][section]) == names, (name, section)
