"""Helpers for the FLUX LoRA training tests: a generated dataset of coloured shapes with captions."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

CONCEPT = "a sks red circle"


def write_shapes_dataset(folder: Path, count: int = 4, size: int = 64, caption: str = CONCEPT,
                         metadata: bool = False) -> Path:
    """`count` red circles on white at shifting positions, captioned `caption` (.txt files or metadata.jsonl)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        offset = size // 8 + 4 * i
        ImageDraw.Draw(image).ellipse([offset, offset, offset + size // 2, offset + size // 2], fill=(220, 20, 20))
        image.save(folder / f"shape{i}.png")
        if metadata:
            rows.append(json.dumps({"file_name": f"shape{i}.png", "text": caption}))
        else:
            (folder / f"shape{i}.txt").write_text(caption)
    if metadata:
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def write_square(path: Path, size: int = 64) -> Path:
    image = Image.new("RGB", (size, size), (10, 10, 60))
    ImageDraw.Draw(image).rectangle([8, 8, 40, 40], fill=(40, 200, 250))
    image.save(path)
    return path


def training_base(root: Path) -> Path:
    """A base folder whose models/ links the tiny zoo's folders (own loras/, training/ and input/), so that
    training runs never write into the zoo other tests share."""
    from tests.support.flux import zoo_base

    (root / "models").mkdir(parents=True, exist_ok=True)
    for entry in (zoo_base() / "models").iterdir():
        if entry.name not in ("loras", "training"):
            (root / "models" / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (root / "models" / "loras").mkdir(exist_ok=True)
    return root
