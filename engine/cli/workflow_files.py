"""Reading workflows for the CLI: API or UI-format JSON, POST /prompt bodies, PNGs, and --set overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from engine.cli.errors import EXIT_INVALID, CliError
from engine.cli.reporting import format_validation_errors
from engine.workflow.convert import annotate_node_errors
from engine.workflow.convert import convert_ui_workflow as convert_workflow
from engine.workflow.model_hints import add_download_hints, extra_data_model_hints


def is_ui_workflow(data: Any) -> bool:
    """The editor's save format (LiteGraph: a top-level `nodes` list) rather than API format."""
    return (isinstance(data, dict) and isinstance(data.get("nodes"), list)
            and any(key in data for key in ("links", "last_node_id", "version", "definitions", "groups")))


def read_png_chunks(path: Path) -> dict[str, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
            return {str(k): str(v) for k, v in getattr(picture, "text", {}).items()}
    except (OSError, UnidentifiedImageError) as exc:
        raise CliError(f"{path}: cannot read it as an image ({exc})") from exc


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc


@dataclass
class LoadedWorkflow:
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    source_format: str  # what the file held, said to the user: "API format", "UI format (editor save)", ...
    conversion: Any = None  # engine.workflow.convert.UiConversion for UI-format workflows

    def annotate(self, node_errors: dict[str, Any]) -> dict[str, Any]:
        """Validation errors naming the editor's node id and title, not only the generated prompt id, and for a
        missing model file the download hint the workflow carries (also in a PNG's or a /prompt body's
        extra_data)."""
        if self.conversion is not None:
            node_errors = annotate_node_errors(node_errors, self.conversion)
        return add_download_hints(node_errors, extra_data_model_hints(self.extra_data))


def load_workflow_source(path: Path, registry: Any, folders: Any = None) -> LoadedWorkflow:
    """The API-format prompt and extra_data of a workflow JSON (API or UI format, or a POST /prompt body)
    or of a PNG that a SaveImage node wrote (its `prompt` chunk; its `workflow` chunk is carried along)."""
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    if path.suffix.lower() == ".png":
        chunks = read_png_chunks(path)
        workflow = _parse_json(chunks["workflow"], f"{path} (workflow chunk)") if "workflow" in chunks else None
        extra = {"extra_pnginfo": {"workflow": workflow}} if workflow else {}
        if "prompt" in chunks:
            prompt = _parse_json(chunks["prompt"], f"{path} (prompt chunk)")
            return LoadedWorkflow(_check_api_prompt(prompt, path), extra, "PNG with an API-format prompt")
        if workflow is not None:
            conversion = convert_ui_workflow(workflow, registry, folders)
            return LoadedWorkflow(_check_api_prompt(conversion.prompt, path), extra,
                                  "PNG with a UI-format workflow", conversion)
        raise CliError(f"{path}: this PNG has no embedded workflow (no 'prompt' or 'workflow' text chunk)")
    try:
        data = _parse_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read it ({exc})") from exc
    if is_ui_workflow(data):
        conversion = convert_ui_workflow(data, registry, folders)
        return LoadedWorkflow(_check_api_prompt(conversion.prompt, path), {"extra_pnginfo": {"workflow": data}},
                              "UI format (editor save)", conversion)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a saved POST /prompt body
        extra = data.get("extra_data") if isinstance(data.get("extra_data"), dict) else {}
        return LoadedWorkflow(_check_api_prompt(data["prompt"], path), extra, "a POST /prompt body")
    return LoadedWorkflow(_check_api_prompt(data, path), {}, "API format")


def _check_api_prompt(prompt: Any, path: Path) -> dict[str, Any]:
    if not isinstance(prompt, dict) or not prompt:
        raise CliError(f"{path}: expected a workflow (a JSON object of node id -> "
                       f"{{class_type, inputs}}), got {type(prompt).__name__}")
    return prompt


def convert_ui_workflow(workflow: Any, registry: Any, folders: Any = None) -> Any:
    """The conversion (API prompt and where each node came from) of an editor-saved workflow; `folders`
    fills combos that have no saved value."""
    try:
        return convert_workflow(workflow, registry, choice_env=folders)
    except ValueError as exc:  # engine.workflow.ui_format.WorkflowFormatError carries ComfyUI-shaped errors
        if not hasattr(exc, "node_errors"):
            raise CliError(f"cannot convert the UI-format workflow: {exc}", EXIT_INVALID) from exc
        problems = SimpleNamespace(error=getattr(exc, "error", None), node_errors=exc.node_errors)
        lines = format_validation_errors(problems) or [str(exc)]
        raise CliError("cannot convert the UI-format workflow:\n" + "\n".join(lines), EXIT_INVALID) from exc


def apply_overrides(prompt: dict[str, Any], assignments: Sequence[str], registry: Any) -> dict[str, Any]:
    """Apply `--set NODE.INPUT=VALUE`: NODE is a node id, or a unique title or class name; VALUE is parsed
    as JSON when it can be (numbers, true/false, quoted strings), else taken as a string."""
    prompt = {str(k): dict(v, inputs=dict(v.get("inputs") or {})) if isinstance(v, dict) else v
              for k, v in prompt.items()}
    for assignment in assignments:
        target, sep, raw_value = assignment.partition("=")
        node_ref, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_ref or not input_name:
            raise CliError(f"--set {assignment!r}: expected NODE.INPUT=VALUE, e.g. --set 3.seed=42")
        node_id = _find_node(prompt, node_ref)
        schema = registry.get(prompt[node_id].get("class_type"))
        if schema is not None and schema.input(input_name) is None:
            names = ", ".join(i.name for i in schema.inputs)
            raise CliError(f"--set {assignment!r}: node {node_id} ({schema.name}) has no input "
                           f"{input_name!r}; its inputs are: {names}")
        try:
            value = json.loads(raw_value)
        except json.JSONDecodeError:
            value = raw_value
        prompt[node_id]["inputs"][input_name] = value
    return prompt


def _find_node(prompt: dict[str, Any], ref: str) -> str:
    if ref in prompt:
        return ref
    for key in ("title", "class_type"):
        matches = [nid for nid, node in prompt.items() if isinstance(node, dict) and
                   ((node.get("_meta") or {}).get("title") if key == "title" else node.get("class_type")) == ref]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CliError(f"--set: {ref!r} matches several nodes ({', '.join(matches)}); use a node id")
    raise CliError(f"--set: no node {ref!r} in the workflow (node ids: {', '.join(prompt)})")


EXAMPLE_INPUTS_DIR = Path(__file__).resolve().parents[2] / "workflows" / "inputs"


def copy_example_inputs(input_dir: Path, source: Path = EXAMPLE_INPUTS_DIR) -> list[str]:
    """The input images the shipped workflows name (workflows/inputs/) copied into the input folder, so they
    run after `fluxgraph models prepare` (`make run`). A file already there is never overwritten: it may be
    the user's own. Returns the names copied."""
    from engine.core.atomic_files import write_bytes_atomic  # noqa: PLC0415 - only `models prepare` copies

    if not source.is_dir():
        return []
    Path(input_dir).mkdir(parents=True, exist_ok=True)
    copied = []
    for image in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = image.relative_to(source)  # folders too: the LoRA training workflow's dataset
        target = Path(input_dir) / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, image.read_bytes())
            copied.append(relative.as_posix())
    return copied
