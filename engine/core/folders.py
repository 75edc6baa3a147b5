"""Where files live: ComfyUI's folder layout (models/<key>, input, output, temp, user) and containment.

Every user-supplied path (a /view query, an upload, a LoadImage name in a prompt, a filename_prefix) is
resolved through `FolderPaths` so that nothing escapes its root: `..`, absolute paths and symlinks pointing
outside are refused with `UnsafePathError`.

Model names are checked on the name only (`check_relative_name`: no `..`, not absolute, no drive, no NUL):
the links the machine's owner placed inside a models folder (a shared models folder, files linked into the
Hugging Face cache whose snapshots point into `../../blobs`) are followed wherever they lead, as ComfyUI
does, so that listing, validation and loading agree. A request can only name paths under the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
# GGUF files (quantized transformers and text encoders): listed by the GGUF loader nodes (nodes/flux/gguf.py),
# which offer them from diffusion_models/ + unet/ and text_encoders/ + clip/ as the community GGUF pack does.
GGUF_EXTENSIONS = frozenset({".gguf"})

# folder key -> default subfolders of models/ (the first is where new files go)
DEFAULT_MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "diffusers": ("diffusers",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "upscale_models": ("upscale_models",),
    "tokenizers": ("tokenizers",),
    "segmentation": ("segmentation",),
    "depth": ("depth",),  # Depth Anything V2 (DepthAnythingV2Preprocessor)
}
LEGACY_KEYS = {"unet": "diffusion_models", "clip": "text_encoders"}
# A diffusers pipeline folder of models/diffusers (one holding model_index.json) is offered to the loaders of
# these keys as "diffusers/<folder>" when it has the listed subfolder (listing with `pipelines=True`).
PIPELINE_PREFIX = "diffusers/"
PIPELINE_PARTS = {"diffusion_models": "transformer", "text_encoders": "text_encoder", "vae": "vae"}
FILE_TYPES = ("input", "output", "temp")


class UnsafePathError(ValueError):
    """A user-supplied path that would leave its root folder."""


def check_relative_name(relative: str | os.PathLike[str]) -> Path:
    """The name as a relative path, refusing what climbs out lexically: NUL, absolute paths, drives, `..`."""
    text = os.fspath(relative)
    if "\x00" in text:
        raise UnsafePathError("path contains a NUL byte")
    candidate = Path(text)
    if candidate.is_absolute() or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        raise UnsafePathError(f"absolute paths are not allowed: {text!r}")
    if any(part == ".." for part in Path(text.replace("\\", "/")).parts):
        raise UnsafePathError(f"'..' is not allowed in paths: {text!r}")
    return candidate


def contained_path(root: Path, relative: str | os.PathLike[str]) -> Path:
    """`root / relative`, refusing anything that resolves outside `root` (symlinks included)."""
    text = os.fspath(relative)
    candidate = check_relative_name(text)
    root_resolved = root.resolve()
    full = (root_resolved / candidate).resolve()
    if full != root_resolved and root_resolved not in full.parents:
        raise UnsafePathError(f"path escapes its folder: {text!r}")
    return full


def split_annotation(name: str, default_type: str = "input") -> tuple[str, str]:
    """'x.png [output]' -> ('x.png', 'output'), as ComfyUI's LoadImage and /view accept."""
    for file_type in FILE_TYPES:
        suffix = f" [{file_type}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], file_type
    return name, default_type


