"""API-format prompt JSON <-> a networkx DiGraph of nodes and links.

A prompt maps node id -> {"class_type", "inputs", "_meta"}. An input value that is a JSON list is a link
`[source_id, output_index]` (ComfyUI treats *any* list as a link); `{"__value__": [...]}` wraps a literal
list. Edges run from the source node to the consumer and carry the consumer's input names.
Everything here is iterative (no recursion), so a 10,000-node chain is fine.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

if TYPE_CHECKING:  # networkx loads on first use: it adds ~0.2 s to server start-up
    import networkx as nx



class PromptFormatError(ValueError):
    """The prompt is not an API-format graph at all (not a dict, a node without class_type, ...)."""

    def __init__(self, message: str, details: str = "", node_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.node_id = node_id


class DependencyCycleError(RuntimeError):
    """The links of a prompt form a cycle."""


@dataclass(frozen=True)
class Link:
    source: str
    slot: int


@dataclass
class PromptNode:
    id: str
    class_type: str
    inputs: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    order: int = 0  # position in the prompt, for deterministic tie-breaking
    _links: dict[str, Link] | None = field(default=None, repr=False, compare=False)

    def links(self) -> dict[str, Link]:
        if self._links is None:
            self._links = {name: link for name, value in self.inputs.items()
                           if (link := as_link(value)) is not None}
        return self._links

    def literals(self) -> dict[str, Any]:
        return {name: unwrap_literal(value) for name, value in self.inputs.items() if not is_link(value)}


def is_link(value: Any) -> bool:
    return isinstance(value, list)


def as_link(value: Any) -> Link | None:
    """A well-formed link, or None (for literals and for malformed lists, which validation reports)."""
    if type(value) is not list or len(value) != 2:
        return None
    source, slot = value
    if type(source) in (str, int) and type(slot) is int:
        return Link(str(source), slot)
    return None


def unwrap_literal(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


class PromptGraph:
    """The nodes of a prompt and the links between them.

    `graph` is the networkx DiGraph (built on first use); the hot paths (upstream sets, topological order)
    use plain adjacency dicts, which keeps per-node overhead in microseconds.
    """

    def __init__(self, nodes: Mapping[str, PromptNode]) -> None:
        self.nodes: dict[str, PromptNode] = dict(nodes)
        self.predecessors: dict[str, list[str]] = {node_id: [] for node_id in self.nodes}
        self.successors: dict[str, list[str]] = {node_id: [] for node_id in self.nodes}
        for node in self.nodes.values():
            for link in node.links().values():
                if link.source in self.nodes and link.source not in self.predecessors[node.id]:
                    self.predecessors[node.id].append(link.source)
                    self.successors[link.source].append(node.id)
        self._nx: "nx.DiGraph | None" = None

    @property
    def graph(self) -> "nx.DiGraph":
        if self._nx is None:
            import networkx as nx

            graph = nx.DiGraph()
            graph.add_nodes_from(self.nodes)
            for node in self.nodes.values():
                for name, link in node.links().items():
                    if link.source not in self.nodes:
                        continue
                    if graph.has_edge(link.source, node.id):
                        graph.edges[link.source, node.id]["inputs"].append(name)
                    else:
                        graph.add_edge(link.source, node.id, inputs=[name])
            self._nx = graph
        return self._nx

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __iter__(self) -> Iterator[PromptNode]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, node_id: str) -> PromptNode:
        return self.nodes[node_id]

    def upstream(self, targets: Iterable[str]) -> set[str]:
        """The targets and every node they depend on through links."""
        needed: set[str] = set()
        stack = [t for t in targets if t in self.nodes]
        while stack:
            node_id = stack.pop()
            if node_id in needed:
                continue
            needed.add(node_id)
            stack.extend(self.predecessors[node_id])
        return needed

    def _kahn(self, within: Iterable[str] | None) -> tuple[list[str], set[str]]:
        members = set(self.nodes) if within is None else set(within)
        in_degree = {n: sum(1 for p in self.predecessors[n] if p in members) for n in members}
        ready = [(self.nodes[n].order, n) for n, d in in_degree.items() if d == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, node_id = heapq.heappop(ready)
            order.append(node_id)
            for succ in self.successors[node_id]:
                if succ in in_degree:
                    in_degree[succ] -= 1
                    if in_degree[succ] == 0:
                        heapq.heappush(ready, (self.nodes[succ].order, succ))
        return order, members

    def find_cycle(self, within: Iterable[str] | None = None) -> list[str] | None:
        """One dependency cycle as a list of node ids (first id repeated at the end), or None."""
        order, members = self._kahn(within)
        if len(order) == len(members):
            return None
        import networkx as nx

        stuck = members - set(order)
        edges = nx.find_cycle(self.graph.subgraph(stuck))
        return [edges[0][0]] + [edge[1] for edge in edges]

    def topological_order(self, within: Iterable[str] | None = None) -> list[str]:
        """Deterministic topological order: among ready nodes, the one listed first in the prompt."""
        order, members = self._kahn(within)
        if len(order) != len(members):
            cycle = self.find_cycle(members) or []
            raise DependencyCycleError(f"Dependency cycle detected: {' -> '.join(cycle)}")
        return order


def parse_prompt(prompt: Any) -> PromptGraph:
    """Parse an API-format prompt. Raises PromptFormatError when it is not one."""
    if not isinstance(prompt, dict):
        raise PromptFormatError("Prompt must be a JSON object mapping node ids to nodes",
                                f"got {type(prompt).__name__}")
    nodes: dict[str, PromptNode] = {}
    for order, (raw_id, raw) in enumerate(prompt.items()):
        node_id = str(raw_id)
        if not isinstance(raw, dict) or "class_type" not in raw:
            raise PromptFormatError("Cannot execute because a node is missing the class_type property.",
                                    f"Node ID '#{node_id}'", node_id)
        class_type = raw["class_type"]
        if not isinstance(class_type, str):
            raise PromptFormatError("Cannot execute because a node's class_type is not a string.",
                                    f"Node ID '#{node_id}'", node_id)
        inputs = raw.get("inputs", {})
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            raise PromptFormatError(f"Node '#{node_id}' ({class_type}) has inputs that are not an object",
                                    f"Node ID '#{node_id}'", node_id)
        meta = raw.get("_meta") if isinstance(raw.get("_meta"), dict) else {}
        nodes[node_id] = PromptNode(node_id, class_type, dict(inputs), meta, order)
    return PromptGraph(nodes)


def to_prompt(graph: PromptGraph) -> dict[str, Any]:
    """Back to API-format JSON."""
    out: dict[str, Any] = {}
    for node in graph:
        entry: dict[str, Any] = {"class_type": node.class_type, "inputs": dict(node.inputs)}
        if node.meta:
            entry["_meta"] = dict(node.meta)
        out[node.id] = entry
    return out
