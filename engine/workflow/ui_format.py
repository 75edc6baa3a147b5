"""The ComfyUI editor's saved-workflow JSON ("UI format"), read into plain typed records.

A UI workflow (docs/protocol.md §7) is a LiteGraph serialisation: `nodes[]` with positions, sockets and
`widgets_values`, `links[]` (arrays `[id, origin_id, origin_slot, target_id, target_slot, type]` in version
0.4, objects in the newer schema), `groups`, `extra`, and in newer files `definitions.subgraphs` holding the
inner graphs of subgraph nodes. This module only reads and checks that structure; turning it into an
API-format prompt is `engine.workflow.convert`. Stdlib only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

# LiteGraph node modes. ON_EVENT (1) and ON_TRIGGER (3) run like ALWAYS, as in the ComfyUI editor.
MODE_ALWAYS = 0
MODE_NEVER = 2  # "muted"
MODE_BYPASS = 4

# Ids of a subgraph's boundary nodes inside its definition (the frontend's defaults).
SUBGRAPH_INPUT_NODE_ID = "-10"
SUBGRAPH_OUTPUT_NODE_ID = "-20"


class WorkflowFormatError(ValueError):
    """A UI workflow that cannot be converted, with ComfyUI-shaped error payloads.

    `error` is `{type, message, details, extra_info}` and `node_errors` maps a prompt node id to
    `{errors: [...], dependent_outputs: [], class_type}`, so a server can answer exactly as it answers a
    prompt that failed validation.
    """

    def __init__(self, message: str, details: str = "", *, error_type: str = "invalid_ui_workflow",
                 node_errors: dict[str, Any] | None = None, extra_info: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message}: {details}" if details else message)
        self.message = message
        self.details = details
        self.error_type = error_type
        self.node_errors = node_errors or {}
        self.extra_info = extra_info or {}

    @property
    def error(self) -> dict[str, Any]:
        return {"type": self.error_type, "message": self.message, "details": self.details,
                "extra_info": self.extra_info}

    def response(self) -> dict[str, Any]:
        """The JSON body for a 400 answer."""
        return {"error": self.error, "node_errors": self.node_errors}


def node_error(error_type: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": error_type, "message": message, "details": details, "extra_info": extra}


@dataclass(frozen=True)
class UiLink:
    id: str
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any = "*"


@dataclass
class UiInput:
    """One input socket of a node. `widget_name` is set when the socket belongs to a widget."""

    name: str
    type: Any
    link: str | None
    widget_name: str | None = None

    @property
    def api_name(self) -> str:
        """The input name used in the API prompt: the widget's name wins over the (possibly renamed) slot."""
        return self.widget_name or self.name


@dataclass
class UiOutput:
    name: str
    type: Any


@dataclass
class UiNode:
    id: str
    type: str
    mode: int
    title: str | None
    inputs: list[UiInput]
    outputs: list[UiOutput]
    widgets_values: Any  # a list (usual), a dict (some custom nodes) or None
    properties: dict[str, Any]
    widgets_values_named: dict[str, Any] | None = None  # newer editors also save values by widget name

    @property
    def label(self) -> str:
        """How errors name this node: `#id 'Title' (Type)`."""
        return f"#{self.id} '{self.title}' ({self.type})" if self.title else f"#{self.id} ({self.type})"


@dataclass
class SubgraphSlot:
    """An input or output of a subgraph definition (a socket of every node that instantiates it)."""

    name: str
    type: Any
    link_ids: list[str]


@dataclass
class UiGraph:
    """The root graph of a workflow, or the inner graph of a subgraph definition."""

    nodes: dict[str, UiNode]
    links: dict[str, UiLink]
    name: str = ""
    inputs: list[SubgraphSlot] = field(default_factory=list)   # subgraph definitions only
    outputs: list[SubgraphSlot] = field(default_factory=list)  # subgraph definitions only
    input_node_id: str = SUBGRAPH_INPUT_NODE_ID
    output_node_id: str = SUBGRAPH_OUTPUT_NODE_ID

    def link_for(self, link_id: str | None) -> UiLink | None:
        return None if link_id is None else self.links.get(link_id)


@dataclass
class UiWorkflow:
    root: UiGraph
    subgraphs: dict[str, UiGraph]  # definition id -> inner graph
    extra: dict[str, Any]


