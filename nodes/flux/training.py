"""LoadFluxLoraDataset + TrainFluxLora: train a FLUX.1 / FLUX.2 LoRA inside a workflow, queued like any prompt.

LoadFluxLoraDataset picks a folder under input/ holding images with captions (same-named .txt files or a
metadata.jsonl). TrainFluxLora trains a LoRA on the MODEL / CLIP / VAE it is given (engine/training/flux_lora),
writes models/loras/<output_name>.safetensors (and -stepN files every `save_every` steps), and outputs the model
with the trained LoRA applied plus the file's name for LoraLoaderModelOnly. It reports each optimizer step as
progress (the websocket's `progress` message) and sends `fluxgraph.training_start`, `fluxgraph.training` (step,
loss, learning rate) and `fluxgraph.training_sample` (sample image path) messages. An interrupt stops after the
current step with the resume state saved; queue the node again with `resume` on to continue exactly there.
Nothing heavy is imported until a node runs.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from engine.core.file_digest import folder_fingerprint
from engine.core.folders import contained_path
from engine.core.schema import Boolean, Combo, Float, Int, NodeResult, Output, Socket, String, node
from engine.core.types import CLIP, FLUX_LORA_DATASET, MODEL, STRING, VAE
from engine.training.flux_lora.config import (IMAGE_FORMATS, OPTIMIZERS, PRECISIONS, TARGET_PRESETS,
                                              TIMESTEP_SAMPLINGS, LoraTrainConfig)

SEARCH_DEPTH = 2  # input/NAME and input/GROUP/NAME


def dataset_choices(folders: Any) -> list[str]:
    """Folders under input/ (two levels deep) holding images and a metadata.jsonl or at least one .txt."""
    if folders is None or not folders.input_dir.is_dir():
        return []
    found, frontier = [], [folders.input_dir]
    for _ in range(SEARCH_DEPTH):
        next_frontier = []
        for parent in frontier:
            for child in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
                files = [p for p in child.iterdir() if p.is_file()]
                has_images = any(p.suffix.lower() in IMAGE_FORMATS for p in files)
                has_captions = any(p.suffix == ".txt" or p.name == "metadata.jsonl" for p in files)
                if has_images and has_captions:
                    found.append(child.relative_to(folders.input_dir).as_posix())
                next_frontier.append(child)
        frontier = next_frontier
    return sorted(found)


def _dataset_changed(folder: str, folders: Any = None, **_: Any) -> str:
    """The folder's files (names, sizes, times) are part of the cache key: editing the dataset retrains."""
    if folders is None:
        return folder
    return folder_fingerprint(contained_path(folders.input_dir, folder))


@node("LoadFluxLoraDataset", category="training/flux", display_name="Load FLUX LoRA Dataset",
      inputs=[Combo("folder", dataset_choices,
                    tooltip="A folder under input/ with images and captions: same-named .txt files or a "
                            "metadata.jsonl ({\"file_name\": ..., \"text\": ...} per line)"),
              Int("resolution", 512, min=64, max=2048, step=16,
                  tooltip="Training images are fitted to aspect-ratio buckets of about resolution^2 pixels"),
              Boolean("center_crop", True, tooltip="Cover the bucket and crop the centre (off: resize to it)")],
      outputs=[Output(FLUX_LORA_DATASET, name="dataset")], is_changed=_dataset_changed,
      description="A folder of captioned images for TrainFluxLora; checks every image has a caption.")
def load_flux_lora_dataset(ctx: Any, folder: str, resolution: int, center_crop: bool):
    from engine.training.flux_lora.dataset import scan_dataset  # noqa: PLC0415 - loads numpy and PIL

    path = contained_path(ctx.folders.input_dir, folder)
    samples = scan_dataset(path)
    return ({"data_dir": str(path), "resolution": int(resolution), "center_crop": bool(center_crop),
             "images": len(samples), "name": folder},)


@node("TrainFluxLora", category="training/flux", display_name="Train FLUX LoRA",
      inputs=[Socket("model", MODEL), Socket("clip", CLIP), Socket("vae", VAE), Socket("dataset", FLUX_LORA_DATASET),
              Int("rank", 16, min=1, max=256), Float("alpha", 16.0, min=0.01, max=1024.0, step=0.01),
              Combo("target_modules", list(TARGET_PRESETS), default="attention",
                    tooltip="attention: every block's attention projections; attention+mlp: and the MLPs; "
                            "all-linear: every linear layer of the blocks"),
              Float("learning_rate", 0.0001, min=0.0000001, max=0.5, step=0.00001, round=False),
              Int("steps", 1000, min=1, max=1000000), Int("batch_size", 1, min=1, max=64),
              Int("grad_accumulation", 1, min=1, max=256, tooltip="Batches per optimizer step"),
              Int("seed", 0, min=0, max=0xFFFFFFFF, extra={"control_after_generate": False}),
              Combo("timestep_sampling", list(TIMESTEP_SAMPLINGS), default="uniform",
                    tooltip="uniform; sigmoid (logit-normal, favours middle noise levels); shift (FLUX's "
                            "resolution-dependent shift, the noise levels the sampler visits)"),
              Float("guidance", 1.0, min=0.0, max=100.0, step=0.1,
                    tooltip="Embedded guidance while training (FLUX.1 dev, FLUX.2 dev; klein ignores it)"),
              Boolean("gradient_checkpointing", False, tooltip="Recompute activations: less memory, slower"),
              Int("save_every", 0, min=0, max=1000000, tooltip="Also save <name>-stepN.safetensors every N steps"),
              Int("sample_every", 0, min=0, max=1000000, tooltip="Sample the prompt every N steps (0: at the end)"),
              String("sample_prompt", "", multiline=True, tooltip="Empty: no samples"),
              String("output_name", "flux-lora", tooltip="models/loras/<output_name>.safetensors"),
              Boolean("resume", False, optional=True,
                      tooltip="Continue the interrupted run of output_name from its saved state (same settings)"),
              Combo("precision", list(PRECISIONS), default="auto", optional=True,
                    tooltip="auto: bf16 autocast on a GPU, fp32 on the CPU"),
              Combo("optimizer", list(OPTIMIZERS), default="auto", optional=True,
                    tooltip="auto: 8-bit AdamW on a GPU where bitsandbytes is installed, else AdamW"),
              Int("warmup_steps", 0, min=0, max=100000, optional=True)],
      outputs=[Output(MODEL, name="model"), Output(STRING, name="lora_name")], output_node=True,
      description="Trains a LoRA on the transformer (peft adapters, flow-matching loss as diffusers' training "
                  "scripts) with cached latents and caption embeddings; outputs the model with the LoRA applied "
                  "and the LoRA file's name.")
