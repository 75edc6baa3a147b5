"""Run a validated prompt: only what the requested outputs need, in dependency order, with the cache.

Scheduling is an explicit stack (no recursion): a node runs once every non-lazy input it links to is
available (from this run or from the cache); a node with lazy inputs is asked, through its
`check_lazy_status`, which of them it needs, and those are scheduled before it runs. A node that raises stops
its descendants only; independent branches go on and what was computed stays cached. An interrupt stops the
whole prompt. Events are ComfyUI's websocket messages, passed to `on_event(type, data)`.

Everything that belongs to one run comes with `execute(...)`: its events callback, its preview callback and
its interrupt token, so one executor can serve callers (a backend, the CLI, tests) without them patching it.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from engine.core.cache import OutputCache, node_signature
from engine.core.context import RESUMED_KEY, InterruptFlag, Interrupted, NodeContext
from engine.core.graph import DependencyCycleError, PromptGraph, PromptNode, is_link, parse_prompt, unwrap_literal
from engine.core.registry import NodeRegistry
from engine.core.schema import ExecutionBlocker, NodeResult, NodeSchema
from engine.core.validate import hook_params

EventCallback = Callable[[str, dict], None]
PreviewCallback = Callable[[str, str, Any], None]  # (prompt_id, node_id, preview image)
HISTORY_MESSAGE_TYPES = ("execution_start", "execution_cached", "execution_success", "execution_error",
                         "execution_interrupted")


class NodeFailed(Exception):
    """Internal: a node could not run because a node it depends on failed."""


@dataclass
class ExecutionResult:
    prompt_id: str
    status: str = "success"  # success | error | interrupted
    outputs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def error(self) -> dict[str, Any] | None:
        return self.errors[0] if self.errors else None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _qualified_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _format_input(values: list[Any]) -> list[Any]:
    return [v if isinstance(v, (str, int, float, bool)) or v is None else str(type(v).__name__) for v in values]


class _Run:
    """The state of one prompt's execution."""

    def __init__(self, executor: "Executor", graph: PromptGraph, prompt: dict, prompt_id: str,
                 on_event: EventCallback | None, extra_data: dict, interrupt: InterruptFlag,
                 on_preview: PreviewCallback | None) -> None:
        self.executor = executor
        self.registry = executor.registry
        self.graph = graph
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.on_event = on_event
        self.extra_data = extra_data
        self.interrupt = interrupt
        self.on_preview = on_preview
        self.result = ExecutionResult(prompt_id=prompt_id, started_at=time.time())
        self.values: dict[str, list[list[Any]]] = {}  # node id -> per-slot value lists
        self.signatures: dict[str, str] = {}
        self.failed: set[str] = set()
        self.lazy_requested: dict[str, set[str]] = {}
        self.current: str | None = None

    # ----- events
    def emit(self, event: str, data: dict[str, Any]) -> None:
        if event in HISTORY_MESSAGE_TYPES:
            self.result.messages.append([event, data])
        if self.on_event is not None:
            self.on_event(event, data)

    # ----- signatures
    def compute_signatures(self, order: Iterable[str]) -> None:
        """Signatures of the nodes in `order`, a topological order (upstream signatures come first)."""
        for node_id in order:
            node = self.graph[node_id]
            schema = self.registry[node.class_type]
            literals = node.literals()
            links = [(name, self.signatures.get(link.source, link.source), link.slot)
                     for name, link in node.links().items()]
            token = self._changed_token(schema, node, literals)
            unique = node_id if schema.not_idempotent or "UNIQUE_ID" in schema.hidden.values() else None
            self.signatures[node_id] = node_signature(node.class_type, literals.items(), links, token, unique)

    def _changed_token(self, schema: NodeSchema, node: PromptNode, literals: dict[str, Any]) -> Any:
        if schema.is_changed is None:
            return None
        kwargs = {inp.name: literals.get(inp.name) for inp in schema.inputs if inp.name in node.inputs}
        if "folders" in hook_params(schema.is_changed)[0] and "folders" not in kwargs:
            kwargs["folders"] = self.executor.folders
        try:
            return schema.is_changed(**kwargs)
        except Exception:  # noqa: BLE001 - a failing IS_CHANGED means "changed", as in ComfyUI
            return float("nan")

    # ----- scheduling
    def dependencies(self, node: PromptNode, schema: NodeSchema) -> list[str]:
        requested = self.lazy_requested.get(node.id, set())
        deps = []
        links = node.links()
        for inp in schema.inputs:
            link = links.get(inp.name)
            if link is None or (inp.lazy and inp.name not in requested):
                continue
            if link.source not in self.values:
                deps.append(link.source)
        return deps

    def run(self, outputs: list[str]) -> None:
        cache = self.executor.cache
        stack = list(reversed(outputs))
        while stack:
            node_id = stack[-1]
            if node_id in self.values or node_id in self.failed:
                stack.pop()
                continue
            node = self.graph[node_id]
            schema = self.registry[node.class_type]
            entry = cache.get(self.signatures[node_id]) if cache is not None else None
            if entry is not None:
                self.values[node_id] = entry.outputs
                if entry.ui is not None:
                    self.record_ui(node_id, entry.ui)
                stack.pop()
                continue
            deps = self.dependencies(node, schema)
            failed_deps = [d for d in deps if d in self.failed]
            if failed_deps:
                self.failed.add(node_id)
                stack.pop()
                continue
            if deps:
                stack.extend(reversed(deps))
                continue
            if schema.check_lazy_status is not None and self.ask_lazy(node, schema):
                continue  # newly requested lazy inputs were pushed on the stack
            stack.pop()
            self.execute_node(node, schema)

    def ask_lazy(self, node: PromptNode, schema: NodeSchema) -> bool:
        """Ask the node which lazy inputs it needs; returns True when new ones must run first."""
        kwargs = self.gather_first(node, schema)
        needed = schema.check_lazy_status(**kwargs) or []
        requested = self.lazy_requested.setdefault(node.id, set())
        new = [name for name in needed if name not in requested]
        if not new:
            return False
        requested.update(new)
        return bool(self.dependencies(node, schema))

    def gather_first(self, node: PromptNode, schema: NodeSchema) -> dict[str, Any]:
        """First element of each input that is available; unevaluated lazy inputs are None."""
        inputs = self.gather(node, schema, allow_missing=True)
        return {name: (values[0] if values else None) for name, values in inputs.items()}

    # ----- running one node
    def gather(self, node: PromptNode, schema: NodeSchema, allow_missing: bool = False) -> dict[str, list[Any]]:
        inputs: dict[str, list[Any]] = {}
        for inp in schema.inputs:
            if inp.name not in node.inputs:
                continue
            value = node.inputs[inp.name]
            if is_link(value):
                link = node.links().get(inp.name)
                if link is None or link.source not in self.values:
                    if inp.lazy:  # a lazy input the node did not ask for
                        inputs[inp.name] = [None]
                        continue
                    if allow_missing:
                        inputs[inp.name] = []
                        continue
                    raise KeyError(f"input '{inp.name}' of node {node.id} has no value")
                if inp.raw_link:
                    inputs[inp.name] = [value]
                else:
                    inputs[inp.name] = self.values[link.source][link.slot]
            else:
                inputs[inp.name] = [unwrap_literal(value)]
        for name, kind in schema.hidden.items():
            inputs[name] = [self.hidden_value(node, kind)]
        return inputs

    def hidden_value(self, node: PromptNode, kind: str) -> Any:
        if kind == "PROMPT":
            return self.prompt
        if kind == "EXTRA_PNGINFO":
            return self.extra_data.get("extra_pnginfo")
        if kind == "UNIQUE_ID":
            return node.id
        if kind == "DYNPROMPT":
            return self.graph
        return self.extra_data.get(kind.lower())

    def make_context(self, node: PromptNode) -> NodeContext:
        def on_progress(node_id: str, value: int, total: int, preview: Any) -> None:
            self.emit("progress", {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id})
            if preview is not None and self.on_preview is not None:
                self.on_preview(self.prompt_id, node_id, preview)

        return NodeContext(node_id=node.id, display_node_id=node.id, class_type=node.class_type,
                           prompt_id=self.prompt_id, folders=self.executor.folders, models=self.executor.models,
                           prompt=self.prompt, extra_pnginfo=self.extra_data.get("extra_pnginfo"),
                           interrupt=self.interrupt, on_progress=on_progress,
                           on_send=lambda event, data: self.emit(event, data),
                           resumed=bool(self.extra_data.get(RESUMED_KEY)))

    def execute_node(self, node: PromptNode, schema: NodeSchema) -> None:
        self.current = node.id
        self.interrupt.check()
        self.emit("executing", {"node": node.id, "display_node": node.id, "prompt_id": self.prompt_id})
        inputs = self.gather(node, schema)
        try:
            outputs, ui = self.call(node, schema, inputs)
        except Interrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - a node's failure is reported as the prompt's error
            self.fail(node, exc, inputs)
            return
        self.values[node.id] = outputs
        self.result.executed.append(node.id)
        if self.executor.cache is not None:
            self.executor.cache.put(self.signatures[node.id], outputs, ui)
        if ui is not None:
            self.record_ui(node.id, ui)

    def call(self, node: PromptNode, schema: NodeSchema, inputs: dict[str, list[Any]]
             ) -> tuple[list[list[Any]], dict[str, list[Any]] | None]:
        n_outputs = len(schema.outputs)
        blocker = next((v for values in inputs.values() for v in values if isinstance(v, ExecutionBlocker)), None)
        if blocker is not None:
            return [[blocker] for _ in range(n_outputs)], None
        ctx = self.make_context(node)
        if schema.is_input_list:
            calls = [{name: values for name, values in inputs.items()}]
        else:
            count = max((len(values) for values in inputs.values()), default=1)
            if any(len(values) == 0 for values in inputs.values()):
                count = 0
            calls = [{name: values[min(i, len(values) - 1)] for name, values in inputs.items()}
                     for i in range(count)]
        outputs: list[list[Any]] = [[] for _ in range(n_outputs)]
        ui: dict[str, list[Any]] | None = None
        for kwargs in calls:
            returned = schema.function(ctx, **kwargs)
            values, call_ui = _normalise_return(schema, returned)
            for slot, output in enumerate(schema.outputs):
                if output.is_list:
                    outputs[slot].extend(values[slot])
                else:
                    outputs[slot].append(values[slot])
            if call_ui:
                ui = ui or {}
                for key, items in call_ui.items():
                    ui.setdefault(key, []).extend(items if isinstance(items, list) else [items])
        return outputs, ui

    def record_ui(self, node_id: str, ui: dict[str, list[Any]]) -> None:
        self.result.outputs[node_id] = ui
        self.result.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                     "real_node_id": node_id}
        self.emit("executed", {"node": node_id, "display_node": node_id, "output": ui,
                               "prompt_id": self.prompt_id})

    def fail(self, node: PromptNode, exc: Exception, inputs: dict[str, list[Any]]) -> None:
        self.failed.add(node.id)
        data = {
            "prompt_id": self.prompt_id, "node_id": node.id, "node_type": node.class_type,
            "executed": list(self.result.executed), "exception_message": str(exc),
            "exception_type": _qualified_name(exc), "traceback": traceback.format_exception(exc),
            "current_inputs": {name: _format_input(values) for name, values in inputs.items()},
            "current_outputs": list(self.result.cached), "timestamp": _now_ms(),
        }
        self.result.errors.append(data)
        self.emit("execution_error", data)


