"""What a bypassed node (mode 4) passes on: for each consumer, its input of the type the consumer wants,
chosen by LiteGraph's connection rule as the ComfyUI editor chooses it."""

from __future__ import annotations

from typing import Any

from engine.workflow.ui_format import UiInput

_WILDCARDS = ("", "*", 0, None)


def litegraph_types_match(a: Any, b: Any) -> bool:
    """LiteGraph's connection rule: wildcards match anything; otherwise case-insensitive, unions overlap."""
    if a in _WILDCARDS or b in _WILDCARDS:
        return True
    left = {part.strip() for part in str(a).lower().split(",")}
    right = {part.strip() for part in str(b).lower().split(",")}
    return bool(left & right)


def bypass_input_index(sockets: list[UiInput], slot: int, output_type: Any, wanted: Any) -> int | None:
    """Which input a bypassed node passes to output `slot`, for a consumer that wants type `wanted`."""
    if wanted in ("", "*", None):
        return slot if slot < len(sockets) else (0 if sockets else None)

    def fits(socket: UiInput) -> bool:
        return litegraph_types_match(socket.type, output_type) and litegraph_types_match(socket.type, wanted)

    if slot < len(sockets) and fits(sockets[slot]):
        return slot
    for index, socket in enumerate(sockets):
        if socket.type == wanted:
            return index
    for index, socket in enumerate(sockets):
        if fits(socket):
            return index
    return None
