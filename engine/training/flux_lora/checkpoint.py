"""Where a LoRA training run writes, and its resume state.

    models/loras/<name>.safetensors              the LoRA at the end (LoraLoader lists it)
    models/loras/<name>-step<N>.safetensors      every `save_every` steps
    <state_dir>/training_state.pt               LoRA tensors, optimizer, schedule, step, settings (resume)
    <state_dir>/samples/step<N>.png             sample images
    <state_dir>/cache/                          cached latents and text embeddings

Files are written to a temporary sibling and renamed into place, so an interruption never leaves a half-written
file. `training_state.pt` holds tensors and plain values only (loaded with `weights_only=True`). Heavy
libraries load inside the functions: the node pack imports this module's names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

STATE_FILE = "training_state.pt"
STATE_KEYS = ("config", "step", "lora", "optimizer", "scheduler", "losses")


class CheckpointError(ValueError):
    """A resume target that is not a LoRA training state, or one made for other settings."""


def lora_file(output_dir: str | Path, name: str, step: int | None = None) -> Path:
    suffix = f"-step{step:06d}" if step is not None else ""
    return Path(output_dir) / f"{name}{suffix}.safetensors"


def save_lora_file(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file  # noqa: PLC0415 - loads torch; the node pack imports this module

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path


def save_state(state_dir: str | Path, state: dict[str, Any]) -> Path:
    import torch  # noqa: PLC0415 - as above

    path = Path(state_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{STATE_FILE}.part")
    torch.save(state, partial)
    os.replace(partial, path)
    return path


def has_state(state_dir: str | Path) -> bool:
    return (Path(state_dir) / STATE_FILE).is_file()


def unfinished_step(state_dir: str | Path) -> int | None:
    """The step a run stopped at before its `steps` (interrupted, or `max_steps`); None: no state, or the run
    finished and may be trained anew."""
    if not has_state(state_dir):
        return None
    state = load_state(state_dir)
    step = int(state["step"])
    return step if step < int(state["config"].get("steps", 0)) else None


def load_state(state_dir: str | Path) -> dict[str, Any]:
    import torch  # noqa: PLC0415 - as above

    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"cannot resume: no {STATE_FILE} in {state_dir} (start the run without resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for corrupt or foreign pickles
        raise CheckpointError(f"{path} is not a readable training state: {exc}") from exc
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not a fluxgraph LoRA training state")
    return state
