"""What the CLI prints: validation errors, a line per node with tqdm step bars, where outputs went."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def format_validation_errors(result: Any) -> list[str]:
    """One line per problem: node id, class, input, message, details."""
    lines = []
    error = result.error or {}
    if error and (error.get("type") != "prompt_outputs_failed_validation" or not result.node_errors):
        lines.append(f"error: {error.get('message', 'invalid workflow')}"
                     + (f": {error['details']}" if error.get("details") else ""))
    for node_id, entry in result.node_errors.items():
        for err in entry.get("errors", []):
            extra = err.get("extra_info") or {}
            where = f"node {node_id} ({entry.get('class_type')})"
            ui_node = extra.get("ui_node")
            if isinstance(ui_node, dict) and ui_node.get("description"):
                where += f" = editor node {ui_node['description']}"
            if extra.get("input_name"):
                where += f", input '{extra['input_name']}'"
            line = f"error: {where}: {err.get('message')}"
            if err.get("details"):
                line += f": {err['details']}"
            if "received_value" in extra:
                line += f" (received {extra['received_value']!r})"
            lines.append(line)
    return lines


class ProgressPrinter:
    """Turns executor events into a line per node and tqdm bars for step progress (all on stderr)."""

    def __init__(self, prompt: dict[str, Any], total_nodes: int, stream: Any = None) -> None:
        self.prompt = prompt
        self.total = total_nodes
        self.stream = stream or sys.stderr
        self.count = 0
        self.bar: Any = None
        self.outputs: dict[str, dict[str, list[Any]]] = {}

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "execution_cached" and data.get("nodes"):
            self._say(f"cached: {len(data['nodes'])} node(s) reused")
        elif event == "executing":
            self._close_bar()
            node_id = data.get("node")
            if node_id is not None:
                self.count += 1
                class_type = (self.prompt.get(node_id) or {}).get("class_type", "?")
                self._say(f"[{self.count}/{self.total}] node {node_id} {class_type}")
        elif event == "progress":
            self._progress(int(data.get("value", 0)), int(data.get("max", 0)))
        elif event == "executed":
            self.outputs[str(data.get("node"))] = data.get("output") or {}
        elif event == "execution_error":
            self._close_bar()
            where = f"node {data.get('node_id')} ({data.get('node_type')})" if data.get("node_id") else "workflow"
            self._say(f"error: {where} failed: {data.get('exception_type')}: {data.get('exception_message')}")
            trace = data.get("traceback") or []
            if trace:
                self._say("".join(trace).rstrip())
        elif event == "execution_interrupted":
            self._close_bar()
            self._say(f"interrupted at node {data.get('node_id')} ({data.get('node_type')})")
        elif event == "fluxgraph.step_cache":  # a sampler's step cache: what it saved (docs/flux.md "Speed")
            self._close_bar()
            self._say(f"node {data.get('node')}: {data.get('method')} skipped {data.get('skipped_steps')}/"
                      f"{data.get('steps')} steps; {data.get('transformer_evaluations')} transformer evaluations, "
                      f"{data.get('skipped_evaluations')} answered from the cache")

    def _progress(self, value: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.total != total:
            self._close_bar()
            self.bar = tqdm(total=total, file=self.stream, leave=True, unit="step", dynamic_ncols=True)
        self.bar.update(value - self.bar.n)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        self._close_bar()


def output_paths(outputs: dict[str, dict[str, list[Any]]], folders: Any) -> list[tuple[str, Path]]:
    """(file type, absolute path) of every file that the output nodes reported in their ui images."""
    paths = []
    for ui in outputs.values():
        for record in ui.get("images", []) if isinstance(ui, dict) else []:
            if isinstance(record, dict) and "filename" in record:
                kind = record.get("type", "output")
                folder = folders.directory(kind) / (record.get("subfolder") or "")
                paths.append((kind, folder / record["filename"]))
    return paths
