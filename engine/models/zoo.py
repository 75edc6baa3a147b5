"""The tiny model zoo: deterministic tiny random FLUX.1 models written in the real file layouts."""

from __future__ import annotations

from engine.models.tiny import TinyComponents, tiny_components

__all__ = ["TinyComponents", "tiny_components"]
