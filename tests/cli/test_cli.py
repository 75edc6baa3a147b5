"""The `fluxgraph` command line: fast help, runs with progress and outputs, PNG re-runs, error listings,
--set overrides, and delegation to the server, the model zoo and the UI-format converter."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from engine import cli
from engine.cli import workflow_files
from engine.core.context import InterruptFlag
from engine.core.registry import NodeRegistry
from engine.workflow import exporter as ui_export
from engine.zoo import writer as zoo
from nodes.core import NODES

REPO = Path(__file__).resolve().parents[2]
HEAVY_MODULES = ("torch", "diffusers", "transformers", "numpy", "PIL", "networkx", "aiohttp", "safetensors")


def toy_workflow(width: int = 4, color: int = 0xFF0000) -> dict:
    """EmptyImage -> ImageInvert -> SaveImage."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 3, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "toy"},
              "_meta": {"title": "Save it"}},
    }


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def fluxgraph(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


# ----- start-up cost
def test_help_imports_nothing_heavy():
    """--help stays fast because it loads no heavy library (checked by what it imports, not by a clock)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "engine.cli", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0 and "run" in done.stdout and "validate" in done.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & set(HEAVY_MODULES), imported & set(HEAVY_MODULES)


@pytest.mark.parametrize("command", ["run", "validate", "nodes", "models"])
def test_subcommand_help_imports_nothing_heavy(command):
    code = (f"import sys\nfrom engine import cli\ntry:\n    cli.main(['{command}', '--help'])\n"
            f"except SystemExit:\n    pass\nprint(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ----- run, end to end in a subprocess, and the PNG metadata round trip
def test_run_saves_outputs_and_png_reruns_its_workflow(tmp_path):
    workflow = write_json(tmp_path / "wf.json", toy_workflow())
    out_dir = tmp_path / "elsewhere"
    first = fluxgraph("run", str(workflow), "--base-dir", str(tmp_path), "--output-dir", str(out_dir),
                      "--set", "1.width=5", "--set", "Save it.filename_prefix=shots/toy")
    assert first.returncode == 0, first.stderr
    saved = out_dir / "shots" / "toy_00001_.png"
    assert f"saved: {saved}" in first.stdout.splitlines()
    assert "[1/3] node 1 EmptyImage" in first.stderr and "[3/3] node 3 SaveImage" in first.stderr
    with Image.open(saved) as picture:
        assert picture.size == (5, 3) and picture.getpixel((0, 0)) == (0, 255, 255)
        embedded = json.loads(picture.text["prompt"])
    assert embedded["1"]["inputs"]["width"] == 5  # the overrides are what was run, and what is embedded

    again = fluxgraph("run", str(saved), "--base-dir", str(tmp_path), "--output-dir", str(out_dir))
    assert again.returncode == 0, again.stderr
    rerun = out_dir / "shots" / "toy_00002_.png"
    assert f"saved: {rerun}" in again.stdout.splitlines()
    with Image.open(saved) as a, Image.open(rerun) as b:
        assert list(a.getdata()) == list(b.getdata())
        assert json.loads(b.text["prompt"]) == embedded


# ----- run and validate, in process
def test_run_in_process_reports_outputs_and_carries_workflow_chunk(tmp_path, capsys):
    body = {"prompt": toy_workflow(), "extra_data": {"extra_pnginfo": {"workflow": {"nodes": [], "v": 1}}}}
    path = write_json(tmp_path / "body.json", body)  # a saved POST /prompt body works too
    assert cli.main(["run", str(path), "--base-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    saved = tmp_path / "output" / "toy_00001_.png"
    assert f"saved: {saved}" in out
    with Image.open(saved) as picture:
        assert json.loads(picture.text["workflow"]) == {"nodes": [], "v": 1}


def test_run_node_failure_exits_1_with_the_node_named(tmp_path, capsys):
    workflow = toy_workflow()
    workflow["4"] = {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}}
    workflow["5"] = {"class_type": "MaskPreview", "inputs": {"mask": ["4", 0]}}
    path = write_json(tmp_path / "wf.json", workflow)
    assert cli.main(["run", str(path), "--base-dir", str(tmp_path)]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert "error: node 4 (ImageToMask) failed: ValueError" in captured.err
    assert "no alpha" in captured.err
    assert "saved:" in captured.out  # the independent branch still ran and saved


def test_validate_lists_every_error(tmp_path, capsys):
    workflow = toy_workflow()
    workflow["1"]["inputs"].update(width=0, color="red")
    workflow["3"]["inputs"]["filename_prefix"] = ["99", 0]
    path = write_json(tmp_path / "bad.json", workflow)
    assert cli.main(["validate", str(path), "--base-dir", str(tmp_path)]) == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert "node 1 (EmptyImage), input 'width': Value 0 smaller than min of 1" in err
    assert "node 1 (EmptyImage), input 'color': Failed to convert" in err
    assert "node 3 (SaveImage), input 'filename_prefix'" in err
    assert "(3 problem(s))" in err
    # run refuses the same workflow before running anything
    assert cli.main(["run", str(path), "--base-dir", str(tmp_path)]) == cli.EXIT_INVALID
    assert not (tmp_path / "output").exists()


def test_validate_ok_and_json(tmp_path, capsys):
    path = write_json(tmp_path / "wf.json", toy_workflow())
    assert cli.main(["validate", str(path), "--base-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 node(s), output node(s) 3")
    bad = write_json(tmp_path / "bad.json", {"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert cli.main(["validate", str(bad), "--json", "--base-dir", str(tmp_path)]) == cli.EXIT_INVALID
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False and "NoSuchNode" in answer["error"]["message"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a workflow"),
])
def test_unreadable_workflow_files(tmp_path, capsys, content, message):
    path = tmp_path / "wf.json"
    if content is not None:
        path.write_text(content)
    assert cli.main(["validate", str(path), "--base-dir", str(tmp_path)]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_png_without_workflow_is_refused(tmp_path, capsys):
    Image.new("RGB", (2, 2)).save(tmp_path / "plain.png")
    assert cli.main(["run", str(tmp_path / "plain.png"), "--base-dir", str(tmp_path)]) == cli.EXIT_USAGE
    assert "no embedded workflow" in capsys.readouterr().err


# ----- --set
class _Registry:
    """Just enough of a registry for apply_overrides."""

    def __init__(self):
        from nodes.core import NODES

        self.schemas = {s.name: s for s in NODES}

    def get(self, name):
        return self.schemas.get(name)


def test_set_parses_json_values_and_finds_nodes_by_id_title_or_class():
    original = toy_workflow()
    prompt = cli.apply_overrides(original, ["1.width=7", "Save it.filename_prefix=a b", "ImageInvert.image=[\"1\", 0]",
                                            "EmptyImage.color=\"12\""], _Registry())
    assert prompt["1"]["inputs"]["width"] == 7 and prompt["1"]["inputs"]["color"] == "12"
    assert prompt["3"]["inputs"]["filename_prefix"] == "a b" and prompt["2"]["inputs"]["image"] == ["1", 0]
    assert original["1"]["inputs"]["width"] == 4  # the loaded workflow itself is not modified


@pytest.mark.parametrize("assignment, message", [
    ("1width=3", "expected NODE.INPUT=VALUE"),
    ("1.width", "expected NODE.INPUT=VALUE"),
    ("9.width=3", "no node '9'"),
    ("1.depth=3", "has no input 'depth'; its inputs are: width, height, batch_size, color"),
])
def test_set_errors_are_specific(assignment, message):
    with pytest.raises(cli.CliError, match=message.replace("(", r"\(").replace(".", r"\.")):
        cli.apply_overrides(toy_workflow(), [assignment], _Registry())


def test_set_refuses_ambiguous_names():
    workflow = toy_workflow()
    workflow["4"] = dict(workflow["2"])
    with pytest.raises(cli.CliError, match="matches several nodes"):
        cli.apply_overrides(workflow, ["ImageInvert.image=1"], _Registry())


# ----- progress lines and bars
def test_progress_printer_lines_and_bar():
    stream = io.StringIO()
    printer = cli.ProgressPrinter({"7": {"class_type": "KSampler"}}, total_nodes=2, stream=stream)
    printer("execution_cached", {"nodes": ["1"]})
    printer("executing", {"node": "7"})
    for step in (1, 2, 3):
        printer("progress", {"value": step, "max": 3, "node": "7"})
    assert printer.bar is not None and printer.bar.n == 3
    printer("executed", {"node": "7", "output": {"images": [{"filename": "a.png", "subfolder": "",
                                                              "type": "temp"}]}})
    printer("executing", {"node": None})
    assert printer.bar is None
    text = stream.getvalue()
    assert "cached: 1 node(s) reused" in text and "[1/2] node 7 KSampler" in text and "3/3" in text
    assert printer.outputs == {"7": {"images": [{"filename": "a.png", "subfolder": "", "type": "temp"}]}}


def test_progress_printer_says_what_a_step_cache_saved():
    stream = io.StringIO()
    printer = cli.ProgressPrinter({"9": {"class_type": "KSampler"}}, total_nodes=1, stream=stream)
    printer("executing", {"node": "9"})
    printer("progress", {"value": 20, "max": 20, "node": "9"})
    printer("fluxgraph.step_cache", {"node": "9", "prompt_id": "p", "method": "EasyCache", "steps": 20,
                                     "skipped_steps": 12, "transformer_evaluations": 8, "skipped_evaluations": 12})
    assert printer.bar is None
    assert "node 9: EasyCache skipped 12/20 steps; 8 transformer evaluations, 12 answered from the cache" \
        in stream.getvalue()


def test_first_ctrl_c_interrupts_cooperatively_second_stops():
    interrupt = InterruptFlag()
    previous = cli._interrupt_on_sigint(interrupt)
    try:
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGINT, None)
        assert interrupt.is_set()
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGINT, previous)


# ----- nodes
def test_nodes_lists_and_prints_object_info(tmp_path, capsys):
    assert cli.main(["nodes"]) == 0
    listing = capsys.readouterr().out
    assert any(line.split()[:1] == ["ImageInvert"] for line in listing.splitlines())
    (tmp_path / "input").mkdir()
    Image.new("RGB", (1, 1)).save(tmp_path / "input" / "pic.png")
    assert cli.main(["nodes", "LoadImage", "--json", "--base-dir", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert list(info) == ["LoadImage"] and info["LoadImage"]["input"]["required"]["image"][0] == ["pic.png"]
    assert cli.main(["nodes", "NoSuchNode"]) == cli.EXIT_USAGE
    assert "unknown node(s): NoSuchNode" in capsys.readouterr().err


# ----- delegation to other parts of the project
def test_serve_delegates_to_engine_server(monkeypatch):
    received = {}
    monkeypatch.setattr(cli, "add_serve_arguments",
                        lambda parser: parser.add_argument("--port", type=int, default=8188))
    monkeypatch.setattr(cli, "serve", lambda args: received.setdefault("port", args.port) and None)
    assert cli.main(["serve", "--port", "1234"]) == 0
    assert received == {"port": 1234}


def test_ui_workflows_are_converted(monkeypatch, tmp_path, capsys):
    seen = {}

    def convert_ui_workflow(workflow, registry, **options):
        seen["workflow"] = workflow
        return types.SimpleNamespace(prompt=toy_workflow(), origins={}, dropped={}, warnings=[])

    monkeypatch.setattr(workflow_files, "convert_workflow", convert_ui_workflow)
    ui = {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}
    path = write_json(tmp_path / "ui.json", ui)
    assert cli.main(["run", str(path), "--base-dir", str(tmp_path)]) == 0
    assert seen["workflow"] == ui
    with Image.open(tmp_path / "output" / "toy_00001_.png") as picture:
        assert json.loads(picture.text["workflow"]) == ui  # the editor can reopen the result


def test_real_ui_workflow_runs(tmp_path, capsys):
    ui = ui_export.api_to_ui(toy_workflow(width=6), NodeRegistry(NODES))
    path = write_json(tmp_path / "ui.json", ui)
    assert cli.main(["run", str(path), "--base-dir", str(tmp_path)]) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "output" / "toy_00001_.png") as picture:
        assert picture.size == (6, 3) and picture.getpixel((0, 0)) == (0, 255, 255)
        assert json.loads(picture.text["workflow"]) == ui


def test_models_delegate_to_the_zoo_and_list(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(zoo, "write_tiny_zoo", lambda d: calls.append(("tiny", d)) or [], raising=False)
    monkeypatch.setattr(zoo, "prepare_models", lambda d: calls.append(("prepare", d)) or [], raising=False)
    models = tmp_path / "models"
    assert cli.main(["models", "tiny", "--models-dir", str(models)]) == 0
    assert cli.main(["models", "prepare", "--base-dir", str(tmp_path)]) == 0
    assert calls == [("tiny", models), ("prepare", models)]
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "ae.safetensors").write_bytes(b"")
    capsys.readouterr()
    assert cli.main(["models", "list", "--base-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["vae/ae.safetensors"]


def test_ui_workflow_errors_name_the_editor_node_and_say_the_format(tmp_path):
    """A UI-format workflow: the CLI says which format it read and names editor nodes in its errors."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "ui" / "core_invert_subgraph.json"
    workflow = json.loads(fixture.read_text())
    for node in workflow["nodes"]:
        if node["id"] == 1:
            node["widgets_values"][1] = -5  # height below its minimum
            node["title"] = "Red canvas"
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(workflow))
    done = subprocess.run([sys.executable, "-m", "engine.cli", "validate", str(path), "--base-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert done.returncode == 3, done.stderr
    assert "UI format (editor save)" in done.stderr
    assert "editor node #1 'Red canvas'" in done.stderr and "height" in done.stderr


def test_models_prepare_copies_the_shipped_workflows_input_images(monkeypatch, tmp_path, capsys):
    """`make run` runs `models prepare`: afterwards every image a shipped workflow loads is in input/, and a
    file of the user's with the same name is left alone."""
    monkeypatch.setattr(zoo, "prepare_models", lambda d: {}, raising=False)
    shipped = Path(__file__).resolve().parents[2] / "workflows"
    named = set()
    for path in shipped.glob("*.json"):
        named |= set(re.findall(r'"image":\s*"([^"\\]+\.png)"', path.read_text()))
    assert named, "the shipped workflows load no input image"
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "segment_example.png").write_bytes(b"mine")
    assert cli.main(["models", "prepare", "--base-dir", str(tmp_path)]) == 0
    assert named <= {p.name for p in (tmp_path / "input").iterdir()}
    assert (tmp_path / "input" / "segment_example.png").read_bytes() == b"mine"
    assert "example inputs:" in capsys.readouterr().out
    assert cli.main(["models", "prepare", "--base-dir", str(tmp_path)]) == 0
    assert "already present" in capsys.readouterr().out


def test_a_second_server_on_the_same_base_folder_stops_with_one_line(tmp_path, monkeypatch):
    """The queue database belongs to one server: the second says so and how to proceed, without a traceback."""
    import argparse

    from aiohttp import web

    from engine.queue.store import PromptQueue
    from engine.server import add_serve_arguments, serve

    monkeypatch.setattr(web, "run_app", lambda *a, **k: pytest.fail("a second server must not start"))
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    queue = tmp_path / "user" / "fluxgraph" / "queue.sqlite3"
    queue.parent.mkdir(parents=True)
    with PromptQueue(queue):  # the first server's
        with pytest.raises(SystemExit) as stopped:
            serve(parser.parse_args(["--base-dir", str(tmp_path), "--port", "0"]))
    assert "in use by another fluxgraph process" in str(stopped.value) and "--base-dir" in str(stopped.value)
