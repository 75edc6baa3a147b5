"""Helpers for the step-cache tests: a cache node in a graph, and a probe recording, per transformer call,
whether the last block's attention ran (the same probe on our transformer and on diffusers')."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

TRANSFORMERS = ("FluxTransformer2DModel", "Flux2Transformer2DModel")


def with_cache(graph: dict, class_type: str, model_link: list | None = None, **inputs: Any) -> dict:
    """Insert `class_type` (a MODEL -> MODEL node) between the graph's UNETLoader and its sampler/guider."""
    model_link = model_link or ["1", 0]
    graph["50"] = {"class_type": class_type, "inputs": {"model": model_link, **inputs}}
    for node in graph.values():
        if node["class_type"] in ("KSampler", "CFGGuider", "BasicGuider") and node["inputs"].get("model") == model_link:
            node["inputs"]["model"] = ["50", 0]
    return graph


def _tail_projection(transformer: Any) -> torch.nn.Module:
    attn = transformer.single_transformer_blocks[-1].attn
    return attn.to_q if hasattr(attn, "to_q") else attn.to_qkv_mlp_proj


@contextmanager
def tail_probe() -> Iterator[list[bool]]:
    """Yields a list that gets one entry per FLUX transformer call: True when its last block's attention
    projection ran (computed), False when a cache skipped or predicted it."""
    calls: list[bool] = []
    hooked: dict[int, Any] = {}

    def pre_hook(module: torch.nn.Module, args: Any) -> None:
        if type(module).__name__ not in TRANSFORMERS:
            return
        calls.append(False)
        if id(module) not in hooked:
            hooked[id(module)] = _tail_projection(module).register_forward_hook(lambda *a: _mark())

    def _mark() -> None:
        calls[-1] = True

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
    try:
        yield calls
    finally:
        handle.remove()
        for h in hooked.values():
            h.remove()
