"""Checkpoints of a training run, laid out so that Mask2FormerLoader lists and loads them unchanged:

    models/segmentation/RUN/
      best/   config.json, model.safetensors, preprocessor_config.json, metrics.json   (highest val mIoU)
      last/   the same + training_state.pt (optimizer, schedule, random states, position in the data)
      history.json   one entry per evaluated epoch

Folders are written to a temporary sibling and renamed into place, so an interruption never leaves a
half-written checkpoint. `training_state.pt` holds tensors and plain values only (loaded with
`weights_only=True`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from engine.core.atomic_files import write_text_atomic
from engine.models.segmentation.mask2former import Preprocessing

STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"


class CheckpointError(ValueError):
    """A resume target that is not a training checkpoint, or one made for other settings."""


def preprocessor_config(prep: Preprocessing, num_labels: int) -> dict[str, Any]:
    """transformers' Mask2FormerImageProcessor settings (what the loader reads back as Preprocessing)."""
    return {"image_processor_type": "Mask2FormerImageProcessor", "do_resize": True,
            "size": {"shortest_edge": prep.shortest_edge, "longest_edge": prep.longest_edge},
            "size_divisor": prep.size_divisor, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(prep.image_mean), "image_std": list(prep.image_std),
            "ignore_index": 255, "num_labels": num_labels}


def save_model_folder(folder: Path, model: Any, prep: Preprocessing, *, metrics: dict[str, Any] | None = None,
                      state: dict[str, Any] | None = None) -> Path:
    """Write a loadable transformers folder atomically (temporary sibling, then rename)."""
    import torch

    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.saving")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    with _quiet_transformers():
        model.save_pretrained(staging, safe_serialization=True)
    (staging / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(prep, model.config.num_labels),
                                                                 indent=2))
    if metrics is not None:
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if state is not None:
        torch.save(state, staging / STATE_FILE)
    retired = folder.with_name(f".{folder.name}.old")
    if retired.exists():
        shutil.rmtree(retired)
    if folder.exists():
        os.replace(folder, retired)
    os.replace(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Writing model shards" bar in the middle of the training bar."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_text_atomic(Path(run_dir) / HISTORY_FILE, json.dumps(history, indent=2))


def resume_folder(target: str | Path) -> Path:
    """The last/ folder of a run (accepts the run folder itself or its last/)."""
    path = Path(target)
    for candidate in (path, path / "last"):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise CheckpointError(f"cannot resume from {path}: no {STATE_FILE} there or in {path / 'last'} (resume from "
                          f"a run folder written by a training run, or its last/ folder)")


def load_training_state(folder: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign pickles
        raise CheckpointError(f"{folder / STATE_FILE} is not a readable training state: {exc}") from exc
    for key in ("config", "epoch", "batch_group", "step", "optimizer", "scheduler", "rng", "classes"):
        if key not in state:
            raise CheckpointError(f"{folder / STATE_FILE} lacks '{key}': not a fluxgraph training state")
    return state
