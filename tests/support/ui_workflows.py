"""Builders of UI-format graphs (the ComfyUI editor's save format) and the UI fixtures, for the workflow tests."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ui"


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


class Ui:
    """A small builder of UI-format graphs, shaped the way the editor saves them."""

    IN, OUT = "in", "out"

    def __init__(self, link_objects: bool = False) -> None:
        self.link_objects = link_objects
        self.nodes: dict[int, dict] = {}
        self.links: list[tuple] = []
        self.subgraphs: list[Subgraph] = []

    def add(self, node_id, type_, widgets=None, *, inputs=(), outputs=(), mode=0, title=None, properties=None):
        slots = []
        for spec in inputs:
            name, slot_type, *widget = spec if isinstance(spec, tuple) else (spec, "*")
            slots.append({"name": name, "type": slot_type, "link": None, **({"widget": {"name": widget[0]}}
                                                                              if widget else {})})
        entry = {"id": node_id, "type": type_, "pos": [0, 0], "size": [200, 80], "flags": {},
                 "order": len(self.nodes), "mode": mode, "inputs": slots,
                 "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
                 "properties": properties if properties is not None else {"Node name for S&R": type_},
                 "widgets_values": [] if widgets is None else widgets}
        if title:
            entry["title"] = title
        self.nodes[node_id] = entry
        return entry

    def _origin(self, origin, slot):
        output = self.nodes[origin]["outputs"][slot]
        return origin, output["type"], output["links"]

    def _target(self, target, input_name):
        slots = self.nodes[target]["inputs"]
        index = next(i for i, s in enumerate(slots) if s["name"] == input_name)
        return target, index, slots[index]

    def connect(self, origin, slot, target, input_name):
        link_id = 100 + len(self.links)
        origin_id, link_type, origin_links = self._origin(origin, slot)
        target_id, index, socket = self._target(target, input_name)
        origin_links.append(link_id)
        socket["link"] = link_id
        self.links.append((link_id, origin_id, slot, target_id, index, link_type))
        return link_id

    def _links_json(self, objects):
        if objects:
            return [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                    for link in self.links]
        return [list(link) for link in self.links]

    def json(self) -> dict:
        data = {"last_node_id": max(self.nodes, default=0), "last_link_id": 100 + len(self.links),
                "nodes": list(self.nodes.values()), "links": self._links_json(self.link_objects), "groups": [],
                "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}
        if self.subgraphs:
            data["definitions"] = {"subgraphs": [s.definition() for s in self.subgraphs]}
        return data


class Subgraph(Ui):
    """A subgraph definition: links from `Ui.IN` slot i are subgraph input i, links to `Ui.OUT` are outputs."""

    def __init__(self, parent: Ui, subgraph_id: str, name: str, inputs=(), outputs=()) -> None:
        super().__init__(link_objects=True)
        self.id, self.name = subgraph_id, name
        self.inputs = [{"id": f"{subgraph_id}-i{n}", "name": a, "type": b, "linkIds": []}
                       for n, (a, b) in enumerate(inputs)]
        self.outputs = [{"id": f"{subgraph_id}-o{n}", "name": a, "type": b, "linkIds": []}
                        for n, (a, b) in enumerate(outputs)]
        parent.subgraphs.append(self)

    def _origin(self, origin, slot):
        if origin == Ui.IN:
            return -10, self.inputs[slot]["type"], self.inputs[slot]["linkIds"]
        return super()._origin(origin, slot)

    def _target(self, target, input_name):
        if target == Ui.OUT:
            index = next(i for i, s in enumerate(self.outputs) if s["name"] == input_name)
            return -20, index, {"link": None}
        return super()._target(target, input_name)

    def connect(self, origin, slot, target, input_name):
        link_id = super().connect(origin, slot, target, input_name)
        if target == Ui.OUT:
            self.outputs[self.links[-1][4]]["linkIds"].append(link_id)
        return link_id

    def definition(self) -> dict:
        return {"id": self.id, "version": 1, "name": self.name, "revision": 0, "config": {},
                "inputNode": {"id": -10, "bounding": [0, 0, 120, 60]},
                "outputNode": {"id": -20, "bounding": [600, 0, 120, 60]},
                "inputs": self.inputs, "outputs": self.outputs, "widgets": [], "nodes": list(self.nodes.values()),
                "groups": [], "links": self._links_json(True), "extra": {}}
