"""Writing the tiny zoo's folders, the same way for every family: tokenizers and diffusers pipeline folders.

Each returns the files it wrote, sorted, for the zoo's manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def save_tokenizer(tokenizer: Any, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return files_under(folder)


def save_pipeline(make_pipeline: Callable[[], Any], folder: Path) -> list[Path]:
    """A diffusers pipeline folder (model_index.json, one subfolder per part), safetensors weights only,
    without transformers' "Writing model shards" progress bar for each tiny part."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        make_pipeline().save_pretrained(str(folder), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return files_under(folder)
