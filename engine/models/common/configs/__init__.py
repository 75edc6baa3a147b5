"""Configs of the supported full-size models, shipped so that loading never touches a hub.

flux1-{dev,schnell,fill,kontext,control}.json (control: Depth and Canny): diffusers FluxTransformer2DModel
configs; flux1-*-scheduler.json:
FlowMatchEulerDiscreteScheduler configs of the same repos; clip_l.json: CLIPTextModel (openai ViT-L/14 text
tower); t5xxl.json: T5EncoderModel (google t5-v1_1-xxl); ae.json: the FLUX.1 AutoencoderKL.
A loader uses one of these when the weights' shapes match it, and otherwise infers the sizes from the shapes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise KeyError(f"no shipped model config {name!r}; known: {known}")
    return path.read_text(encoding="utf-8")


def load_config(name: str) -> dict[str, Any]:
    """A fresh copy of the shipped config `name` (file stem, e.g. "flux1-dev", "clip_l")."""
    return json.loads(_read(name))
