"""The UI-workflow -> API-prompt converter core (the public entry points are in `engine.workflow.convert`).

Nodes are visited scope by scope (the root graph, then each subgraph instance). Each input socket of a node
that runs is resolved to what feeds it: a link to a node that runs, a literal (PrimitiveNode, folded value
node, promoted subgraph widget), a muted node (the input is lost), or nothing (the widget value stays).
Resolution walks through Reroutes, bypassed nodes, and subgraph boundaries in both directions, the way the
ComfyUI editor's ExecutableNodeDTO resolves inputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from engine.core.registry import NodeRegistry
from engine.core.schema import Input
from engine.core.types import STRING
from engine.workflow.bypass import bypass_input_index
from engine.workflow.conversion import NodeOrigin, UiConversion
from engine.workflow.subgraphs import (MAX_SUBGRAPH_DEPTH, Scope, boundary_output_link, instance_sockets,
                                       promoted_values)
from engine.workflow.ui_format import (MODE_BYPASS, MODE_NEVER, UiInput, UiLink, UiNode, UiWorkflow,
                                       WorkflowFormatError, node_error)
from engine.workflow.widgets import apply_text_replacements, expand_dynamic_prompt, map_widget_values

# Frontend-only node types that never reach a prompt and pass nothing on.
UI_ONLY_TYPES = frozenset({"Note", "MarkdownNote", "Label (rgthree)", "Bookmark (rgthree)",
                           "Fast Groups Bypasser (rgthree)", "Fast Groups Muter (rgthree)",
                           "Fast Bypasser (rgthree)", "Fast Muter (rgthree)", "Note Plus (mtb)"})
# Executable value nodes that are folded into their consumers as literals, where the consumer's input takes a
# literal (a widget input); into a link-only input (lazy, '*', a match type, forceInput) they stay nodes.
VALUE_PRIMITIVE_TYPES = frozenset({"PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
                                   "PrimitiveStringMultiline", "PrimitiveBoolean"})


@dataclass(frozen=True)
class _LinkTo:
    node_id: str
    slot: int


@dataclass(frozen=True)
class _Literal:
    value: Any


@dataclass(frozen=True)
class _Muted:
    label: str  # the muted node, as errors describe it


class _CycleError(Exception):
    pass


def accepts_literal(inp: Input | None) -> bool:
    """Whether a folded value may replace the link into this input: only a plain widget input takes one.

    A lazy input, a '*' or match-type socket, a forceInput or rawLink input is fed by a node, as the editor
    queues it (an input the schema does not declare keeps the old folding).
    """
    if inp is None:
        return True
    return inp.is_widget and not (inp.lazy or inp.raw_link or inp.force_input)


class Converter:
    def __init__(self, workflow: UiWorkflow, registry: NodeRegistry, choice_env: Any, rng: random.Random | None,
                 dynamic_prompts: bool, fold_primitives: bool) -> None:
        self.workflow = workflow
        self.registry = registry
        self.choice_env = choice_env
        self.rng = rng or random.Random()
        self.dynamic_prompts = dynamic_prompts
        self.fold_primitives = fold_primitives
        self.result = UiConversion({})
        self.lost: dict[str, list[tuple[str, str]]] = {}  # prompt id -> [(input, muted source label)]
        self.node_errors: dict[str, Any] = {}
        self.missing_types: dict[str, list[str]] = {}
        self._scopes: dict[tuple[str, ...], Scope] = {}
        # Whether the input being resolved takes a literal; value nodes that feed one that does not are kept.
        self._fold_here = True
        self._kept_values: dict[tuple[tuple[str, ...], str], tuple[Scope, UiNode]] = {}

    # --- classification ----------------------------------------------------------------------------------

    def kind(self, node: UiNode) -> str:
        if node.type in self.workflow.subgraphs:
            return "subgraph"
        if node.type == "Reroute":
            return "reroute"
        if node.type == "PrimitiveNode":
            return "primitive"
        if node.type in UI_ONLY_TYPES:
            return "ui_only"
        if self.fold_primitives and node.type in VALUE_PRIMITIVE_TYPES:
            return "value"
        if node.type in self.registry:
            return "real"
        if node.type in ("SetNode", "GetNode"):  # KJNodes' virtual wires
            return node.type
        if node.type.startswith(("workflow>", "workflow/")):
            return "group_node"
        return "unknown"

    # --- scopes ------------------------------------------------------------------------------------------

    def child_scope(self, parent: Scope, instance: UiNode) -> Scope:
        path = (*parent.path, instance.id)
        scope = self._scopes.get(path)
        if scope is not None:
            return scope
        definition = self.workflow.subgraphs[instance.type]
        if instance.type in parent.definition_ids or len(path) > MAX_SUBGRAPH_DEPTH:
            raise WorkflowFormatError("A subgraph contains itself",
                                      f"subgraph '{definition.name}' is nested in itself through node "
                                      f"{instance.label}")
        promoted, overrides = promoted_values(instance, definition, self.registry, self.workflow.subgraphs)
        scope = Scope(definition, path, (*parent.definition_ids, instance.type), instance, parent,
                      instance_sockets(instance, definition, self.result.warnings), promoted, overrides)
        self._scopes[path] = scope
        return scope

    # --- resolution --------------------------------------------------------------------------------------

    def resolve_socket(self, scope: Scope, socket: UiInput, wanted: Any, visited: set) -> Any:
        if socket.link is None:
            return None
        link = scope.graph.link_for(socket.link)
        if link is None:
            self.warn(scope, f"input '{socket.name}' refers to link {socket.link}, which is not in the graph; "
                             "treated as unconnected")
            return None
        return self.resolve_link(scope, link, wanted, visited)

    def resolve_link(self, scope: Scope, link: UiLink, wanted: Any, visited: set) -> Any:
        if link.origin_id == scope.graph.input_node_id and scope.instance is not None:
            return self.resolve_boundary_input(scope, link.origin_slot, visited)
        origin = scope.graph.nodes.get(link.origin_id)
        if origin is None:
            self.warn(scope, f"link {link.id} starts at node {link.origin_id}, which does not exist; treated as "
                             "unconnected")
            return None
        return self.resolve_output(scope, origin, link.origin_slot, wanted, visited)

    def resolve_boundary_input(self, scope: Scope, index: int, visited: set) -> Any:
        if not 0 <= index < len(scope.sockets):
            self.warn(scope, f"a link leaves input {index} of subgraph '{scope.graph.name}', which has only "
                             f"{len(scope.sockets)} inputs")
            return None
        socket = scope.sockets[index]
        if socket.link is not None and scope.parent is not None:
            return self.resolve_socket(scope.parent, socket, socket.type, visited)
        if index in scope.promoted:
            return _Literal(scope.promoted[index])
        return None

    def resolve_output(self, scope: Scope, node: UiNode, slot: int, wanted: Any, visited: set) -> Any:
        key = (scope.path, node.id, slot)
        if key in visited:
            raise _CycleError(f"links loop back through node {node.label}")
        visited.add(key)
        kind = self.kind(node)
        if kind == "primitive":  # the editor applies a PrimitiveNode's value whatever its mode
            return self.primitive_value(node)
        if node.mode == MODE_BYPASS:
            return self.resolve_bypass(scope, node, kind, slot, wanted, visited)
        if node.mode == MODE_NEVER and kind in ("real", "subgraph", "value", "unknown"):
            return _Muted(self.origin(scope, node).describe())
        if kind == "subgraph":
            child = self.child_scope(scope, node)
            inner = boundary_output_link(child.graph, slot)
            return None if inner is None else self.resolve_link(child, inner, wanted, visited)
        if kind in ("reroute", "SetNode"):
            return self.resolve_socket(scope, node.inputs[0], wanted, visited) if node.inputs else None
        if kind == "GetNode":
            setter = self.find_setter(scope, node)
            return None if setter is None else self.resolve_socket(scope, setter.inputs[0], wanted, visited)
        if kind == "value":
            if not self._fold_here:
                self._kept_values.setdefault((scope.path, node.id), (scope, node))
                return _LinkTo(scope.exec_id(node.id), slot)
            return self.value_node_output(scope, node, visited)
        if kind == "ui_only":
            return None
        return _LinkTo(scope.exec_id(node.id), slot)

    def resolve_bypass(self, scope: Scope, node: UiNode, kind: str, slot: int, wanted: Any, visited: set) -> Any:
        if kind == "subgraph":
            definition = self.workflow.subgraphs[node.type]
            sockets = instance_sockets(node, definition, [])
            out_types = [out.type for out in definition.outputs]
        else:
            sockets = node.inputs
            out_types = [out.type for out in node.outputs]
        output_type = out_types[slot] if slot < len(out_types) else wanted
        index = bypass_input_index(sockets, slot, output_type, wanted)
        if index is None:
            self.warn(scope, f"bypassed node {node.label} has no input of type {wanted} to pass on; its "
                             "consumers get nothing from it")
            return None
        return self.resolve_socket(scope, sockets[index], sockets[index].type, visited)

    @staticmethod
    def primitive_value(node: UiNode) -> Any:
        values = node.widgets_values
        if isinstance(values, list) and values and values[0] is not None:
            return _Literal(values[0])
        if isinstance(values, dict) and values.get("value") is not None:
            return _Literal(values["value"])
        return None

    def value_node_output(self, scope: Scope, node: UiNode, visited: set) -> Any:
        for socket in node.inputs:
            if socket.api_name == "value" and socket.link is not None:
                resolved = self.resolve_socket(scope, socket, socket.type, visited)
                if resolved is not None:
                    return resolved
        schema = self.registry.get(node.type)
        if schema is None:
            return self.primitive_value(node)
        values = map_widget_values(schema, node.widgets_values, self.choice_env, node.widgets_values_named).values
        values.update(scope.overrides.get(node.id, {}))
        return _Literal(values["value"]) if "value" in values else None

    @staticmethod
    def find_setter(scope: Scope, getter: UiNode) -> UiNode | None:
        name = getter.widgets_values[0] if isinstance(getter.widgets_values, list) and getter.widgets_values else None
        for candidate in scope.graph.nodes.values():
            if (candidate.type == "SetNode" and isinstance(candidate.widgets_values, list)
                    and candidate.widgets_values[:1] == [name] and candidate.inputs):
                return candidate
        return None

    # --- emission ----------------------------------------------------------------------------------------

    def emit_scope(self, scope: Scope) -> None:
        for node in scope.graph.nodes.values():
            kind = self.kind(node)
            if node.mode in (MODE_NEVER, MODE_BYPASS) and kind in ("subgraph", "real", "unknown", "group_node"):
                continue  # muted/bypassed nodes, and everything inside such subgraph nodes, do not run
            if kind == "subgraph":
                self.emit_scope(self.child_scope(scope, node))
            elif kind == "real":
                try:
                    self.emit_node(scope, node)
                except _CycleError as exc:
                    self.add_error(scope, node, "circular_link", "Links form a loop", str(exc))
            elif kind == "unknown":
                self.missing_types.setdefault(node.type, []).append(self.origin(scope, node).describe())
                self.add_error(scope, node, "missing_node_type", f"Node type '{node.type}' is not installed",
                               f"node {self.origin(scope, node).describe()} uses it")
            elif kind == "group_node":
                self.add_error(scope, node, "unsupported_group_node", "Legacy group nodes are not supported",
                               f"node {node.label} is a group node; convert it to a subgraph in the ComfyUI "
                               "editor (right click > Convert to Subgraph) and save again")

    def emit_node(self, scope: Scope, node: UiNode) -> None:
        schema = self.registry[node.type]
        exec_id = scope.exec_id(node.id)
        widgets = map_widget_values(schema, node.widgets_values, self.choice_env, node.widgets_values_named)
        if widgets.leftovers:
            self.warn(scope, f"node {node.label}: {len(widgets.leftovers)} saved widget value(s) match no input "
                             f"of {node.type} and were ignored: {widgets.leftovers!r}")
        literals: dict[str, Any] = dict(widgets.values)
        literals.update(scope.overrides.get(node.id, {}))
        links: dict[str, list[Any]] = {}
        for socket in node.inputs:
            name = socket.api_name
            self._fold_here = accepts_literal(schema.input(name))
            try:
                resolved = self.resolve_socket(scope, socket, socket.type, set())
            finally:
                self._fold_here = True
            if isinstance(resolved, _LinkTo):
                links[name] = [resolved.node_id, resolved.slot]
            elif isinstance(resolved, _Literal):
                literals[name] = resolved.value
            elif isinstance(resolved, _Muted):  # the editor drops the input, widget value included
                literals.pop(name, None)
                self.lost.setdefault(exec_id, []).append((name, resolved.label))
        for inp in schema.inputs:
            value = literals.get(inp.name)
            if inp.type == STRING and isinstance(value, str) and inp.name not in links:
                literals[inp.name] = self.rewrite_text(scope, inp.name, inp.extra, value)
        # A JSON list in a prompt means a link, so literal lists travel wrapped, as the editor sends them.
        inputs = {name: {"__value__": value} if isinstance(value, list) else value
                  for name, value in literals.items() if name not in links}
        inputs.update(links)
        origin = self.origin(scope, node)
        self.result.prompt[exec_id] = {"inputs": inputs, "class_type": node.type, "_meta": {"title": origin.title}}
        self.result.origins[exec_id] = origin

    def rewrite_text(self, scope: Scope, name: str, options: Any, value: str) -> str:
        if self.dynamic_prompts and options.get("dynamicPrompts"):
            value = expand_dynamic_prompt(value, self.rng)
        if name == "filename_prefix":
            value = apply_text_replacements(value, lambda title, widget: self.widget_by_title(scope, title, widget))
        return value

    def widget_by_title(self, scope: Scope, title: str, widget: str) -> Any:
        """`%Title.widget%`: the widget value of the one node with that title (or type) in the graph."""
        for graph in (scope.graph, self.workflow.root):
            matches = [n for n in graph.nodes.values() if self.title(n) == title
                       or n.properties.get("Node name for S&R") == title]
            if len(matches) == 1 and (schema := self.registry.get(matches[0].type)) is not None:
                found = matches[0]
                return map_widget_values(schema, found.widgets_values, self.choice_env,
                                         found.widgets_values_named).values.get(widget)
        return None

    # --- bookkeeping -------------------------------------------------------------------------------------

    def title(self, node: UiNode) -> str:
        schema = self.registry.get(node.type)
        return node.title or (schema.display_name if schema is not None else None) or node.type

    def origin(self, scope: Scope, node: UiNode) -> NodeOrigin:
        return NodeOrigin(node.id, node.type, self.title(node), tuple(scope.location()))

    def warn(self, scope: Scope, message: str) -> None:
        where = "".join(f" in subgraph #{i} '{n}'" for i, n in reversed(scope.location()))
        self.result.warnings.append(message + where)

    def add_error(self, scope: Scope, node: UiNode, error_type: str, message: str, details: str) -> None:
        exec_id = scope.exec_id(node.id)
        entry = self.node_errors.setdefault(exec_id, {"errors": [], "dependent_outputs": [],
                                                      "class_type": node.type})
        entry["errors"].append(node_error(error_type, message, details,
                                          ui_node=self.origin(scope, node).as_dict()))

    def drop_orphans(self) -> None:
        """Remove inputs whose source is gone, and nodes that so lose a required input (repeatedly)."""
        prompt = self.result.prompt
        changed = True
        while changed:
            changed = False
            for exec_id in list(prompt):
                node = prompt[exec_id]
                missing = self.lost.pop(exec_id, [])
                for name, value in list(node["inputs"].items()):
                    if isinstance(value, list) and value[0] not in prompt:
                        del node["inputs"][name]
                        source = self.result.origins.get(value[0])
                        missing.append((name, source.describe() if source else value[0]))
                schema = self.registry[node["class_type"]]
                required = [(name, source) for name, source in missing
                            if (inp := schema.input(name)) is not None and not inp.optional]
                if not required:
                    self.result.warnings.extend(f"{self.result.origins[exec_id].describe()}: optional input "
                                                f"'{name}' left out: {source} does not run" for name, source in missing)
                    continue
                del prompt[exec_id]
                reasons = "; ".join(f"required input '{n}' came from {s}, which does not run" for n, s in required)
                self.result.dropped[exec_id] = f"{self.result.origins[exec_id].describe()}: {reasons}"
                changed = True

    def emit_kept_values(self) -> None:
        """Emit the value nodes that feed a link-only input (and those they in turn feed through links)."""
        done: set[tuple[tuple[str, ...], str]] = set()
        while pending := [key for key in self._kept_values if key not in done]:
            for key in pending:
                done.add(key)
                scope, node = self._kept_values[key]
                try:
                    self.emit_node(scope, node)
                except _CycleError as exc:
                    self.add_error(scope, node, "circular_link", "Links form a loop", str(exc))

    def run(self) -> UiConversion:
        self.emit_scope(Scope(self.workflow.root))
        self.emit_kept_values()
        if self.node_errors:
            raise self.failure()
        self.drop_orphans()
        return self.result

    def failure(self) -> WorkflowFormatError:
        if self.missing_types:
            listing = "; ".join(f"{name} (used by {', '.join(users)})"
                                for name, users in sorted(self.missing_types.items()))
            return WorkflowFormatError("The workflow uses node types that are not installed", listing,
                                       error_type="missing_node_types", node_errors=self.node_errors,
                                       extra_info={"missing_types": sorted(self.missing_types)})
        details = "\n".join(f"{e['extra_info']['ui_node']['description']}: {e['message']}: {e['details']}"
                            for entry in self.node_errors.values() for e in entry["errors"])
        return WorkflowFormatError("The UI workflow cannot be converted", details, node_errors=self.node_errors)
