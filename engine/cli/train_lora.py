"""`fluxgraph train lora --config FILE`: the TrainFluxLora node's training, from a shell.

    fluxgraph train lora --config lora.yaml [--resume] [--steps N] [--max-steps N] [--device cuda:1]
                         [--base-dir DIR] [--models-dir DIR]

The config (JSON or YAML) holds the settings of engine/training/flux_lora/config.py plus the models to train
on: `unet`, `clip` (one name for FLUX.2, two for FLUX.1) and `vae`, names under models/ as the loader nodes
take them. LoRA files go to models/loras/, the resume state and samples to models/training/flux_lora/NAME/.
A tqdm bar shows the steps and the loss; the first Ctrl-C saves the state at the last finished step and stops
(continue with --resume), a second stops at once. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from engine.cli.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, CliError
from engine.cli.stop_request import StopRequest
from engine.core.folders import FolderPaths
from engine.training.flux_lora.checkpoint import CheckpointError, unfinished_step
from engine.training.flux_lora.config import LoraConfigError, LoraTrainConfig


def add_train_lora_command(kinds: Any) -> None:
    """`train lora` on the `train` command's subcommands."""
    parser = kinds.add_parser("lora", help="train a FLUX.1 / FLUX.2 LoRA on a folder of captioned images")
    parser.add_argument("--config", required=True, help="JSON or YAML training settings (docs/training.md)")
    parser.add_argument("--resume", action="store_true", help="continue the run of the same output_name")
    parser.add_argument("--steps", type=int, help="override the config's steps")
    parser.add_argument("--max-steps", type=int, help="stop after N steps (the schedule still spans steps)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: the config's, else CUDA when available)")
    parser.add_argument("--base-dir", help="folder holding models/ (default: the config's base_dir, else current)")
    parser.add_argument("--models-dir", help="models folder (default: BASE/models)")
    parser.set_defaults(handler=cmd_train_lora)


def _settings(args: argparse.Namespace) -> tuple[LoraTrainConfig, FolderPaths]:
    try:
        config = LoraTrainConfig.from_file(args.config)
    except LoraConfigError as exc:
        raise CliError(str(exc), EXIT_INVALID) from exc
    base = Path(args.base_dir or config.base_dir or Path.cwd())
    folders = FolderPaths(base, models_dir=args.models_dir or config.models_dir or None)
    config_dir = Path(args.config).resolve().parent
    data = Path(config.data_dir)
    changes: dict[str, Any] = {
        "data_dir": str(data if data.is_absolute() else config_dir / data),  # relative to the config file
        "output_dir": config.output_dir or str(folders.model_dirs("loras")[0]),
        "state_dir": config.state_dir or str(folders.models_dir / "training" / "flux_lora" / config.output_name),
        "resume": bool(args.resume or config.resume)}
    for name in ("steps", "max_steps", "device"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    try:
        return dataclasses.replace(config, **changes).check(), folders
    except LoraConfigError as exc:
        raise CliError(str(exc), EXIT_INVALID) from exc


def cmd_train_lora(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.memory.manager import MemoryManager  # noqa: PLC0415 - the manager loads torch on first use
    from engine.models.common.safetensors_io import ModelFileError  # noqa: PLC0415 - model loading errors
    from engine.training.flux_lora.dataset import DatasetError  # noqa: PLC0415 - loads numpy and PIL
    from engine.training.flux_lora.models import load_training_models  # noqa: PLC0415 - loads torch
    try:
        from engine.training.flux_lora.trainer import TrainEvents, train_lora  # noqa: PLC0415 - loads torch, peft
    except ImportError as exc:  # peft is the `train` extra: the message says what to install
        raise CliError(str(exc), EXIT_INVALID) from exc

    config, folders = _settings(args)
    stopped_at = None if config.resume else unfinished_step(config.state_dir)
    if stopped_at is not None:
        raise CliError(f"the run {config.output_name!r} in {config.state_dir} was interrupted at step {stopped_at}; "
                       "add --resume to continue it, or choose another output_name (a finished run is trained anew)")
    memory = MemoryManager(device=config.device or None)
    try:
        model, clip, vae = load_training_models(config, folders)
    except (LoraConfigError, ModelFileError, FileNotFoundError) as exc:
        raise CliError(str(exc), EXIT_INVALID) from exc
    stop = StopRequest()
    bar: Any = None

    def on_start(info: dict[str, Any]) -> None:
        nonlocal bar
        print(f"training a {info['family']} LoRA on {info['images']} images ({info['target_modules']} modules, "
              f"{info['trainable_parameters']} parameters) on {info['device']}; cache: {info['latents_encoded']} "
              f"latents encoded, {info['reused']} reused", file=sys.stderr)
        bar = tqdm(total=info["steps"], initial=info["start_step"], unit="step", file=sys.stderr,
                   dynamic_ncols=True)

    def on_step(report: Any) -> None:
        bar.update(report.step - bar.n)
        bar.set_postfix(loss=f"{report.loss:.4f}", lr=f"{report.learning_rate:.2e}")
        stop.check()

    def on_sample(step: int, image: Any, path: Path) -> None:
        (bar.write if bar is not None else print)(f"sample at step {step}: {path}", file=sys.stderr)

    stop.install()
    try:
        result = train_lora(config, model, clip, vae, memory, TrainEvents(on_start=on_start, on_step=on_step,
                                                                          on_sample=on_sample,
                                                                          check_interrupt=stop.check))
    except DatasetError as exc:
        raise CliError(str(exc), EXIT_INVALID) from exc
    except (CheckpointError, LoraConfigError, ModelFileError) as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(f"interrupted; {config.state_dir} holds the last finished step. Continue with: fluxgraph train lora "
              f"--config {args.config} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop.restore()
    if bar is not None:
        bar.close()
    print(f"saved: {result.lora_path} ({result.steps} steps, last loss {result.losses[-1]:.4f})")
    if not result.finished:
        print(f"stopped at step {result.steps} of {config.steps} (max_steps); continue with: fluxgraph train lora "
              f"--config {args.config} --resume", file=sys.stderr)
    return EXIT_OK
