"""The scale-out pieces that need no Ray: fair and model-affine scheduling, model identities, the files that
cross between server and worker, the worker actor driven in-process, and the dispatcher's handling of a lost
worker (requeue resumed once, never run twice to completion). The Ray round trips are in test_ray_backend.py."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.backends.contract import WorkerLost
from engine.core.folders import FolderPaths, UnsafePathError
from engine.queue.store import PromptQueue, QueueItem
from engine.core.registry import NodeRegistry
from engine.core.schema import Combo, NodeResult, String, node
from engine.backends.ray.files import OutputStore, input_files, rename_records
from engine.backends.ray.scheduler import ModelIdentities, Scheduler, WorkerSlot, model_files
from tests.support.server import chain_graph, image_graph, make_runtime, sleep_graph

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def item(prompt_id: str, client: str | None, number: int, resumed: bool = False) -> QueueItem:
    return QueueItem(number, prompt_id, {}, {"client_id": client} if client else {}, [], resumed=resumed)


# ----------------------------------------------------------------------------------------------- fairness
def test_choose_takes_turns_between_clients_and_keeps_each_clients_order():
    scheduler = Scheduler()
    pending = [item(f"a{i}", "alice", i) for i in range(5)] + [item("b0", "bob", 5), item("b1", "bob", 6)] + \
        [item("c0", "carol", 7)]
    started = []
    running: list[QueueItem] = []
    while pending:
        chosen = scheduler.choose(pending)
        pending.remove(chosen)
        scheduler.started(chosen)
        started.append(chosen.prompt_id)
        running.append(chosen)
        if len(running) == 2:  # two workers: the older prompt finishes first
            scheduler.finished(running.pop(0))
    # alice queued five before anyone else, yet bob and carol are served in the first turns
    assert started[:3] == ["a0", "b0", "c0"]
    assert started == ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"]


def test_choose_lets_resumed_and_front_prompts_keep_the_head():
    scheduler = Scheduler()
    scheduler.started(item("x", "bob", 0))  # bob has one running: fairness would prefer alice
    assert scheduler.choose([item("r", "bob", 3, resumed=True), item("a", "alice", 1)]).prompt_id == "r"
    assert scheduler.choose([item("f", "bob", -4), item("a", "alice", 1)]).prompt_id == "f"
    assert scheduler.choose([item("b", "bob", 0), item("a", "alice", 1)]).prompt_id == "a"
    assert scheduler.choose([]) is None


# ----------------------------------------------------------------------------------------------- affinity
def test_pick_worker_prefers_held_models_then_the_least_loaded():
    one, two = WorkerSlot("worker-1", idle_since=1.0), WorkerSlot("worker-2", idle_since=2.0)
    one.hold(["unet-a", "t5"])
    assert Scheduler.pick_worker([one, two], frozenset({"unet-a", "t5", "vae"})) is one
    assert Scheduler.pick_worker([one, two], frozenset({"unet-b"})) is two  # holds nothing: least loaded
    three = WorkerSlot("worker-3", idle_since=0.5)
    assert Scheduler.pick_worker([two, three], frozenset()) is three  # idle longest: prompts take turns
    assert Scheduler.pick_worker([], frozenset()) is None
    for index in range(20):  # a worker remembers only what its memory manager could keep loaded
        one.hold([f"m{index}"])
    assert "unet-a" not in one.models and "m19" in one.models


@node("TestModelLoader", inputs=[Combo("unet_name", lambda folders: folders.list_models("diffusion_models")),
                                 String("note", "text")], outputs=[], output_node=True, category="test")
def _model_loader(ctx, unet_name, note):
    return NodeResult(ui={"text": [unet_name]})


def test_models_are_identified_by_content_not_by_name(tmp_path):
    folders = FolderPaths(tmp_path)
    unet = folders.models_dir / "unet"
    unet.mkdir(parents=True)
    (unet / "a.safetensors").write_bytes(b"weights-one" * 1000)
    (unet / "same-as-a.safetensors").write_bytes(b"weights-one" * 1000)
    (unet / "b.safetensors").write_bytes(b"weights-two" * 1000)
    registry = NodeRegistry([_model_loader])
    identities = ModelIdentities(folders)

    def of(name: str) -> frozenset[str]:
        return identities.of_prompt({"1": {"class_type": "TestModelLoader",
                                           "inputs": {"unet_name": name, "note": "a.safetensors"}}}, registry)

    assert len(of("a.safetensors")) == 1  # the STRING "note" is not a model input
    assert of("a.safetensors") == of("same-as-a.safetensors") != of("b.safetensors")
    assert of("missing.safetensors") == frozenset() and of("../../etc/passwd") == frozenset()
    assert model_files({"1": {"class_type": "Unknown", "inputs": {}}}, registry, folders) == []
    before = of("b.safetensors")
    (unet / "b.safetensors").write_bytes(b"weights-three" * 1000)  # changed on disk (another size): a new identity
    assert of("b.safetensors") != before


# ----------------------------------------------------------------------------------------------- files
def test_output_store_never_overwrites_and_remembers_each_workers_names(tmp_path):
    folders = FolderPaths(tmp_path)
    store = OutputStore(folders)
    key = ("output", "", "fox_00001_.png")
    assert store.store("worker-1", key, b"one") == "fox_00001_.png"
    assert store.store("worker-2", key, b"two") == "fox_00002_.png"  # both workers counted from 1
    assert store.store("worker-2", ("output", "sub", "x.bin"), b"a") == "x.bin"
    assert store.store("worker-1", ("output", "sub", "x.bin"), b"b") == "x (1).bin"
    assert (folders.output_dir / "fox_00001_.png").read_bytes() == b"one"
    assert (folders.output_dir / "fox_00002_.png").read_bytes() == b"two"
    assert store.known("worker-2", key) == "fox_00002_.png" and store.known("worker-3", key) is None
    with pytest.raises(UnsafePathError):
        store.store("worker-1", ("output", "../..", "evil.png"), b"x")
    with pytest.raises(UnsafePathError):
        store.store("worker-1", ("temp", "", "/etc/evil.png"), b"x")
    ui = {"images": [{"filename": "fox_00001_.png", "subfolder": "", "type": "output"},
                     {"filename": "fox_00001_.png", "subfolder": "", "type": "input"}], "text": ["hi"]}
    renamed = rename_records(ui, {key: "fox_00002_.png"})
    assert renamed["images"][0]["filename"] == "fox_00002_.png"
    assert renamed["images"][1]["filename"] == "fox_00001_.png" and renamed["text"] == ["hi"]
    assert ui["images"][0]["filename"] == "fox_00001_.png"  # the original is left alone


def test_input_files_ship_only_contained_existing_uploads(tmp_path):
    folders = FolderPaths(tmp_path)
    (folders.input_dir / "clipspace").mkdir(parents=True)
    (folders.input_dir / "clipspace" / "cat.png").write_bytes(b"cat")
    (tmp_path / "secret.png").write_bytes(b"secret")
    registry = NodeRegistry().discover("nodes")
    prompt = {str(i): {"class_type": "LoadImage", "inputs": {"image": name}}
              for i, name in enumerate(["clipspace/cat.png", "../secret.png", "missing.png", "clipspace/cat.png"])}
    assert input_files(prompt, registry, folders) == [("clipspace/cat.png", b"cat")]


# ----------------------------------------------------------------------------------------------- the actor
@pytest.fixture(scope="module")
def actor():
    from engine.backends.ray.actor import PromptActor

    worker = PromptActor("worker-t", {"node_packages": ["nodes", "tests.support.ray_nodes"], "threads": None})
    yield worker
    worker.close()
    assert not worker.private_dir.exists()


def run_messages(actor, prompt_id, prompt, inputs=()):
    batches = list(actor.run(prompt_id, prompt, None, {}, list(inputs)))  # None: every output node
    return batches, [message for batch in batches for message in batch]


def test_actor_streams_batched_events_then_its_result(actor):
    from engine.core.executor import Executor

    batches, messages = run_messages(actor, "chain", chain_graph(100))
    assert messages[0] == ("started", "worker-t") and messages[-1][0] == "result"
    events = [(m[1], m[2].get("node")) for m in messages if m[0] == "event"]
    local = []
    Executor(actor.runtime.registry, folders=actor.runtime.folders).execute(
        chain_graph(100), "chain", on_event=lambda event, data: local.append((event, data.get("node"))))
    assert events == local  # the same events, in the same order, as an in-process run
    assert len(batches) < len(events) / 4  # a burst of events travels in a few yields
    assert messages[-1][1].status == "success"


def test_actor_sends_each_output_file_once_and_keeps_its_name_taken(actor, tmp_path):
    _, first = run_messages(actor, "img1", image_graph("ship"))
    kinds = [m[0] if m[0] != "event" else m[1] for m in first]
    assert kinds.index("file") == kinds.index("executed") - 1  # the bytes come before the event naming them
    _, key, data = next(m for m in first if m[0] == "file")
    assert key == ("output", "", "ship_00001_.png") and Image.open(io.BytesIO(data)).size == (8, 8)
    local = actor.runtime.folders.output_dir / "ship_00001_.png"
    assert local.exists() and local.stat().st_size == 0
    _, again = run_messages(actor, "img2", image_graph("ship"))  # cached: the output node names the same file
    assert ("file_ref", key) in again and not any(m[0] == "file" for m in again)
    _, other = run_messages(actor, "img3", image_graph("ship", color=0x00FF00))
    assert next(m for m in other if m[0] == "file")[1] == ("output", "", "ship_00002_.png")


def test_actor_writes_inputs_inside_its_folders_and_refuses_escapes(actor):
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(png, format="PNG")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "up/blue.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "blue"}}}
    _, messages = run_messages(actor, "load", prompt, [("up/blue.png", png.getvalue())])
    assert messages[-1][1].status == "success"
    assert (actor.runtime.folders.input_dir / "up" / "blue.png").read_bytes() == png.getvalue()
    with pytest.raises(UnsafePathError):
        run_messages(actor, "escape", prompt, [("../outside.png", b"x")])
    assert not (actor.runtime.folders.base_dir / "outside.png").exists()
    assert actor.info()["running"] is None  # a refused run leaves the worker free


def test_actor_streams_previews_as_encoded_images(actor):
    prompt = {"1": {"class_type": "TestPreview", "inputs": {"value": 5}},
              "2": {"class_type": "TestShowInt", "inputs": {"value": ["1", 0]}}}
    _, messages = run_messages(actor, "preview", prompt)
    kind, image_bytes, image_format, node_id = next(m for m in messages if m[0] == "preview")
    assert (image_format, node_id) == ("JPEG", "1")
    assert Image.open(io.BytesIO(image_bytes)).size == (16, 8)
    assert actor.info()["running"] is None  # the run's preview callback ended with it


def test_a_worker_on_shared_storage_writes_straight_into_the_servers_folders(tmp_path):
    from engine.backends.ray.actor import PromptActor

    server = FolderPaths(tmp_path / "server")
    folders = {"base_dir": str(server.base_dir), "input_dir": str(server.input_dir),
               "output_dir": str(server.output_dir), "temp_dir": str(server.temp_dir)}
    worker = PromptActor("worker-s", {"node_packages": ["nodes"], "shared": True, "folders": folders})
    _, messages = run_messages(worker, "shared", image_graph("direct"))
    assert not any(m[0] in ("file", "file_ref") for m in messages)
    assert Image.open(server.output_dir / "direct_00001_.png").size == (8, 8)
    assert worker.private_dir is None


def test_actor_interrupt_before_the_prompt_starts_still_stops_it(actor):
    assert actor.interrupt("early") is False  # not running yet: remembered
    _, messages = run_messages(actor, "early", sleep_graph(1, seconds=5.0, steps=50))
    assert messages[-1][1].status == "interrupted"
    assert not [m for m in messages if m[:2] == ("event", "progress")]  # stopped before the node's first step
    assert actor.interrupt(None) is False  # nothing running


# ----------------------------------------------------------------------------------------------- the dispatcher
class _LostRun:
    def __init__(self, started: bool) -> None:
        self.started = started

    def wait(self):
        raise WorkerLost("worker-1", self.started, "ActorDiedError: killed")


def _dispatcher(tmp_path):
    from engine.server.events import EventHub
    from engine.server.worker import PromptWorker, _Sink

    queue = PromptQueue(tmp_path / "queue.sqlite3")
    worker = PromptWorker(make_runtime(tmp_path), queue, EventHub(lambda: {}))

    def lose(started: bool, interrupted: bool = False) -> QueueItem:
        taken = queue.get(timeout=1)
        sink = _Sink(worker, taken)
        worker._runs[taken.prompt_id] = sink
        if interrupted:
            worker.interrupt(taken.prompt_id)
        worker._finish(taken, sink, _LostRun(started))
        return taken

    return queue, lose


def test_a_lost_worker_reruns_the_prompt_once_marked_resumed_then_gives_up(tmp_path):
    queue, lose = _dispatcher(tmp_path)
    queue.put("p", sleep_graph(), {"client_id": "c"}, ["2"])
    lose(started=False)  # lost before it started: queued again as it was
    assert queue.job("p")["status"] == "queued" and not queue.job("p")["resumed"]
    lose(started=True)  # lost mid-run: run again, first, marked resumed
    job = queue.job("p")
    assert job["status"] == "queued" and job["resumed"] and job["queue_position"] == 0
    lose(started=True)  # lost again: recorded, never retried a second time
    job = queue.job("p")
    assert job["status"] == "error" and job["error"]["type"] == "worker_lost_twice"
    entry = queue.history(prompt_id="p")["p"]
    assert entry["status"]["resumed"] is True and entry["status"]["messages"][0][0] == "execution_error"


def test_an_interrupted_prompt_whose_worker_dies_is_not_rerun(tmp_path):
    queue, lose = _dispatcher(tmp_path)
    queue.put("q", sleep_graph(), {}, ["2"])
    lose(started=True, interrupted=True)
    assert queue.job("q")["status"] == "interrupted" and queue.job("q")["error"]["type"] == "worker_lost"


# ----------------------------------------------------------------------------------------------- optional extra
def test_ray_is_imported_only_when_asked_for():
    script = ("import sys, tempfile\n"
              "from engine.server.app import create_app\n"
              "from engine.backends.runtime import Runtime\n"
              "import engine.backends.ray, engine.backends.ray.actor, engine.backends.ray.scheduler\n"
              "import engine.backends.ray.files, engine.backends.factory\n"
              "create_app(Runtime.create(base_dir=tempfile.mkdtemp(), models=None))\n"
              "assert 'ray' not in sys.modules, 'ray was imported'\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


def test_serve_options_need_the_ray_executor():
    import argparse

    from engine.server import add_serve_arguments, build_config

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    for argv in (["--workers", "2"], ["--ray-address", "10.0.0.1:6379"], ["--ray-shared-storage"]):
        with pytest.raises(SystemExit, match="needs --executor ray"):
            build_config(parser.parse_args(argv))
    with pytest.raises(SystemExit, match="at least 1"):
        build_config(parser.parse_args(["--executor", "ray", "--workers", "0"]))
    config = build_config(parser.parse_args(["--executor", "ray", "--workers", "3", "--ray-address", "auto"]))
    assert (config.executor, config.workers, config.ray_address) == ("ray", 3, "auto")
