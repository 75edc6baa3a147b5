"""Download hints that the editor saves in UI workflows, shown when a model file is missing.

ComfyUI's frontend keeps, per model a workflow needs, `{"name", "url", "directory"}`: in a node's
`properties.models` list and/or in the workflow's top-level `models` list (templates carry both). They
survive UI -> API conversion (`UiConversion.models`, and the workflow travels in `extra_data.extra_pnginfo`),
and `add_download_hints` attaches the matching hint to a validation error about a missing model file:
`extra_info["download"]` and a sentence at the end of `details`.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any, Iterable

from engine.workflow.ui_format import carried_workflow

HINT_FIELDS = ("name", "url", "directory")
MISSING_MODEL_ERRORS = ("value_not_in_list", "custom_validation_failed")


def _hint(entry: Any) -> dict[str, str] | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
        return None
    if not isinstance(entry.get("url"), str) or not entry["url"].strip():
        return None
    directory = entry.get("directory")
    return {"name": entry["name"], "url": entry["url"],
            "directory": directory if isinstance(directory, str) else ""}


def _nodes(workflow: dict[str, Any]) -> Iterable[Any]:
    yield from workflow.get("nodes") or []
    definitions = workflow.get("definitions")
    for subgraph in (definitions.get("subgraphs") or []) if isinstance(definitions, dict) else []:
        if isinstance(subgraph, dict) and isinstance(subgraph.get("nodes"), list):
            yield from subgraph["nodes"]


def workflow_model_hints(workflow: Any) -> list[dict[str, str]]:
    """Every well-formed hint of a UI workflow (nodes' `properties.models`, subgraphs' nodes, top-level
    `models`), one per model name, the first seen winning; malformed entries are ignored. `workflow` may
    be the JSON text."""
    if isinstance(workflow, (str, bytes)):
        try:
            workflow = json.loads(workflow)
        except ValueError:
            return []
    if not isinstance(workflow, dict):
        return []
    entries: list[Any] = []
    for node in _nodes(workflow):
        properties = node.get("properties") if isinstance(node, dict) else None
        if isinstance(properties, dict) and isinstance(properties.get("models"), list):
            entries.extend(properties["models"])
    if isinstance(workflow.get("models"), list):
        entries.extend(workflow["models"])
    hints: dict[str, dict[str, str]] = {}
    for entry in entries:
        hint = _hint(entry)
        if hint is not None:
            hints.setdefault(hint["name"], hint)
    return list(hints.values())


def extra_data_model_hints(extra_data: Any) -> list[dict[str, str]]:
    """The hints of the UI workflow a prompt carries (`ui_format.carried_workflow`)."""
    return workflow_model_hints(carried_workflow(extra_data))


def _missing_names(error: dict[str, Any]) -> list[str]:
    extra = error.get("extra_info") or {}
    if error.get("type") == "value_not_in_list":
        value = extra.get("received_value")
        return [value] if isinstance(value, str) else []
    received = extra.get("received_inputs")
    details = str(error.get("details") or "")
    if not isinstance(received, dict):
        return []
    return [v for v in received.values() if isinstance(v, str) and v and f"'{v}'" in details]


def _find(hints: list[dict[str, str]], name: str) -> dict[str, str] | None:
    for hint in hints:
        if hint["name"] == name:
            return hint
    base = PurePosixPath(name.replace("\\", "/")).name
    return next((hint for hint in hints if hint["name"] == base), None)


def describe_hint(hint: dict[str, str]) -> str:
    where = f" into models/{hint['directory']}/" if hint.get("directory") else ""
    return f"download {hint['name']} from {hint['url']}{where}"


def add_download_hints(node_errors: dict[str, Any], hints: list[dict[str, str]]) -> dict[str, Any]:
    """node_errors where each missing-model error whose file has a hint names what to get (a new dict)."""
    if not hints or not isinstance(node_errors, dict):
        return node_errors
    result: dict[str, Any] = {}
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("errors"), list):
            result[node_id] = entry
            continue
        errors = []
        for error in entry["errors"]:
            hint = None
            if (isinstance(error, dict) and error.get("type") in MISSING_MODEL_ERRORS
                    and "download" not in (error.get("extra_info") or {})):  # not twice
                hint = next((h for h in map(lambda n: _find(hints, n), _missing_names(error)) if h), None)
            if hint is not None:
                details = str(error.get("details") or "")
                error = {**error, "details": f"{details} ({describe_hint(hint)})" if details else describe_hint(hint),
                         "extra_info": {**(error.get("extra_info") or {}), "download": dict(hint)}}
            errors.append(error)
        result[node_id] = {**entry, "errors": errors}
    return result
