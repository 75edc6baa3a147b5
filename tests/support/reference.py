"""Captures from a real ComfyUI server (copied from shared/comfy_reference so that CI needs nothing else)."""

import json
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "comfy_reference"


def load_reference(name: str) -> Any:
    return json.loads((REFERENCE_DIR / name).read_text())
