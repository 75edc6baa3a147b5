"""Connecting to Ray: a local instance bound to loopback, or an existing cluster given by address.

A local instance:
- listens on 127.0.0.1 only. Ray binds its servers to the machine's network address unless it believes it
  runs on a laptop; the switch for that (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) is read when Ray is
  imported, so it is set before the import and Ray's constant is set too in case something imported Ray
  first. The node address is checked after start-up, and a non-loopback one stops the instance.
- is started from the server's own process, so every Ray process is in the server's process group (Ray's
  dashboard and runtime-env agents outlive a SIGKILLed driver; stopping the group, `kill -- -PGID`, ends
  them). fluxgraph never runs `ray stop`, which kills Ray processes by name, other people's included.
- gives its workers the normal scheduling priority (Ray nices them to 15 by default), as the in-process
  executor has: on a shared machine the workers would otherwise lose to every other process.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backends.ray.options import RayOptions

log = logging.getLogger(__name__)
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
PROJECT_ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "fluxgraph"


class RayUnavailableError(RuntimeError):
    """Ray is not installed or the cluster cannot be reached."""


@dataclass
class RayConnection:
    address: str
    local: bool  # a local instance this process started (and stops)
    owned: bool  # whether close() shuts Ray down

    def close(self) -> None:
        if self.owned:
            import ray  # noqa: PLC0415 - Ray is the optional extra

            ray.shutdown()


def import_ray(local: bool) -> Any:
    if local:
        os.environ[LOOPBACK_SWITCH] = "0"
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        import ray  # noqa: PLC0415 - the optional extra, after the environment switch above
        from ray._private import ray_constants  # noqa: PLC0415 - as above
    except ImportError as exc:
        raise RayUnavailableError("--executor ray needs Ray: pip install 'fluxgraph[ray]' "
                                  f"(import failed: {exc})") from exc
    if local:
        ray_constants.ENABLE_RAY_CLUSTER = False  # effective even if Ray was imported before the switch
    return ray


def connect(options: RayOptions) -> RayConnection:
    """Join the cluster at `options.address`, or start a local instance; reuse one this process already has."""
    local = options.address is None
    ray = import_ray(local)
    if ray.is_initialized():  # e.g. a test session's instance
        return RayConnection(address=ray.get_runtime_context().gcs_address, local=local, owned=False)
    env = options.worker_env()
    if local:
        # Workers import this project from its folder; on other machines it must be installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
        try:
            ray.init(num_cpus=_local_cpus(options), include_dashboard=False, namespace=NAMESPACE,
                     object_store_memory=options.object_store_mb * 1024 * 1024, log_to_driver=options.log_to_driver,
                     runtime_env={"env_vars": env}, configure_logging=False)
        except Exception as exc:
            raise RayUnavailableError(f"could not start a local Ray instance: {exc}") from exc
        node_ip = ray.util.get_node_ip_address()
        if node_ip not in ("127.0.0.1", "::1", "localhost"):
            ray.shutdown()
            raise RayUnavailableError(f"the local Ray instance bound {node_ip}, not loopback; refusing to serve "
                                      f"workers on the network without --ray-address")
        address = ray.get_runtime_context().gcs_address
        log.info("local Ray instance on %s (process group %d)", address, os.getpgid(0))
        return RayConnection(address=address, local=True, owned=True)
    _check_reachable(options.address)
    try:
        ray.init(address=options.address, namespace=NAMESPACE, log_to_driver=options.log_to_driver,
                 runtime_env={"env_vars": env}, configure_logging=False)
    except Exception as exc:
        raise RayUnavailableError(f"could not join the Ray cluster at {options.address!r}: {exc}") from exc
    log.info("joined the Ray cluster at %s", options.address)
    return RayConnection(address=options.address, local=False, owned=True)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a wrong address: Ray itself retries an unreachable one for minutes."""
    if address == "auto":
        return  # Ray finds the address of the cluster started on this machine
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(f"--ray-address {address!r} is not HOST:PORT (or 'auto')")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailableError(f"cannot reach the Ray cluster at {address}: {exc} (is `ray start --head` "
                                  f"running there?)") from None


def _local_cpus(options: RayOptions) -> int:
    """Enough CPU slots for the workers asked for, and at least the machine's cores."""
    wanted = (options.workers or 1) * options.worker_cpus
    return max(os.cpu_count() or 1, int(wanted + 0.999))


def cluster_gpus(ray: Any) -> int:
    return int(ray.cluster_resources().get("GPU", 0))