def carried_workflow(extra_data: Any) -> Any:
    """The editor's workflow a prompt carries in `extra_data.extra_pnginfo.workflow` (as the editors send it
    with POST /prompt and SaveImage embeds it in PNGs), or None."""
    pnginfo = extra_data.get("extra_pnginfo") if isinstance(extra_data, dict) else None
    return pnginfo.get("workflow") if isinstance(pnginfo, dict) else None


def is_ui_workflow(data: Any) -> bool:
    """True for the editor's saved JSON (top-level `nodes` list), False for API prompts and anything else."""
    return (isinstance(data, dict) and isinstance(data.get("nodes"), list)
            and any(key in data for key in ("links", "last_node_id", "version", "definitions", "groups")))


def is_api_prompt(data: Any) -> bool:
    """True for an API-format prompt: a non-empty object of node objects that each name a class_type."""
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(node, dict) and "class_type" in node for node in data.values()))


def _key(value: Any) -> str:
    """Node and link ids as strings: UI files use ints, execution ids use strings such as '5:3'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _slot_index(value: Any, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        problems.append(f"{where}: slot index {value!r} is not a number")
        return -1
    try:
        return int(value)
    except ValueError:
        problems.append(f"{where}: slot index {value!r} is not a number")
        return -1


def parse_link(raw: Any, where: str, problems: list[str]) -> UiLink | None:
    """A link in either shape; malformed ones are reported in `problems` and skipped."""
    if isinstance(raw, (list, tuple)):
        if len(raw) < 5:
            problems.append(f"{where}: a link array needs [id, origin_id, origin_slot, target_id, target_slot, "
                            f"type], got {raw!r}")
            return None
        link_id, origin_id, origin_slot, target_id, target_slot = raw[:5]
        link_type = raw[5] if len(raw) > 5 else "*"
    elif isinstance(raw, dict):
        missing = [k for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot") if k not in raw]
        if missing:
            problems.append(f"{where}: link object lacks {', '.join(missing)}")
            return None
        link_id, origin_id, origin_slot = raw["id"], raw["origin_id"], raw["origin_slot"]
        target_id, target_slot, link_type = raw["target_id"], raw["target_slot"], raw.get("type", "*")
    else:
        problems.append(f"{where}: expected a link array or object, got {type(raw).__name__}")
        return None
    origin = _slot_index(origin_slot, where, problems)
    target = _slot_index(target_slot, where, problems)
    if origin < 0 or target < 0:
        return None
    return UiLink(_key(link_id), _key(origin_id), origin, _key(target_id), target, link_type)


def _parse_inputs(raw: Any, where: str, problems: list[str]) -> list[UiInput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"{where}: 'inputs' must be a list")
        return []
    inputs = []
    for index, slot in enumerate(raw):
        if not isinstance(slot, dict) or not isinstance(slot.get("name"), str):
            problems.append(f"{where}: input {index} must be an object with a 'name'")
            continue
        widget = slot.get("widget")
        widget_name = widget.get("name") if isinstance(widget, dict) else None
        link = slot.get("link")
        inputs.append(UiInput(slot["name"], slot.get("type", "*"), None if link is None else _key(link),
                              widget_name if isinstance(widget_name, str) else None))
    return inputs


def _parse_outputs(raw: Any, where: str, problems: list[str]) -> list[UiOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"{where}: 'outputs' must be a list")
        return []
    return [UiOutput(str(slot.get("name", "")), slot.get("type", "*")) if isinstance(slot, dict)
            else UiOutput("", "*") for slot in raw]


def parse_node(raw: Any, where: str, problems: list[str]) -> UiNode | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: a node must be an object, got {type(raw).__name__}")
        return None
    if "id" not in raw or not isinstance(raw.get("type"), str) or not raw.get("type"):
        problems.append(f"{where}: a node needs an 'id' and a non-empty 'type' (got id={raw.get('id')!r}, "
                        f"type={raw.get('type')!r})")
        return None
    node_where = f"{where} #{_key(raw['id'])} ({raw['type']})"
    mode = raw.get("mode", MODE_ALWAYS)
    if isinstance(mode, bool) or not isinstance(mode, int):
        problems.append(f"{node_where}: 'mode' must be an integer, got {mode!r}")
        mode = MODE_ALWAYS
    properties = raw.get("properties") if isinstance(raw.get("properties"), dict) else {}
    title = raw.get("title") if isinstance(raw.get("title"), str) else None
    named = raw.get("widgets_values_named")
    return UiNode(_key(raw["id"]), raw["type"], mode, title, _parse_inputs(raw.get("inputs"), node_where, problems),
                  _parse_outputs(raw.get("outputs"), node_where, problems), raw.get("widgets_values"), properties,
                  named if isinstance(named, dict) else None)


def _parse_graph(raw: dict[str, Any], where: str, problems: list[str]) -> UiGraph:
    nodes: dict[str, UiNode] = {}
    raw_nodes = raw.get("nodes")
    if not isinstance(raw_nodes, list):
        problems.append(f"{where}: 'nodes' must be a list")
        raw_nodes = []
    for index, raw_node in enumerate(raw_nodes):
        parsed = parse_node(raw_node, f"{where} node {index}", problems)
        if parsed is None:
            continue
        if parsed.id in nodes:
            problems.append(f"{where}: two nodes share the id {parsed.id}")
            continue
        nodes[parsed.id] = parsed
    links: dict[str, UiLink] = {}
    raw_links = raw.get("links") or []
    if not isinstance(raw_links, list):
        problems.append(f"{where}: 'links' must be a list")
        raw_links = []
    for index, raw_link in enumerate(raw_links):
        if raw_link is None:  # LiteGraph leaves holes for deleted links in some versions
            continue
        link = parse_link(raw_link, f"{where} link {index}", problems)
        if link is not None:
            links[link.id] = link
    return UiGraph(nodes, links)


def _subgraph_slots(raw: Any, where: str, problems: list[str]) -> list[SubgraphSlot]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.append(f"{where} must be a list")
        return []
    slots = []
    for index, slot in enumerate(raw):
        if not isinstance(slot, dict) or not isinstance(slot.get("name"), str):
            problems.append(f"{where}[{index}] must be an object with a 'name'")
            continue
        link_ids = slot.get("linkIds") or []
        slots.append(SubgraphSlot(slot["name"], slot.get("type", "*"),
                                  [_key(i) for i in link_ids] if isinstance(link_ids, list) else []))
    return slots


def _parse_subgraph(raw: Any, where: str, problems: list[str]) -> tuple[str, UiGraph] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        problems.append(f"{where}: a subgraph definition must be an object with a string 'id'")
        return None
    name = raw.get("name") if isinstance(raw.get("name"), str) else raw["id"]
    graph_where = f"subgraph '{name}'"
    graph = _parse_graph(raw, graph_where, problems)
    graph.name = name
    graph.inputs = _subgraph_slots(raw.get("inputs"), f"{graph_where} 'inputs'", problems)
    graph.outputs = _subgraph_slots(raw.get("outputs"), f"{graph_where} 'outputs'", problems)
    for key, attr in (("inputNode", "input_node_id"), ("outputNode", "output_node_id")):
        io_node = raw.get(key)
        if isinstance(io_node, dict) and "id" in io_node:
            setattr(graph, attr, _key(io_node["id"]))
    return raw["id"], graph


def _definition_entries(container: Any) -> Iterable[Any]:
    """Subgraph definitions of a workflow or of a definition (newer files may nest them)."""
    definitions = container.get("definitions") if isinstance(container, dict) else None
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    return subgraphs if isinstance(subgraphs, list) else []


def parse_ui_workflow(data: Any) -> UiWorkflow:
    """Read a UI workflow; every structural problem is reported at once in one WorkflowFormatError."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise WorkflowFormatError("The workflow is not valid JSON", str(exc)) from exc
    if not is_ui_workflow(data):
        raise WorkflowFormatError("Not a UI-format workflow",
                                  "expected an object with a 'nodes' list and 'links', as the ComfyUI editor saves")
    problems: list[str] = []
    root = _parse_graph(data, "workflow", problems)
    subgraphs: dict[str, UiGraph] = {}
    pending = list(_definition_entries(data))
    while pending:
        raw = pending.pop(0)
        parsed = _parse_subgraph(raw, "definitions.subgraphs", problems)
        if parsed is None:
            continue
        subgraph_id, graph = parsed
        if subgraph_id not in subgraphs:
            subgraphs[subgraph_id] = graph
            pending.extend(_definition_entries(raw))
    if problems:
        raise WorkflowFormatError("The UI workflow is malformed", "\n".join(problems),
                                  extra_info={"problems": problems})
    extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
    return UiWorkflow(root, subgraphs, extra)
