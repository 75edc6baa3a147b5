"""The composition root: builds folders, registry, cache, memory manager and executor once.

The CLI and the server call `Runtime.create`; nothing else holds global state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.core.cache import OutputCache
from engine.core.executor import Executor
from engine.core.extra_model_paths import load_extra_model_paths
from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from engine.core.validate import ValidationResult, validate_prompt
from engine.memory.manager import MemoryManager


@dataclass
class Runtime:
    folders: FolderPaths
    registry: NodeRegistry
    cache: OutputCache
    executor: Executor
    models: Any = None

    @classmethod
    def create(cls, base_dir: str | os.PathLike[str] | None = None, *, output_dir: str | None = None,
               input_dir: str | None = None, temp_dir: str | None = None, models_dir: str | None = None,
               registry: NodeRegistry | None = None, node_package: str = "nodes",
               cache_entries: int = 1000, cache_bytes: int | None = 8 << 30, models: Any = None,
               extra_model_paths: list[str] | None = None) -> "Runtime":
        base = Path(base_dir or os.environ.get("FLUXGRAPH_BASE_DIR") or Path.cwd())
        folders = FolderPaths(base, models_dir=models_dir, input_dir=input_dir, output_dir=output_dir,
                              temp_dir=temp_dir)
        for config in _extra_model_path_files(base, extra_model_paths):
            load_extra_model_paths(config, folders)
        if registry is None:
            registry = NodeRegistry().discover(node_package)
        if models is None:
            models = MemoryManager()  # default settings; constructing it imports no torch
        cache = OutputCache(max_entries=cache_entries, max_bytes=cache_bytes)
        executor = Executor(registry, cache=cache, folders=folders, models=models)
        return cls(folders=folders, registry=registry, cache=cache, executor=executor, models=models)

    def validate(self, prompt: Any, partial_targets: list[str] | None = None) -> ValidationResult:
        return validate_prompt(prompt, self.registry, self.folders, partial_targets)


def _extra_model_path_files(base: Path, explicit: list[str] | None) -> list[Path]:
    files = [base / "extra_model_paths.yaml"] if (base / "extra_model_paths.yaml").is_file() else []
    return files + [Path(p).expanduser() for p in explicit or []]
