"""Subgraph instances in a UI workflow: their scopes, boundary sockets and promoted widget values.

A node whose `type` is the id of an entry of `definitions.subgraphs` is an instance of that subgraph. Its
inner nodes run with execution ids prefixed by the instance path (`5:12`, nested `5:7:12`), as the ComfyUI
editor numbers them when it queues. Inside the definition, links from the input boundary node (id -10) carry
the instance's inputs in, links to the output boundary node (id -20) carry values out.

A subgraph input wired to an inner widget is a *promoted widget*: the instance owns its value, saved in the
instance's `widgets_values` (one entry per promoted input, in definition order; older saves add a "control
after generate" entry after seeds, or list them in `properties.proxyWidgets` order). A link into the
instance's socket wins over that value; with neither, the inner node keeps its own widget value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from engine.core.registry import NodeRegistry
from engine.workflow.ui_format import UiGraph, UiInput, UiLink, UiNode
from engine.workflow.widgets import has_control_widget, is_control_value

MAX_SUBGRAPH_DEPTH = 32


@dataclass
class Scope:
    """One graph being flattened: the root, or one instance of a subgraph definition."""

    graph: UiGraph
    path: tuple[str, ...] = ()  # instance node ids from the root down to this instance
    definition_ids: tuple[str, ...] = ()  # the definitions entered on the way, to catch self-containment
    instance: UiNode | None = None
    parent: "Scope | None" = None
    sockets: list[UiInput] = field(default_factory=list)  # the instance's inputs, one per definition input
    promoted: dict[int, Any] = field(default_factory=dict)  # definition input index -> instance value
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # inner node id -> widget -> value

    def exec_id(self, node_id: str) -> str:
        return ":".join((*self.path, node_id))

    def location(self) -> list[tuple[str, str]]:
        """(instance ui id, subgraph name) from the outermost instance inwards."""
        chain: list[tuple[str, str]] = []
        scope: Scope | None = self
        while scope is not None and scope.instance is not None:
            chain.append((scope.instance.id, scope.instance.title or scope.graph.name))
            scope = scope.parent
        return chain[::-1]


@dataclass(frozen=True)
class PromotedWidget:
    name: str
    has_control: bool


def input_socket(node: UiNode, link: UiLink) -> UiInput | None:
    """The input of `node` a link arrives at: the one that names the link, else the one at its slot index."""
    for slot in node.inputs:
        if slot.link == link.id:
            return slot
    if 0 <= link.target_slot < len(node.inputs):
        return node.inputs[link.target_slot]
    return None


def links_from_boundary_input(graph: UiGraph, index: int) -> Iterator[UiLink]:
    """Links leaving input `index` of a subgraph definition, in the order the definition lists them."""
    seen: set[str] = set()
    if 0 <= index < len(graph.inputs):
        for link_id in graph.inputs[index].link_ids:
            link = graph.links.get(link_id)
            if link is not None and link.origin_id == graph.input_node_id and link.origin_slot == index:
                seen.add(link.id)
                yield link
    for link in graph.links.values():
        if link.id not in seen and link.origin_id == graph.input_node_id and link.origin_slot == index:
            yield link


def boundary_output_link(graph: UiGraph, index: int) -> UiLink | None:
    """The link that feeds output `index` of a subgraph definition (an output has at most one)."""
    if 0 <= index < len(graph.outputs):
        for link_id in graph.outputs[index].link_ids:
            link = graph.links.get(link_id)
            if link is not None and link.target_id == graph.output_node_id:
                return link
    for link in graph.links.values():
        if link.target_id == graph.output_node_id and link.target_slot == index:
            return link
    return None


def instance_sockets(instance: UiNode, definition: UiGraph, warnings: list[str]) -> list[UiInput]:
    """The instance's input sockets in definition order, with the outer links they carry.

    Saved instances list their sockets by name (compressed saves omit unlinked ones), so they are matched
    by name first and by position only as a fallback.
    """
    sockets = [UiInput(slot.name, slot.type, None) for slot in definition.inputs]
    by_name = {slot.name: index for index, slot in enumerate(definition.inputs)}
    taken: set[int] = set()
    unmatched: list[tuple[int, UiInput]] = []
    for position, raw in enumerate(instance.inputs):
        index = by_name.get(raw.name, by_name.get(raw.widget_name or "", -1))
        if index < 0 or index in taken:
            unmatched.append((position, raw))
            continue
        taken.add(index)
        sockets[index].link = raw.link
    for position, raw in unmatched:
        if raw.link is None:
            continue
        if position < len(sockets) and position not in taken:
            taken.add(position)
            sockets[position].link = raw.link
        else:
            warnings.append(f"subgraph node {instance.label}: input '{raw.name}' matches no input of subgraph "
                            f"'{definition.name}'; its link is ignored")
    return sockets


def promoted_widget(definition: UiGraph, index: int, registry: NodeRegistry,
                    subgraphs: Mapping[str, UiGraph], depth: int = 0) -> PromotedWidget | None:
    """The inner widget that subgraph input `index` feeds, if any (following nested instances)."""
    if depth > MAX_SUBGRAPH_DEPTH:
        return None
    for link in links_from_boundary_input(definition, index):
        target = definition.nodes.get(link.target_id)
        socket = input_socket(target, link) if target is not None else None
        if target is None or socket is None:
            continue
        nested = subgraphs.get(target.type)
        if nested is not None:
            names = [slot.name for slot in nested.inputs]
            nested_index = names.index(socket.name) if socket.name in names else link.target_slot
            found = promoted_widget(nested, nested_index, registry, subgraphs, depth + 1)
            if found is not None:
                return found
            continue
        schema = registry.get(target.type)
        declared = schema.input(socket.api_name) if schema is not None else None
        if declared is not None and declared.is_widget:
            return PromotedWidget(declared.name, has_control_widget(declared))
        if declared is None and socket.widget_name is not None:
            return PromotedWidget(socket.widget_name, False)
    return None


def _proxy_entries(instance: UiNode) -> list[tuple[str, str]] | None:
    """`properties.proxyWidgets` of older saves as (source node id, widget name); None when absent."""
    raw = instance.properties.get("proxyWidgets")
    if isinstance(raw, str):  # some versions stored it as a JSON string
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, list) or not raw:
        return None
    entries = []
    for entry in raw:
        if not isinstance(entry, (list, tuple)) or len(entry) < 2:
            entries.append(("", ""))  # keeps positions aligned with widgets_values
            continue
        widget = str(entry[-1])
        # A later format packs "node: disambiguator: widget" into the name.
        entries.append((str(entry[0]), widget.rsplit(": ", 1)[-1]))
    return entries


def promoted_values(instance: UiNode, definition: UiGraph, registry: NodeRegistry,
                    subgraphs: Mapping[str, UiGraph]) -> tuple[dict[int, Any], dict[str, dict[str, Any]]]:
    """The instance's own widget values: (definition input index -> value, inner node -> widget -> value)."""
    saved = instance.widgets_values
    promoted: dict[int, Any] = {}
    overrides: dict[str, dict[str, Any]] = {}
    names = [slot.name for slot in definition.inputs]
    if instance.widgets_values_named is not None:
        saved = instance.widgets_values_named
    if isinstance(saved, dict):
        for index, name in enumerate(names):
            if saved.get(name) is not None:
                promoted[index] = saved[name]
        return promoted, overrides
    if not isinstance(saved, list) or not saved:
        return promoted, overrides
    proxies = _proxy_entries(instance)
    if proxies is not None:
        for (source, widget), value in zip(proxies, saved):
            if value is None or not widget or widget.startswith("$$") or widget == "control_after_generate":
                continue
            if source == "-1":  # a promoted subgraph input, named by the input
                if widget in names:
                    promoted[names.index(widget)] = value
            elif source:
                overrides.setdefault(source, {})[widget] = value
        return promoted, overrides
    widgets = [(index, found) for index in range(len(names))
               if (found := promoted_widget(definition, index, registry, subgraphs)) is not None]
    # Legacy instances saved a control entry after each seed-like widget; current ones one value per input.
    with_controls = len(saved) > len(widgets)
    position = 0
    for index, found in widgets:
        if position >= len(saved):
            break
        if saved[position] is not None:
            promoted[index] = saved[position]
        position += 1
        if (with_controls and found.has_control and position < len(saved)
                and is_control_value(saved[position])):
            position += 1
    return promoted, overrides
