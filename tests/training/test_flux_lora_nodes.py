"""TrainFluxLora / LoadFluxLoraDataset in a queued graph (FLUX.2 klein from the tiny zoo's files) and
`fluxgraph train lora --config FILE` (FLUX.1 dev): progress, events, interrupt and resume, files."""

from __future__ import annotations

import json

import pytest

from engine.backends.runtime import Runtime
from engine.cli import main
from engine.core.context import RESUMED_KEY, InterruptFlag
from engine.core.registry import NodeRegistry
from engine.memory.manager import MemoryManager
from tests.support.flux_lora import training_base, write_shapes_dataset


def _graph(**train_changes) -> dict:
    train = {"model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "dataset": ["4", 0], "rank": 4, "alpha": 4.0,
             "target_modules": "attention", "learning_rate": 0.001, "steps": 4, "batch_size": 1,
             "grad_accumulation": 1, "seed": 1, "timestep_sampling": "shift", "guidance": 1.0,
             "gradient_checkpointing": True, "save_every": 2, "sample_every": 2, "sample_prompt": "a red circle",
             "output_name": "klein-shapes"}
    train.update(train_changes)
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux2-klein-4b-tiny.safetensors",
                                                      "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen3-4b-tiny.safetensors", "type": "flux2"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "flux2-vae-tiny.safetensors"}},
        "4": {"class_type": "LoadFluxLoraDataset", "inputs": {"folder": "shapes", "resolution": 64,
                                                              "center_crop": True}},
        "5": {"class_type": "TrainFluxLora", "inputs": train},
    }


def test_train_node_in_a_graph_reports_progress_interrupts_and_resumes(tmp_path):
    base = training_base(tmp_path / "base")
    write_shapes_dataset(base / "input" / "shapes", count=2)
    runtime = Runtime.create(base, registry=NodeRegistry().discover("nodes"), models=MemoryManager(device="cpu"))
    info = runtime.registry["TrainFluxLora"].object_info(runtime.folders)
    assert "shapes" in runtime.registry["LoadFluxLoraDataset"].object_info(runtime.folders)["input"]["required"][
        "folder"][0]
    assert info["output"] == ["MODEL", "STRING"]

    events: list = []
    interrupt = InterruptFlag()

    def on_event(kind, data):
        events.append((kind, data))
        if kind == "fluxgraph.training" and data["step"] == 3:
            interrupt.set()

    checked = runtime.validate(_graph())
    assert checked.ok, checked.node_errors
    result = runtime.executor.execute(checked.prompt, "train-1", on_event=on_event, interrupt=interrupt)
    assert result.status == "interrupted"
    steps = [d["step"] for k, d in events if k == "fluxgraph.training"]
    assert steps == [1, 2, 3]
    assert any(k == "progress" and d["value"] == 3 and d["max"] == 4 for k, d in events)
    loras = base / "models" / "loras"
    assert (loras / "klein-shapes-step000002.safetensors").is_file()
    assert (base / "models" / "training" / "flux_lora" / "klein-shapes" / "samples" / "step000002.png").is_file()
    (sample,) = [d for k, d in events if k == "fluxgraph.training_sample"]
    assert sample["image"] == {"filename": "step000002.png", "subfolder": "fluxgraph_training/klein-shapes",
                               "type": "temp"}  # what /view takes; no absolute server path in the message
    assert (runtime.folders.temp_dir / sample["image"]["subfolder"] / "step000002.png").is_file()
    assert sample["path"] == "models/training/flux_lora/klein-shapes/samples/step000002.png"

    again = runtime.validate(_graph())  # an interrupted run without resume: refused with the reason
    refused = runtime.executor.execute(again.prompt, "train-2")
    assert refused.status == "error" and "resume" in json.dumps(refused.errors)

    events.clear()
    # The queue runs a prompt again after a crash (marked resumed): the run continues without resume being on.
    rerun = runtime.validate(_graph())
    done = runtime.executor.execute(rerun.prompt, "train-3", on_event=lambda k, d: events.append((k, d)),
                                    extra_data={RESUMED_KEY: True})
    assert done.status == "success", done.errors
    start = next(d for k, d in events if k == "fluxgraph.training_start")
    assert start["start_step"] == 3 and start["family"] == "flux2"
    assert [d["step"] for k, d in events if k == "fluxgraph.training"] == [4]
    assert (loras / "klein-shapes.safetensors").is_file()
    assert "klein-shapes.safetensors" in runtime.folders.list_models("loras")


