"""The `fluxgraph` command: run and validate workflows, list nodes, serve, prepare models.

    fluxgraph run WORKFLOW.json|IMAGE.png [--set NODE.INPUT=VALUE ...] [--output-dir DIR] [--base-dir DIR]
    fluxgraph validate WORKFLOW [--set ...] [--json]
    fluxgraph nodes [NAME ...] [--json]
    fluxgraph serve [server options]
    fluxgraph models tiny|prepare|list [--models-dir DIR]

Nothing heavy is imported at module level (no torch, no node pack, no networkx): `fluxgraph --help` must
answer at once. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

EXIT_OK = 0
EXIT_FAILED = 1  # the workflow ran and a node failed
EXIT_USAGE = 2  # bad command line or unreadable workflow file (argparse uses 2 too)
EXIT_INVALID = 3  # the workflow failed validation
EXIT_INTERRUPTED = 130

EPILOG = """exit status: 0 success, 1 a node failed, 2 bad command line or unreadable file,
3 the workflow failed validation, 130 interrupted (Ctrl-C; press twice to stop at once)"""


class CliError(Exception):
    """A problem the user can fix (bad file, bad --set); printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ----- loading workflows
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


def load_workflow(path: Path, registry: Any, folders: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(API-format prompt, extra_data) from a workflow JSON (API or UI format, or a POST /prompt body) or
    from a PNG that a SaveImage node wrote (its `prompt` chunk; its `workflow` chunk is carried along)."""
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    if path.suffix.lower() == ".png":
        chunks = read_png_chunks(path)
        workflow = _parse_json(chunks["workflow"], f"{path} (workflow chunk)") if "workflow" in chunks else None
        if "prompt" in chunks:
            prompt = _parse_json(chunks["prompt"], f"{path} (prompt chunk)")
        elif workflow is not None:
            prompt = convert_ui_workflow(workflow, registry, folders)
        else:
            raise CliError(f"{path}: this PNG has no embedded workflow (no 'prompt' or 'workflow' text chunk)")
        return _check_api_prompt(prompt, path), ({"extra_pnginfo": {"workflow": workflow}} if workflow else {})
    try:
        data = _parse_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read it ({exc})") from exc
    if is_ui_workflow(data):
        prompt = convert_ui_workflow(data, registry, folders)
        return _check_api_prompt(prompt, path), {"extra_pnginfo": {"workflow": data}}
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):  # a saved POST /prompt body
        extra = data.get("extra_data") if isinstance(data.get("extra_data"), dict) else {}
        return _check_api_prompt(data["prompt"], path), extra
    return _check_api_prompt(data, path), {}


def _check_api_prompt(prompt: Any, path: Path) -> dict[str, Any]:
    if not isinstance(prompt, dict) or not prompt:
        raise CliError(f"{path}: expected a workflow (a JSON object of node id -> "
                       f"{{class_type, inputs}}), got {type(prompt).__name__}")
    return prompt


def convert_ui_workflow(workflow: Any, registry: Any, folders: Any = None) -> dict[str, Any]:
    """API prompt of an editor-saved workflow; `folders` fills combos that have no saved value."""
    try:
        from engine.ui_workflow import ui_to_api
    except ImportError as exc:
        raise CliError("this is a UI-format workflow (the editor's save format) and this build cannot convert "
                       f"it: engine.ui_workflow is unavailable ({exc}); export it in API format instead") from exc
    try:
        return ui_to_api(workflow, registry, choice_env=folders)
    except ValueError as exc:  # engine.ui_format.WorkflowFormatError carries ComfyUI-shaped errors
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


# ----- reporting
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


# ----- commands
def _runtime(args: argparse.Namespace) -> Any:
    from engine.runtime import Runtime

    return Runtime.create(args.base_dir, output_dir=getattr(args, "output_dir", None),
                          input_dir=getattr(args, "input_dir", None))


def _prepare(args: argparse.Namespace, runtime: Any) -> tuple[dict[str, Any], dict[str, Any], Any]:
    prompt, extra_data = load_workflow(Path(args.workflow), runtime.registry, runtime.folders)
    prompt = apply_overrides(prompt, args.set or [], runtime.registry)
    return prompt, extra_data, runtime.validate(prompt)


def _report_invalid(result: Any) -> int:
    for line in format_validation_errors(result):
        print(line, file=sys.stderr)
    count = sum(len(e.get("errors", [])) for e in result.node_errors.values()) or 1
    print(f"the workflow is invalid ({count} problem(s)); nothing was run", file=sys.stderr)
    return EXIT_INVALID


def cmd_validate(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    prompt, _, result = _prepare(args, runtime)
    if args.json:
        print(json.dumps({"ok": result.ok and not result.node_errors, "outputs": result.outputs,
                          **result.response()}, indent=2))
    if not result.ok or result.node_errors:
        return _report_invalid(result) if not args.json else EXIT_INVALID
    if not args.json:
        print(f"ok: {len(prompt)} node(s), output node(s) {', '.join(result.outputs)}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import uuid

    runtime = _runtime(args)
    prompt, extra_data, result = _prepare(args, runtime)
    if not result.ok or result.node_errors:  # a CLI run is all or nothing
        return _report_invalid(result)
    from engine.graph import parse_prompt

    needed = parse_prompt(result.prompt).upstream(result.outputs)
    printer = ProgressPrinter(result.prompt, total_nodes=len(needed))
    executor = runtime.executor
    previous_handler = _interrupt_on_sigint(executor)
    try:
        outcome = executor.execute(result.prompt, uuid.uuid4().hex, outputs=result.outputs, on_event=printer,
                                   extra_data=extra_data)
    except KeyboardInterrupt:
        printer.close()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        printer.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    for kind, path in output_paths(outcome.outputs, runtime.folders):
        print(f"{'saved' if kind == 'output' else kind}: {path}")
    if outcome.status == "interrupted":
        return EXIT_INTERRUPTED
    if outcome.status != "success":
        print(f"the workflow failed ({len(outcome.errors)} error(s))", file=sys.stderr)
        return EXIT_FAILED
    print(f"done: {len(outcome.executed)} node(s) run, {len(outcome.cached)} cached", file=sys.stderr)
    return EXIT_OK


def _interrupt_on_sigint(executor: Any) -> Any:
    """First Ctrl-C asks the executor to stop cooperatively (between nodes or at the next step); a second
    one raises KeyboardInterrupt at once."""
    def handler(signum: int, frame: Any) -> None:
        if executor.interrupt.is_set():
            raise KeyboardInterrupt
        print("\ninterrupting (Ctrl-C again to stop at once)", file=sys.stderr)
        executor.interrupt.set()

    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may install signal handlers
    return signal.signal(signal.SIGINT, handler)


def cmd_nodes(args: argparse.Namespace) -> int:
    from engine.folders import FolderPaths
    from engine.registry import NodeRegistry

    registry = NodeRegistry().discover("nodes")
    for pack, error in registry.failed.items():
        print(f"warning: node pack {pack} failed to load: {error}", file=sys.stderr)
    unknown = [name for name in args.names if name not in registry]
    if unknown:
        raise CliError(f"unknown node(s): {', '.join(unknown)}")
    schemas = [registry[name] for name in args.names] if args.names else list(registry)
    if args.json:
        folders = FolderPaths(Path(args.base_dir or Path.cwd()))
        print(json.dumps({s.name: s.object_info(folders) for s in schemas}, indent=2))
        return EXIT_OK
    for schema in sorted(schemas, key=lambda s: (s.category, s.name)):
        print(f"{schema.name:32} {schema.category:28} {schema.display_name or schema.name}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from engine.folders import DEFAULT_MODEL_FOLDERS, FolderPaths

    base = Path(args.base_dir or Path.cwd())
    folders = FolderPaths(base, models_dir=args.models_dir)
    if args.action == "list":
        for key in DEFAULT_MODEL_FOLDERS:
            for name in folders.list_models(key, include_dirs=True):
                print(f"{key}/{name}")
        return EXIT_OK
    try:
        from engine.models import zoo
        function = getattr(zoo, {"tiny": "write_tiny_zoo", "prepare": "prepare_models"}[args.action])
    except (ImportError, AttributeError) as exc:
        raise CliError(f"'fluxgraph models {args.action}' is unavailable in this build: {exc}") from exc
    written = function(folders.models_dir)
    if written:
        print(written if isinstance(written, (str, Path)) else json.dumps(written, indent=2, default=str))
    return EXIT_OK


def cmd_serve(argv: Sequence[str]) -> int:
    try:
        from engine.server import add_serve_arguments, serve
    except ImportError as exc:
        raise CliError(f"'fluxgraph serve' is unavailable in this build: {exc}") from exc
    parser = argparse.ArgumentParser(prog="fluxgraph serve", description="Start the ComfyUI-compatible server.")
    add_serve_arguments(parser)
    returned = serve(parser.parse_args(list(argv)))
    return returned if isinstance(returned, int) else EXIT_OK


# ----- parser
def _add_workflow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", help="API- or UI-format workflow JSON, or a PNG written by SaveImage")
    parser.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                        help="override an input (repeatable); NODE is an id, title or unique class name; "
                             "VALUE is JSON when it parses, else a string")
    parser.add_argument("--base-dir", help="folder holding models/, input/, output/, temp/ (default: current)")
    parser.add_argument("--input-dir", help="input folder (default: BASE/input)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxgraph", epilog=EPILOG,
                                     description="Run ComfyUI-compatible FLUX and segmentation workflows.")
    parser.add_argument("--version", action="version", version=f"fluxgraph {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run a workflow and save its outputs", epilog=EPILOG)
    _add_workflow_arguments(run)
    run.add_argument("--output-dir", help="where SaveImage writes (default: BASE/output)")
    run.set_defaults(handler=cmd_run)

    validate = commands.add_parser("validate", help="check a workflow without running it", epilog=EPILOG)
    _add_workflow_arguments(validate)
    validate.add_argument("--json", action="store_true", help="print ComfyUI's error JSON")
    validate.set_defaults(handler=cmd_validate)

    nodes = commands.add_parser("nodes", help="list the available nodes")
    nodes.add_argument("names", nargs="*", help="only these nodes")
    nodes.add_argument("--json", action="store_true", help="print their /object_info entries")
    nodes.add_argument("--base-dir", help="folder whose input/ and models/ fill the file choices")
    nodes.set_defaults(handler=cmd_nodes)

    commands.add_parser("serve", help="start the HTTP/websocket server (see 'fluxgraph serve --help')",
                        add_help=False)

    models = commands.add_parser("models", help="write the tiny model zoo, prepare or list models")
    models.add_argument("action", choices=["tiny", "prepare", "list"],
                        help="tiny: write the tiny random zoo; prepare: the tiny zoo unless real weights are "
                             "there; list: the model files found")
    models.add_argument("--models-dir", help="models folder (default: BASE/models)")
    models.add_argument("--base-dir", help="base folder (default: current)")
    models.set_defaults(handler=cmd_models)
    return parser


def _version() -> str:
    from engine import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "serve":  # the server declares its own options; parsed there, lazily
            return cmd_serve(argv[1:])
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except CliError as exc:
        print(f"fluxgraph: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
