"""What the Ray backend is told: where the cluster is, how many workers, what each worker may use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from engine.core.registry import EXTRA_PACKAGES_ENV, node_packages

# Passed on to the workers: they must stay offline and quiet exactly like the server.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "TOKENIZERS_PARALLELISM",
                 "HF_HOME", EXTRA_PACKAGES_ENV)


def default_node_packages() -> list[str]:
    return node_packages()


@dataclass
class RayOptions:
    address: str | None = None  # an existing cluster ("HOST:PORT" or "auto"); None: a local instance
    workers: int | None = None  # None: one per GPU in the cluster, or 1 without GPUs
    worker_cpus: float = 1.0  # CPUs Ray reserves per worker (0 lets workers share cores, as tests do)
    threads_per_worker: int | None = 1  # torch compute threads in each worker (None: torch's default)
    shared_storage: bool = False  # workers use the server's input/output/temp folders directly
    node_packages: list[str] = field(default_factory=default_node_packages)
    object_store_mb: int = 256  # local instance only; images and events are small
    log_to_driver: bool = True  # worker output (warnings, tracebacks) shown in the server's log
    start_timeout_s: float | None = None  # None: a worker waits for a free device (a machine joining later)
    memory: Any = None  # engine.memory.budget.MemorySettings each worker's memory manager uses (None: defaults)

    @classmethod
    def from_server_config(cls, config: Any) -> "RayOptions":
        return cls(address=config.ray_address, workers=config.workers,
                   shared_storage=bool(getattr(config, "ray_shared_storage", False)),
                   memory=getattr(config, "memory", None))

    def worker_env(self) -> dict[str, str]:
        return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
