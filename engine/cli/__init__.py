"""The `fluxgraph` command: run and validate workflows, list nodes, serve, prepare models.

    fluxgraph run WORKFLOW.json|IMAGE.png [--set NODE.INPUT=VALUE ...] [--output-dir DIR] [--base-dir DIR]
                  [--extra-model-paths-config FILE ...]
    fluxgraph validate WORKFLOW [--set ...] [--json]
    fluxgraph nodes [NAME ...] [--json]
    fluxgraph serve [server options]
    fluxgraph models tiny|prepare|list [--models-dir DIR]
    fluxgraph train segmenter --data DIR [--base NAME] [--epochs N] ...      (engine/cli/train_export.py)
    fluxgraph train lora --config FILE [--resume] [--steps N]                (engine/cli/train_lora.py)
    fluxgraph export segmenter NAME --format onnx|torchscript|pt2 [--dtype fp32|fp16|int8] [--size HxW ...]

Nothing heavy is imported at module level (no torch, no node pack, no networkx): `fluxgraph --help` must
answer at once. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Sequence

from engine import __version__
from engine.backends.runtime import Runtime
from engine.cli.errors import EPILOG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, CliError
from engine.cli.reporting import ProgressPrinter, format_validation_errors, output_paths
from engine.cli.train_export import add_train_export_commands
from engine.cli.workflow_files import apply_overrides, copy_example_inputs, is_ui_workflow, load_workflow_source
from engine.core.context import InterruptFlag
from engine.core.folders import DEFAULT_MODEL_FOLDERS, FolderPaths
from engine.core.graph import parse_prompt
from engine.core.registry import NodeRegistry
from engine.memory.budget import add_memory_arguments, settings_from_args
from engine.memory.manager import MemoryManager
from engine.core.extra_model_paths import ExtraModelPathsError
from engine.server import add_extra_model_paths_argument, add_serve_arguments, extra_model_path_files, serve
from engine.zoo import writer as zoo

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "CliError",
           "ProgressPrinter", "apply_overrides", "build_parser", "format_validation_errors", "is_ui_workflow",
           "load_workflow_source", "main", "output_paths"]


def _runtime(args: argparse.Namespace) -> Any:
    try:
        memory = settings_from_args(args)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    try:
        return Runtime.create(args.base_dir, output_dir=getattr(args, "output_dir", None),
                              input_dir=getattr(args, "input_dir", None), models=MemoryManager.from_settings(memory),
                              extra_model_paths=extra_model_path_files(args))
    except ExtraModelPathsError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _prepare(args: argparse.Namespace, runtime: Any) -> tuple[dict[str, Any], dict[str, Any], Any]:
    loaded = load_workflow_source(Path(args.workflow), runtime.registry, runtime.folders)
    print(f"{args.workflow}: {loaded.source_format}, {len(loaded.prompt)} node(s)", file=sys.stderr)
    if loaded.conversion is not None:
        for prompt_id, why in loaded.conversion.dropped.items():
            print(f"note: node {prompt_id} left out: {why}", file=sys.stderr)
        for warning in loaded.conversion.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    prompt = apply_overrides(loaded.prompt, args.set or [], runtime.registry)
    result = runtime.validate(prompt)
    result.node_errors = loaded.annotate(result.node_errors)
    return prompt, loaded.extra_data, result


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
    runtime = _runtime(args)
    prompt, extra_data, result = _prepare(args, runtime)
    if not result.ok or result.node_errors:  # a CLI run is all or nothing
        return _report_invalid(result)

    needed = parse_prompt(result.prompt).upstream(result.outputs)
    printer = ProgressPrinter(result.prompt, total_nodes=len(needed))
    interrupt = InterruptFlag()
    previous_handler = _interrupt_on_sigint(interrupt)
    try:
        outcome = runtime.executor.execute(result.prompt, uuid.uuid4().hex, outputs=result.outputs,
                                           on_event=printer, extra_data=extra_data, interrupt=interrupt)
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


def _interrupt_on_sigint(interrupt: InterruptFlag) -> Any:
    """First Ctrl-C sets the run's token so it stops cooperatively (between nodes or at the next step); a
    second one raises KeyboardInterrupt at once."""
    def handler(signum: int, frame: Any) -> None:
        if interrupt.is_set():
            raise KeyboardInterrupt
        print("\ninterrupting (Ctrl-C again to stop at once)", file=sys.stderr)
        interrupt.set()

    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may install signal handlers
    return signal.signal(signal.SIGINT, handler)


def cmd_nodes(args: argparse.Namespace) -> int:
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
    base = Path(args.base_dir or Path.cwd())
    folders = FolderPaths(base, models_dir=args.models_dir)
    if args.action == "list":
        for key in DEFAULT_MODEL_FOLDERS:
            for name in folders.list_models(key, include_dirs=True):
                print(f"{key}/{name}")
        return EXIT_OK
    function = {"tiny": zoo.write_tiny_zoo, "prepare": zoo.prepare_models}[args.action]
    report = function(folders.models_dir)
    if args.action == "prepare":  # the shipped workflows' input images, where LoadImage looks for them
        copied = copy_example_inputs(folders.input_dir)
        print(f"example inputs: {len(copied)} copied to {folders.input_dir}" if copied else
              "example inputs: already present")
    if isinstance(report, dict):  # tiny: file -> sha256; prepare: step -> what was done
        for key, value in report.items():
            print(f"{key}: {value}")
    elif report:
        print(report)
    return EXIT_OK


def cmd_serve(argv: Sequence[str]) -> int:
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
    add_extra_model_paths_argument(parser, several_per_flag=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxgraph", epilog=EPILOG,
                                     description="Run ComfyUI-compatible FLUX and segmentation workflows.")
    parser.add_argument("--version", action="version", version=f"fluxgraph {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run a workflow and save its outputs", epilog=EPILOG)
    _add_workflow_arguments(run)
    run.add_argument("--output-dir", help="where SaveImage writes (default: BASE/output)")
    add_memory_arguments(run)
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
    add_train_export_commands(commands)
    return parser


def _version() -> str:
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