def _write_config(path, base, **changes) -> None:
    config = {"data_dir": "data", "output_name": "dev-shapes", "unet": "flux1-dev-tiny.safetensors",
              "clip": ["t5xxl-tiny.safetensors", "clip_l-tiny.safetensors"], "vae": "ae-tiny.safetensors",
              "rank": 4, "alpha": 4, "steps": 3, "learning_rate": 0.001, "resolution": 64, "guidance": 3.5,
              "target_modules": "attention+mlp", "timestep_sampling": "sigmoid", "base_dir": str(base)}
    config.update(changes)
    path.write_text(json.dumps(config))


def test_cli_trains_from_a_config_file(tmp_path, capsys):
    base = training_base(tmp_path / "base")
    write_shapes_dataset(tmp_path / "data", count=2)
    config = tmp_path / "lora.json"
    _write_config(config, base)
    assert main(["train", "lora", "--config", str(config), "--device", "cpu", "--max-steps", "2"]) == 0
    out, err = capsys.readouterr()
    loras = base / "models" / "loras"
    assert "saved:" in out and "dev-shapes-step000002.safetensors" in out
    assert "stopped at step 2 of 3" in err and "--resume" in err
    assert (loras / "dev-shapes-step000002.safetensors").is_file()
    assert not (loras / "dev-shapes.safetensors").exists()  # the plain name means finished
    assert main(["train", "lora", "--config", str(config)]) != 0  # an unfinished run: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "lora", "--config", str(config), "--device", "cpu", "--resume"]) == 0
    assert (base / "models" / "loras" / "dev-shapes.safetensors").is_file()
    assert main(["train", "lora", "--config", str(config), "--device", "cpu"]) == 0  # finished: trained anew
    capsys.readouterr()
    assert main(["train", "lora", "--config", str(config), "--resume", "--steps", "4", "--device", "cpu"]) != 0
    assert "steps" in capsys.readouterr().err  # other settings than the checkpoint's: refused, named


def test_cli_config_errors_are_clear(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("data_dir: data\nrank: 0\n")
    assert main(["train", "lora", "--config", str(config)]) != 0
    assert "rank" in capsys.readouterr().err
    config.write_text("data_dir: data\nlearning_rat: 0.1\n")
    assert main(["train", "lora", "--config", str(config)]) != 0
    assert "learning_rat" in capsys.readouterr().err


@pytest.mark.gpu
def test_bf16_training_on_cuda(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    base = training_base(tmp_path / "base")
    write_shapes_dataset(tmp_path / "data", count=2)
    config = tmp_path / "lora.json"
    _write_config(config, base, precision="bf16", gradient_checkpointing=True)
    assert main(["train", "lora", "--config", str(config), "--device", "cuda"]) == 0


def test_shipped_training_workflow_trains_then_samples_with_the_lora(tmp_path):
    from pathlib import Path

    from engine.cli.workflow_files import copy_example_inputs

    base = training_base(tmp_path / "base")
    copied = copy_example_inputs(base / "input")
    assert "lora_shapes/shape0.png" in copied and "lora_shapes/shape0.txt" in copied
    workflow = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "flux_lora_train.json").read_text())
    workflow["5"]["inputs"]["steps"] = 4
    runtime = Runtime.create(base, registry=NodeRegistry().discover("nodes"), models=MemoryManager(device="cpu"))
    checked = runtime.validate(workflow)
    assert checked.ok, checked.node_errors
    result = runtime.executor.execute(checked.prompt, "shipped")
    assert result.status == "success", result.errors
    assert (base / "models" / "loras" / "shapes-lora.safetensors").is_file()
    assert result.outputs["12"]["images"] and result.outputs["5"]["text"][0].startswith("trained shapes-lora")
