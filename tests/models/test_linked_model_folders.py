"""Model folders as people keep them: files linked into another folder and into a Hugging Face cache.

The links the machine's owner placed inside models/ are followed (listing, validation and loading agree);
names in requests still cannot climb out of their folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from engine.backends.runtime import Runtime
from engine.core.registry import NodeRegistry
from engine.memory.manager import MemoryManager
from tests.support.flux import capture_image, run_prompt, txt2img_prompt, zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def _hf_snapshot(hub: Path, repo: str, files: list[Path]) -> Path:
    """A Hugging-Face-cache-shaped tree: models--org--name/snapshots/<hash>/<file> -> ../../blobs/<sha>."""
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / "3de623fc3c33e44ffbe2bad470d0f45bccf2eb21"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for source in files:
        sha = hashlib.sha256(source.name.encode()).hexdigest()
        shutil.copyfile(source, root / "blobs" / sha)
        os.symlink(f"../../blobs/{sha}", snapshot / source.name)
    return snapshot


@pytest.fixture(scope="module")
def linked_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ holds only links: diffusion models and checkpoints into a HF cache, the rest into the zoo."""
    zoo = zoo_base() / "models"
    tmp = tmp_path_factory.mktemp("linked")
    hub = tmp / "huggingface" / "hub"
    models = tmp / "base" / "models"
    for key in ("diffusion_models", "checkpoints"):
        snapshot = _hf_snapshot(hub, f"org/{key}", sorted((zoo / key).glob("*.safetensors")))
        (models / key).mkdir(parents=True)
        for linked in snapshot.iterdir():
            os.symlink(linked, models / key / linked.name)
    for key in ("text_encoders", "loras"):  # file links into another folder
        (models / key).mkdir(parents=True)
        for source in (zoo / key).iterdir():
            os.symlink(source, models / key / source.name)
    for key in ("vae", "tokenizers"):  # a linked folder
        os.symlink(zoo / key, models / key)
    return tmp / "base"


@pytest.fixture(scope="module")
def runtime(linked_base: Path) -> Runtime:
    registry = NodeRegistry().discover("nodes")
    registry.register(capture_image)
    return Runtime.create(linked_base, registry=registry, models=MemoryManager(device="cpu"))


def _small(workflow: dict) -> dict:
    for node in workflow.values():
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    return workflow


@pytest.mark.parametrize("name", ["flux_dev_txt2img.json", "flux_schnell_txt2img.json", "flux_lora.json"])
def test_shipped_workflows_run_from_linked_models(runtime: Runtime, name: str) -> None:
    workflow = _small(json.loads((WORKFLOWS / name).read_text()))
    checked = runtime.validate(workflow)
    assert checked.ok, (checked.error, checked.node_errors)
    result = runtime.executor.execute(checked.prompt, prompt_id=name)
    assert result.status == "success", result.errors
    saved = [image for output in result.outputs.values() for image in output.get("images", [])]
    assert saved and all((runtime.folders.output_dir / s["subfolder"] / s["filename"]).is_file() for s in saved)


def test_checkpoint_and_clip_loaders_agree_with_their_listing(runtime: Runtime) -> None:
    """The two loaders the issue saw fail: validation said ok (or refused) and the run refused the link."""
    folders = runtime.folders
    assert "flux1-schnell-tiny-aio.safetensors" in folders.list_models("checkpoints", include_dirs=True)
    assert "clip_l-tiny.safetensors" in folders.list_models("text_encoders", include_dirs=True)
    graph = txt2img_prompt("schnell", guidance=None, steps=2)
    graph["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-schnell-tiny-aio.safetensors"}}
    graph["6"]["inputs"]["clip"] = ["1", 1]
    graph["8"]["inputs"]["vae"] = ["1", 2]
    del graph["2"], graph["3"]
    image, _ = run_prompt(runtime, graph)
    assert image.shape[1:3] == (64, 64)
    graph = txt2img_prompt("dev", steps=2)
    graph["2"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l-tiny.safetensors",
                                                             "clip_name2": "t5xxl-tiny.safetensors", "type": "flux"}}
    run_prompt(runtime, graph)


def test_request_names_that_climb_out_are_still_refused(runtime: Runtime, linked_base: Path) -> None:
    outside = (linked_base.parent / "huggingface").as_posix()
    for bad in ["../../huggingface/hub/x.safetensors", f"{outside}/x.safetensors", "a\x00b.safetensors"]:
        graph = txt2img_prompt("dev")
        graph["1"]["inputs"]["unet_name"] = bad
        checked = runtime.validate(graph)
        assert not checked.ok and "1" in checked.node_errors, bad
        graph = txt2img_prompt("dev")
        graph["2"]["inputs"]["clip_name1"] = bad
        checked = runtime.validate(graph)
        assert not checked.ok and "2" in checked.node_errors, bad
