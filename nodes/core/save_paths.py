"""Where SaveImage / PreviewImage put their files: `filename_prefix` -> folder, base name and counter.

ComfyUI's naming: `<subfolder>/<name>_<counter:05>_.png`, counter = 1 + the highest counter already used by
files of the same base name in that folder. The prefix may hold `%width%`, `%height%`, `%year%`, `%month%`,
`%day%`, `%hour%`, `%minute%`, `%second%`, and `%batch_num%` (the image's index in the batch). A prefix with a
control character (CR, LF...) or a bidi override is refused (validation refuses literal ones already).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.core.folders import UnsafePathError, contained_path
from engine.core.prompt_paths import unsafe_character


@dataclass
class SaveTarget:
    folder: Path  # absolute folder the files go to
    subfolder: str  # relative to the output/temp root, '/'-separated ("" for the root)
    base_name: str  # file name before `_<counter>_`
    counter: int  # first free counter

    def filename(self, counter: int, batch_number: int = 0) -> str:
        name = self.base_name.replace("%batch_num%", str(batch_number))
        return f"{name}_{counter:05}_.png"


def expand_prefix(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """Substitute the %...% variables that ComfyUI's SaveImage understands."""
    now = now or time.localtime()
    values = {
        "width": str(width), "height": str(height), "year": str(now.tm_year),
        "month": f"{now.tm_mon:02}", "day": f"{now.tm_mday:02}", "hour": f"{now.tm_hour:02}",
        "minute": f"{now.tm_min:02}", "second": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)
    return prefix


def save_target(root: Path, filename_prefix: str, width: int, height: int) -> SaveTarget:
    """Resolve a prefix inside `root`, refusing one that would leave it (`..`, absolute paths, symlinks)."""
    prefix = expand_prefix(filename_prefix, width, height).replace("\\", "/")
    if not prefix.strip("/ "):
        raise ValueError(f"filename_prefix {filename_prefix!r} has no file name part")
    where = unsafe_character(prefix)  # a linked prefix (e.g. from a string node) was not validated beforehand
    if where is not None:
        raise ValueError(f"filename_prefix {filename_prefix[:100]!r} contains a control or bidi-override character "
                         f"({where}); file names cannot hold line breaks or other control characters")
    relative = PurePosixPath(prefix)
    base_name = relative.name
    subfolder = relative.parent.as_posix()
    subfolder = "" if subfolder == "." else subfolder
    try:
        folder = contained_path(root, subfolder) if subfolder else root.resolve()
        contained_path(folder, base_name)
    except UnsafePathError as exc:
        raise UnsafePathError(f"filename_prefix {filename_prefix!r} would save outside the "
                              f"{root.name} folder: {exc}") from exc
    return SaveTarget(folder=folder, subfolder=subfolder, base_name=base_name,
                      counter=next_counter(folder, base_name))


def next_counter(folder: Path, base_name: str) -> int:
    """1 + the highest `<base_name>_<digits>` counter among the folder's files (1 when there are none)."""
    if not folder.is_dir():
        return 1
    pattern = re.compile(re.escape(os.path.normcase(base_name)) + r"_(\d+)(?:_|$)")
    highest = 0
    for entry in os.scandir(folder):
        match = pattern.match(os.path.normcase(entry.name))
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1
