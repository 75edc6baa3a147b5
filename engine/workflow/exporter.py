"""API-format prompt -> the ComfyUI editor's UI format, laid out in columns.

Used to save a prompt (one run from the CLI, one built by a script) as a workflow the ComfyUI editor, or
ours, can open; `engine.workflow.convert.ui_to_api` turns the result back into the same prompt. Widget values are
written the way the editor writes them: in declaration order, a "fixed" control value after each seed-like
widget (so the seed that produced an image stays the same on a re-run), the upload button's value after
upload combos, and a linked widget keeps its slot.
"""

from __future__ import annotations

import uuid
from typing import Any

from engine.core.registry import NodeRegistry
from engine.core.schema import Input, NodeSchema
from engine.core.types import COMBO
from engine.workflow.ui_format import WorkflowFormatError, node_error
from engine.workflow.widgets import default_value, has_control_widget, upload_sentinel

COLUMN_WIDTH = 380
ROW_GAP = 40
NODE_WIDTH = 320
TITLE_HEIGHT = 30
SLOT_HEIGHT = 24


def _link(value: Any) -> tuple[str, int] | None:
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool)):
        return str(value[0]), value[1]
    return None


def _literal(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def _ui_ids(prompt: dict[str, Any]) -> dict[str, int]:
    """Integer UI ids: numeric prompt ids are kept, others (such as `5:3`) get fresh numbers."""
    ids: dict[str, int] = {}
    for key in prompt:
        if key.isdigit() and int(key) not in ids.values():
            ids[key] = int(key)
    next_id = max(ids.values(), default=0) + 1
    for key in prompt:
        if key not in ids:
            ids[key] = next_id
            next_id += 1
    return ids


def _columns(prompt: dict[str, Any]) -> dict[str, int]:
    """Column of each node: the length of the longest chain of links that leads to it."""
    column = {key: 0 for key in prompt}
    for _ in range(len(prompt)):  # relaxation; converges within len(prompt) rounds on an acyclic graph
        changed = False
        for key, node in prompt.items():
            for value in (node.get("inputs") or {}).values():
                link = _link(value)
                if link is not None and link[0] in prompt and column[key] <= column[link[0]]:
                    column[key] = column[link[0]] + 1
                    changed = True
        if not changed:
            break
    return column


def _slot_type(inp: Input) -> str:
    return COMBO if inp.is_combo else inp.type


def _widget_values(schema: NodeSchema, inputs: dict[str, Any]) -> list[Any]:
    values: list[Any] = []
    for inp in schema.inputs:
        if not inp.is_widget:
            continue
        value = inputs.get(inp.name)
        values.append(default_value(inp) if value is None or _link(value) else _literal(value))
        if has_control_widget(inp):
            values.append("fixed")
        sentinel = upload_sentinel(inp)
        if sentinel is not None:
            values.append(sentinel)
    return values


def _node_height(schema: NodeSchema) -> int:
    sockets = sum(1 for i in schema.inputs if not i.is_widget)
    widgets = sum(1 for i in schema.inputs if i.is_widget)
    return TITLE_HEIGHT + SLOT_HEIGHT * (max(sockets, len(schema.outputs)) + widgets)


def api_to_ui(prompt: dict[str, Any], registry: NodeRegistry, *, workflow_id: str | None = None) -> dict[str, Any]:
    """A UI-format workflow (version 0.4, array links) holding the same graph as `prompt`."""
    schemas: dict[str, NodeSchema] = {}
    node_errors: dict[str, Any] = {}
    for key, node in prompt.items():
        schema = registry.get(node.get("class_type")) if isinstance(node, dict) else None
        if schema is None:
            node_errors[key] = {"errors": [node_error("missing_node_type", "Node type is not installed",
                                                      f"node {key} has class_type {node.get('class_type')!r}"
                                                      if isinstance(node, dict) else f"node {key} is not an object")],
                                "dependent_outputs": [], "class_type": node.get("class_type")
                                if isinstance(node, dict) else None}
        else:
            schemas[key] = schema
    if node_errors:
        raise WorkflowFormatError("Cannot write a UI workflow for node types that are not installed",
                                  ", ".join(sorted({str(e["class_type"]) for e in node_errors.values()})),
                                  error_type="missing_node_types", node_errors=node_errors)
    ids = _ui_ids(prompt)
    columns = _columns(prompt)
    ui_nodes: dict[str, dict[str, Any]] = {}
    next_y: dict[int, int] = {}
    order = sorted(prompt, key=lambda k: (columns[k], ids[k]))
    for position, key in enumerate(order):
        node, schema = prompt[key], schemas[key]
        column = columns[key]
        height = _node_height(schema)
        y = next_y.get(column, 0)
        next_y[column] = y + height + ROW_GAP
        ui_node: dict[str, Any] = {
            "id": ids[key], "type": schema.name, "pos": [column * COLUMN_WIDTH, y], "size": [NODE_WIDTH, height],
            "flags": {}, "order": position, "mode": 0,
            "inputs": [{"name": i.name, "type": _slot_type(i), **({"widget": {"name": i.name}} if i.is_widget else {}),
                        "link": None} for i in schema.inputs],
            "outputs": [{"name": o.display_name, "type": o.type, "links": [], "slot_index": index}
                        for index, o in enumerate(schema.outputs)],
            "properties": {"Node name for S&R": schema.name},
            "widgets_values": _widget_values(schema, node.get("inputs") or {}),
        }
        title = (node.get("_meta") or {}).get("title")
        if isinstance(title, str) and title not in (schema.display_name or schema.name, schema.name):
            ui_node["title"] = title
        ui_nodes[key] = ui_node
    links: list[list[Any]] = []
    for key in order:
        target = ui_nodes[key]
        for slot_index, socket in enumerate(target["inputs"]):
            link = _link((prompt[key].get("inputs") or {}).get(socket["name"]))
            if link is None or link[0] not in ui_nodes:
                continue
            source = ui_nodes[link[0]]
            if not 0 <= link[1] < len(source["outputs"]):
                continue
            link_id = len(links) + 1
            output = source["outputs"][link[1]]
            links.append([link_id, source["id"], link[1], target["id"], slot_index, output["type"]])
            socket["link"] = link_id
            output["links"].append(link_id)
    return {
        "id": workflow_id or str(uuid.uuid4()), "revision": 0,
        "last_node_id": max((n["id"] for n in ui_nodes.values()), default=0), "last_link_id": len(links),
        "nodes": [ui_nodes[key] for key in order], "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4,
    }