def train_flux_lora(ctx: Any, model: Any, clip: Any, vae: Any, dataset: dict, rank: int, alpha: float,
                    target_modules: str, learning_rate: float, steps: int, batch_size: int, grad_accumulation: int,
                    seed: int, timestep_sampling: str, guidance: float, gradient_checkpointing: bool,
                    save_every: int, sample_every: int, sample_prompt: str, output_name: str, resume: bool = False,
                    precision: str = "auto", optimizer: str = "auto", warmup_steps: int = 0):
    from engine.models.lora.loader import apply_lora  # noqa: PLC0415 - loads torch
    from engine.training.flux_lora.trainer import TrainEvents, train_lora  # noqa: PLC0415 - loads torch

    folders = ctx.folders
    if not isinstance(dataset, dict) or "data_dir" not in dataset:
        raise ValueError("TrainFluxLora: dataset must come from LoadFluxLoraDataset")
    name = output_name.strip()
    loras = folders.model_dirs("loras")[0]
    state_dir = contained_path(folders.models_dir, f"training/flux_lora/{name}") if name else Path()
    config = LoraTrainConfig(
        data_dir=dataset["data_dir"], output_name=name, output_dir=str(loras), state_dir=str(state_dir),
        resolution=dataset["resolution"], center_crop=dataset["center_crop"], rank=int(rank), alpha=float(alpha),
        target_modules=target_modules, learning_rate=float(learning_rate), steps=int(steps),
        batch_size=int(batch_size), grad_accumulation=int(grad_accumulation), seed=int(seed),
        timestep_sampling=timestep_sampling, guidance=float(guidance),
        gradient_checkpointing=bool(gradient_checkpointing), save_every=int(save_every),
        sample_every=int(sample_every), sample_prompt=sample_prompt.strip(), precision=precision,
        optimizer=optimizer, warmup_steps=int(warmup_steps), resume=bool(resume)).check()
    from engine.training.flux_lora.checkpoint import unfinished_step  # noqa: PLC0415 - loads torch

    stopped_at = None if resume else unfinished_step(state_dir)
    if stopped_at is not None and getattr(ctx, "resumed", False):
        # the queue runs this prompt again after a crash: continue the run it started (the settings are the same)
        config, stopped_at = dataclasses.replace(config, resume=True), None
    if stopped_at is not None:
        raise ValueError(f"TrainFluxLora: the run {name!r} was interrupted at step {stopped_at}; turn resume on to "
                         "continue it, or choose another output_name (a finished run is trained anew)")
    if ctx.models is not None and hasattr(ctx.models, "offload_all"):
        ctx.models.offload_all()  # training wants the whole device

    def on_step(report: Any) -> None:
        ctx.send("fluxgraph.training", {"step": report.step, "total_steps": report.total_steps,
                                        "loss": report.loss, "learning_rate": report.learning_rate,
                                        "seconds": report.seconds})
        ctx.progress(report.step, report.total_steps)  # raises Interrupted when the user interrupts

    def on_sample(step: int, image: Any, path: Path) -> None:
        ctx.send("fluxgraph.training_sample", {"step": step, **_viewable_sample(folders, name, path)})

    events = TrainEvents(on_start=lambda info: ctx.send("fluxgraph.training_start", info), on_step=on_step,
                         on_sample=on_sample, check_interrupt=ctx.check_interrupt)
    result = train_lora(config, model, clip, vae, ctx.models, events)
    lora_name = result.lora_path.relative_to(loras).as_posix()
    trained = apply_lora(result.lora_path, model, None, 1.0, 0.0).model
    lines = [f"trained {lora_name}: {result.steps} steps, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"]
    lines += [f"sample: {path}" for path in result.samples]
    return NodeResult(outputs=(trained, lora_name), ui={"text": lines})


def _viewable_sample(folders: Any, run_name: str, path: Path) -> dict[str, Any]:
    """A sample as a client can fetch it: copied into temp/ and named as /view takes it ({filename, subfolder,
    type}, like an `executed` image), plus its place under models/ (never the server's absolute path)."""
    subfolder = f"fluxgraph_training/{run_name}"
    target = contained_path(folders.temp_dir, f"{subfolder}/{path.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    try:
        stored = path.resolve().relative_to(folders.models_dir).as_posix()
    except ValueError:
        stored = path.name
    return {"image": {"filename": path.name, "subfolder": subfolder, "type": "temp"}, "path": f"models/{stored}"}


NODES = [load_flux_lora_dataset, train_flux_lora]
