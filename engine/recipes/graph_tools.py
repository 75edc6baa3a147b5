"""Small edits on an API-format prompt (`{node id: {"class_type", "inputs"}}`) that the recipes share."""

from __future__ import annotations

from typing import Any

TEXT_ENCODERS = {"CLIPTextEncode": ("text",), "CLIPTextEncodeFlux": ("clip_l", "t5xxl")}
# Inputs through which a positive text conditioning reaches the sampler.
POSITIVE_INPUTS = {"positive", "conditioning"}


class NewIds:
    """Fresh node ids for nodes added to `graph`: one past its highest numeric id, counting up."""

    def __init__(self, graph: dict[str, Any]) -> None:
        self.counter = max((int(k) for k in graph if str(k).isdigit()), default=0)

    def __call__(self) -> str:
        self.counter += 1
        return str(self.counter)


def nodes_of_class(graph: dict[str, Any], class_type: str) -> list[str]:
    return [node_id for node_id, node in graph.items() if node.get("class_type") == class_type]


def relink(graph: dict[str, Any], old: list, new: list, skip: set[str]) -> None:
    """Every input linked to output `old` ([node id, slot]) is linked to `new` instead, except in `skip`."""
    for node_id, node in graph.items():
        if node_id in skip:
            continue
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, list) and len(value) == 2 and [str(value[0]), value[1]] == [str(old[0]), old[1]]:
                node["inputs"][name] = list(new)


def positive_encoders(workflow: dict[str, Any]) -> list[str]:
    """Text-encoder nodes that feed a sampler's positive (or guider's) conditioning, directly or via others."""
    encoders = [nid for nid, n in workflow.items() if n.get("class_type") in TEXT_ENCODERS]
    if len(encoders) <= 1:
        return encoders
    positive: set[str] = set()
    for node in workflow.values():
        for name, value in (node.get("inputs") or {}).items():
            if name in POSITIVE_INPUTS and isinstance(value, list) and value:
                stack = [str(value[0])]
                while stack:
                    current = stack.pop()
                    if current in positive or current not in workflow:
                        continue
                    if current in encoders:
                        positive.add(current)
                        continue
                    stack.extend(str(v[0]) for v in (workflow[current].get("inputs") or {}).values()
                                 if isinstance(v, list) and v)
    return sorted(positive) or encoders[:1]
