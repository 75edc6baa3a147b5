"""Convert the ComfyUI editor's saved workflows (UI format) into API-format prompts.

This does what the editor does when it queues a graph (docs/protocol.md §7): widget values become named inputs
(`engine.workflow.widgets`), links are followed through Reroutes, PrimitiveNodes fold into the inputs they feed,
Notes vanish, muted nodes (mode 2) are removed together with the nodes that then lack a required input,
bypassed nodes (mode 4) hand each consumer their input of the matching type, and subgraph instances are
expanded in place with ids `outer:inner` (`engine.workflow.subgraphs`).

    prompt = ui_to_api(json.load(open("workflow.json")), registry)

`convert_ui_workflow` returns the prompt together with what was dropped, warnings, and where each prompt
node came from (UI id, title, subgraph path), so errors can name the node the user sees.
"""

from __future__ import annotations

import random
from typing import Any

from engine.core.registry import NodeRegistry
from engine.workflow.conversion import NodeOrigin, UiConversion
from engine.workflow.converter import Converter
from engine.workflow.exporter import api_to_ui
from engine.workflow.model_hints import add_download_hints, workflow_model_hints
from engine.workflow.ui_format import UiWorkflow, WorkflowFormatError, is_api_prompt, is_ui_workflow, parse_ui_workflow

__all__ = ["NodeOrigin", "UiConversion", "WorkflowFormatError", "annotate_node_errors", "api_to_ui",
           "convert_request", "convert_ui_workflow", "is_api_prompt", "is_ui_workflow", "ui_to_api"]


def convert_ui_workflow(workflow: Any, registry: NodeRegistry, *, choice_env: Any = None,
                        rng: random.Random | None = None, dynamic_prompts: bool = True,
                        fold_primitives: bool = True) -> UiConversion:
    """Convert a UI workflow (dict or JSON text) into an API prompt plus a report of what happened.

    `choice_env` (the folder resolver) lets combos without a saved value default to their first choice;
    `rng` drives `{a|b}` dynamic-prompt choices. Raises WorkflowFormatError with ComfyUI-shaped errors.
    """
    parsed = workflow if isinstance(workflow, UiWorkflow) else parse_ui_workflow(workflow)
    conversion = Converter(parsed, registry, choice_env, rng, dynamic_prompts, fold_primitives).run()
    conversion.models = workflow_model_hints(workflow)  # (a parsed UiWorkflow carries none)
    return conversion


def ui_to_api(workflow: Any, registry: NodeRegistry, **options: Any) -> dict[str, Any]:
    """The API-format prompt the ComfyUI editor would queue for this saved workflow."""
    return convert_ui_workflow(workflow, registry, **options).prompt


def annotate_node_errors(node_errors: dict[str, Any], conversion: UiConversion) -> dict[str, Any]:
    """Add the UI node (id, title, subgraph path) to each error of a validation result's node_errors, and the
    workflow's download hint to each error about a missing model file."""
    annotated: dict[str, Any] = {}
    for node_id, entry in node_errors.items():
        origin = conversion.origins.get(node_id)
        copy = dict(entry)
        if origin is not None:
            copy["errors"] = [{**error, "extra_info": {**error.get("extra_info", {}), "ui_node": origin.as_dict()}}
                              for error in entry.get("errors", [])]
        annotated[node_id] = copy
    return add_download_hints(annotated, getattr(conversion, "models", None) or [])


def convert_request(body: Any, registry: NodeRegistry, choice_env: Any = None) -> tuple[int, dict[str, Any]]:
    """Handler core of the UI->API conversion endpoint: (HTTP status, JSON body).

    The body is `{"workflow": <UI workflow>}` (or the workflow itself); the answer is
    `{"prompt", "dropped", "warnings", "origins", "models"}` (models: the workflow's download hints) or a 400
    with ComfyUI's `{error, node_errors}`.
    """
    workflow = body.get("workflow", body) if isinstance(body, dict) else body
    try:
        conversion = convert_ui_workflow(workflow, registry, choice_env=choice_env)
    except WorkflowFormatError as exc:
        return 400, exc.response()
    return 200, {"prompt": conversion.prompt, "dropped": conversion.dropped, "warnings": conversion.warnings,
                 "origins": {k: v.as_dict() for k, v in conversion.origins.items()}, "models": conversion.models}