@dataclass
class FolderPaths:
    base_dir: Path
    models_dir: Path | None = None
    input_dir: Path | None = None
    output_dir: Path | None = None
    temp_dir: Path | None = None
    user_dir: Path | None = None
    extra_model_dirs: dict[str, list[Path]] = field(default_factory=dict)
    # extra folders marked `is_default: true` in extra_model_paths.yaml: searched before models/
    priority_model_dirs: dict[str, list[Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir).resolve()
        self.models_dir = Path(self.models_dir or self.base_dir / "models").resolve()
        self.input_dir = Path(self.input_dir or self.base_dir / "input").resolve()
        self.output_dir = Path(self.output_dir or self.base_dir / "output").resolve()
        self.temp_dir = Path(self.temp_dir or self.base_dir / "temp").resolve()
        self.user_dir = Path(self.user_dir or self.base_dir / "user").resolve()

    # ----- input / output / temp
    def directory(self, file_type: str) -> Path:
        if file_type not in FILE_TYPES:
            raise UnsafePathError(f"unknown folder type {file_type!r}; expected one of {list(FILE_TYPES)}")
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}[file_type]

    def resolve_file(self, name: str, file_type: str = "input", subfolder: str = "") -> Path:
        """A file under input/output/temp, refusing escapes. `name` may carry a ' [output]' annotation."""
        name, file_type = split_annotation(name, file_type)
        root = self.directory(file_type)
        folder = contained_path(root, subfolder) if subfolder else root.resolve()
        return contained_path(folder, name)

    def list_input_files(self, extensions: Iterable[str] | None = None) -> list[str]:
        exts = {e.lower() for e in extensions} if extensions else None
        if not self.input_dir.is_dir():
            return []
        names = [p.name for p in self.input_dir.iterdir()
                 if p.is_file() and (exts is None or p.suffix.lower() in exts)]
        return sorted(names)

    # ----- models
    def model_dirs(self, key: str) -> list[Path]:
        key = LEGACY_KEYS.get(key, key)
        dirs = [self.models_dir / sub for sub in DEFAULT_MODEL_FOLDERS.get(key, (key,))]
        return list(self.priority_model_dirs.get(key, [])) + dirs + list(self.extra_model_dirs.get(key, []))

    def add_model_dir(self, key: str, path: str | os.PathLike[str], first: bool = False) -> None:
        key = LEGACY_KEYS.get(key, key)
        if first:
            self.priority_model_dirs.setdefault(key, []).insert(0, Path(path))
        else:
            self.extra_model_dirs.setdefault(key, []).append(Path(path))

    def list_pipelines(self) -> list[str]:
        """The diffusers pipeline folders (holding `model_index.json`) of the `diffusers` key, as ComfyUI's
        DiffusersLoader lists them."""
        names = self.list_models("diffusers", extensions=(), include_dirs=True)
        return [name for name in names if (self.model_path("diffusers", name) / "model_index.json").is_file()]

    def list_models(self, key: str, extensions: Iterable[str] = MODEL_EXTENSIONS,
                    include_dirs: bool = False, pipelines: bool = False) -> list[str]:
        """Files (relative paths, recursive, following symlinks) under every directory of a folder key.

        With `include_dirs`, directories holding a `config.json` or `model_index.json` (diffusers and
        transformers folders) are listed too. With `pipelines`, the pipeline folders of models/diffusers that
        hold this key's part are listed as "diffusers/<folder>" (after the key's own names).
        """
        key = LEGACY_KEYS.get(key, key)
        if pipelines and key in PIPELINE_PARTS:
            own = self.list_models(key, extensions, include_dirs)
            return own + [PIPELINE_PREFIX + name for name in self.list_pipelines()
                          if (self.model_path("diffusers", name) / PIPELINE_PARTS[key]).is_dir()
                          and PIPELINE_PREFIX + name not in own]
        exts = {e.lower() for e in extensions}
        found: set[str] = set()
        for root in self.model_dirs(key):
            for dirpath, dirnames, filenames in walk_linked(root):
                rel_dir = Path(dirpath).relative_to(root)
                if include_dirs and rel_dir != Path(".") and (
                        "config.json" in filenames or "model_index.json" in filenames):
                    found.add(rel_dir.as_posix())
                    dirnames[:] = []
                    continue
                found.update((rel_dir / f).as_posix() for f in _model_file_names(dirpath, filenames, exts))
        return sorted(found)

    def model_files(self, key: str, extensions: Iterable[str] = MODEL_EXTENSIONS) -> list[tuple[int, str, Path]]:
        """(index of the root, relative name, path) of every model file under each of a key's directories,
        root by root in name order; a name under two roots is listed for each (the editor shows both)."""
        exts = {e.lower() for e in extensions}
        files = []
        for index, root in enumerate(self.model_dirs(key)):
            for dirpath, _dirnames, filenames in walk_linked(root):
                for filename in sorted(_model_file_names(dirpath, filenames, exts)):
                    path = Path(dirpath) / filename
                    files.append((index, path.relative_to(root).as_posix(), path))
        return files

    def model_path(self, key: str, name: str) -> Path:
        """A model name from a prompt -> its path under the first of the key's directories that holds it.

        The name is checked lexically (`check_relative_name`); symlinks inside the folder are followed even
        when they point elsewhere (module docstring). The path is returned unresolved, so that a file linked
        to a content-addressed blob keeps its own name (variant hints such as "kontext" read it)."""
        relative = check_relative_name(name)
        if not str(name).strip():
            raise FileNotFoundError(f"no model name given for folder '{key}'")
        for root in self.model_dirs(key):
            if not root.is_dir():
                continue
            path = Path(root) / relative
            if path.exists():
                return path
        key = LEGACY_KEYS.get(key, key)
        if key in PIPELINE_PARTS and relative.as_posix().startswith(PIPELINE_PREFIX):
            return self.model_path("diffusers", relative.as_posix()[len(PIPELINE_PREFIX):])
        searched = ", ".join(str(d) for d in self.model_dirs(key))
        raise FileNotFoundError(f"model {name!r} not found in folder '{key}' (searched: {searched})")


def walk_linked(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk following symlinks (shared model folders are links), in name order, entering a folder that
    links back to one of its own ancestors only once (a symlink loop ends instead of recursing forever)."""
    if not root.is_dir():
        return
    real_of: dict[str, str] = {}  # walked folder -> its real path
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real_of[dirpath] = real = os.path.realpath(dirpath)
        parent, ancestors = os.path.dirname(dirpath), []
        while parent in real_of:
            ancestors.append(real_of[parent])
            parent = os.path.dirname(parent)
        if real in ancestors:
            dirnames[:] = []
            continue
        dirnames.sort()
        yield dirpath, dirnames, filenames


def _model_file_names(dirpath: str, filenames: list[str], exts: set[str]) -> list[str]:
    """The files of one folder with a model extension, except dangling links (nothing to load behind them)."""
    return [f for f in filenames if Path(f).suffix.lower() in exts and os.path.exists(os.path.join(dirpath, f))]
