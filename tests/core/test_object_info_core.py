"""Our /object_info entries of the core nodes equal those captured from a real ComfyUI 0.8.0 server.

Compared: input names, order, types, defaults, ranges, combo forms and options, hidden inputs, outputs,
output names and list flags, category, display name, output-node flag. Ignored: tooltips and descriptions
(stripped from the captures), python_module, and V3-only bookkeeping keys (api_node, output_matchtypes).
"""

from __future__ import annotations

import pytest

from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from engine.core.types import ANY
from nodes.core.primitives import SWITCH_OUTPUT_TYPE
from tests.support.reference import normalise, object_info_reference

CORE_NODES = [
    "LoadImage", "LoadImageMask", "SaveImage", "PreviewImage", "MaskPreview", "ImageScale", "ImageScaleBy",
    "ImageScaleToTotalPixels", "ImageInvert", "ImageCompositeMasked", "EmptyImage", "SolidMask", "InvertMask",
    "GrowMask", "FeatherMask", "ThresholdMask", "MaskToImage", "ImageToMask", "MaskComposite",
    "ImagePadForOutpaint", "GetImageSize", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
    "PrimitiveStringMultiline", "PrimitiveBoolean", "ComfySwitchNode",
]


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
    reference = object_info_reference()
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