def _normalise_return(schema: NodeSchema, returned: Any) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    n_outputs = len(schema.outputs)
    ui = None
    if isinstance(returned, NodeResult):
        if returned.expand is not None:
            raise NotImplementedError(f"{schema.name}: node expansion is not supported")
        values, ui = tuple(returned.outputs), returned.ui
    elif isinstance(returned, dict) and ("ui" in returned or "result" in returned):
        if "expand" in returned:
            raise NotImplementedError(f"{schema.name}: node expansion is not supported")
        values, ui = tuple(returned.get("result") or ()), returned.get("ui")
    elif isinstance(returned, ExecutionBlocker):
        values = tuple(returned for _ in range(n_outputs))
    elif returned is None:
        values = ()
    else:
        values = tuple(returned) if isinstance(returned, (tuple, list)) else (returned,)
    if len(values) != n_outputs:
        raise TypeError(f"{schema.name} returned {len(values)} value(s) but declares {n_outputs} output(s)")
    return values, ui


class Executor:
    def __init__(self, registry: NodeRegistry, cache: OutputCache | None = None, folders: Any = None,
                 models: Any = None) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else OutputCache()
        self.folders = folders
        self.models = models

    def execute(self, prompt: dict[str, Any], prompt_id: str = "", outputs: list[str] | None = None,
                on_event: EventCallback | None = None, extra_data: dict[str, Any] | None = None, *,
                interrupt: InterruptFlag | None = None, on_preview: PreviewCallback | None = None
                ) -> ExecutionResult:
        """Run a prompt that already passed validation (see engine.core.validate.validate_prompt).

        `interrupt`: this run's token, owned by the caller and never cleared here, so a token set before the
        run starts stops it at its first node. Without one nobody can interrupt the run.
        `on_preview(prompt_id, node_id, preview)`: the previews nodes report with their progress.
        """
        graph = parse_prompt(prompt)
        if outputs is None:
            outputs = [n.id for n in graph if self.registry[n.class_type].output_node]
        if interrupt is None:
            interrupt = InterruptFlag()
        run = _Run(self, graph, prompt, prompt_id, on_event, extra_data or {}, interrupt, on_preview)
        run.emit("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()})
        needed = graph.upstream(outputs)
        try:
            order = graph.topological_order(needed)  # raises DependencyCycleError naming the cycle
            run.compute_signatures(order)
            cached = [n for n in order if self.cache is not None and run.signatures[n] in self.cache]
            run.result.cached = cached
            run.emit("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": _now_ms()})
            run.run(outputs)
        except Interrupted:
            run.result.status = "interrupted"
            current = run.current
            run.emit("execution_interrupted", {
                "prompt_id": prompt_id, "node_id": current,
                "node_type": graph[current].class_type if current in graph else None,
                "executed": list(run.result.executed), "timestamp": _now_ms()})
        except DependencyCycleError as exc:
            run.result.status = "error"
            data = {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                    "exception_message": str(exc), "exception_type": "graph.DependencyCycleError",
                    "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": _now_ms()}
            run.result.errors.append(data)
            run.emit("execution_error", data)
        else:
            if run.result.errors:
                run.result.status = "error"
            else:
                run.emit("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()})
        run.emit("executing", {"node": None, "display_node": None, "prompt_id": prompt_id})
        run.result.finished_at = time.time()
        return run.result
