"""The ComfyUI-compatible HTTP + websocket server (`fluxgraph serve`).

Only `add_serve_arguments` and `serve` live here; aiohttp and the application load only when `serve` runs, so
that importing this package (the CLI's parser) stays light. Extra node packages (for example test-only packs)
can be loaded with the environment variable FLUXGRAPH_EXTRA_NODE_PACKAGES=pkg_a,pkg_b (importable package names).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from engine.backends.factory import make_backend
from engine.backends.runtime import Runtime
from engine.backends.worker_common import PREVIEW_METHODS
from engine.core.extra_model_paths import ExtraModelPathsError
from engine.core.registry import node_packages
from engine.memory.budget import add_memory_arguments, settings_from_args
from engine.memory.manager import MemoryManager
from engine.server.config import MB, ServerConfig
from engine.server.frontends import BUILTIN_PREFIX, FRONT_ENDS, choose_front_end, describe


def add_extra_model_paths_argument(parser: argparse.ArgumentParser, several_per_flag: bool = True) -> None:
    """ComfyUI's `--extra-model-paths-config PATH [PATH ...]` (repeatable), read after BASE/extra_model_paths.yaml.
    Beside a positional argument (`fluxgraph run WORKFLOW`) each flag takes one file, so that it cannot
    swallow the workflow."""
    parser.add_argument("--extra-model-paths-config", nargs="+" if several_per_flag else None, action="append",
                        default=[], metavar="PATH",
                        help="also read this extra_model_paths.yaml file (repeatable; read after the one in the "
                             "base folder, if any)")


def extra_model_path_files(args: argparse.Namespace) -> list[str]:
    """The --extra-model-paths-config files in the order given (the flag's lists flattened)."""
    groups = getattr(args, "extra_model_paths_config", None) or []
    return [path for group in groups for path in ([group] if isinstance(group, str) else group)]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8188, help="port (default 8188)")
    parser.add_argument("--listen", nargs="?", const="0.0.0.0", default=None, metavar="ADDRESSES",
                        help="listen beyond loopback: comma-separated addresses (default 0.0.0.0 when given bare)")
    parser.add_argument("--auth-token", default=os.environ.get("FLUXGRAPH_AUTH_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (or ?token=TOKEN) on every route "
                             "(default: $FLUXGRAPH_AUTH_TOKEN)")
    parser.add_argument("--enable-cors-header", nargs="?", const="*", default=None, metavar="ORIGIN",
                        help="send CORS headers allowing ORIGIN (default '*' when given bare)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also accept this Host header name (repeatable; loopback names are always accepted)")
    parser.add_argument("--base-dir", default=None,
                        help="folder holding models/, input/, output/, temp/, user/ (default: current folder)")
    add_extra_model_paths_argument(parser)
    parser.add_argument("--max-upload-size", type=float, default=50, metavar="MB",
                        help="largest accepted upload or request body in MB (default 50)")
    parser.add_argument("--max-history", type=int, default=10_000, metavar="N",
                        help="finished prompts kept in history (default 10000)")
    parser.add_argument("--executor", choices=("inprocess", "ray"), default="inprocess",
                        help="where prompts run: in this process (default) or on Ray workers, one per device "
                             "(needs the 'ray' extra; see docs/scaleout.md)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="with --executor ray: join this Ray cluster (HOST:PORT, or 'auto') instead of "
                             "starting a local instance on loopback")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="with --executor ray: number of workers (default: one per GPU, or 1 without GPUs)")
    parser.add_argument("--ray-shared-storage", action="store_true",
                        help="with --executor ray: workers read inputs and write outputs directly in this "
                             "server's folders (mounted at the same path on every machine) instead of "
                             "receiving and sending the files")
    parser.add_argument("--front-end", choices=FRONT_ENDS, default=None,
                        help="the editor served at /: 'comfyui' (ComfyUI's official frontend, the optional "
                             "'frontend' extra) or 'builtin' (fluxgraph's own, always also at "
                             f"{BUILTIN_PREFIX}/); default: comfyui when installed, else builtin")
    parser.add_argument("--front-end-root", default=None, metavar="DIR",
                        help="serve this folder (a built ComfyUI-style frontend holding index.html) at / instead")
    parser.add_argument("--preview-method", choices=PREVIEW_METHODS, default="auto",
                        help="live sampling previews: auto (taesd when a taef1/taef2 decoder is in "
                             "models/vae_approx, else latent2rgb; the default), latent2rgb, taesd or none")
    parser.add_argument("--preview-size", type=int, default=512, metavar="PIXELS",
                        help="largest side of a live preview in pixels (default 512)")
    add_memory_arguments(parser)


def build_config(args: argparse.Namespace) -> ServerConfig:
    if args.max_upload_size <= 0:
        raise SystemExit("--max-upload-size must be positive")
    if args.max_history < 1:
        raise SystemExit("--max-history must be at least 1")
    executor = getattr(args, "executor", "inprocess")
    if executor != "ray":
        for flag, value in (("--ray-address", getattr(args, "ray_address", None)),
                            ("--workers", getattr(args, "workers", None)),
                            ("--ray-shared-storage", getattr(args, "ray_shared_storage", False))):
            if value:
                raise SystemExit(f"{flag} needs --executor ray")
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if not 16 <= getattr(args, "preview_size", 512) <= 8192:
        raise SystemExit("--preview-size must be between 16 and 8192")
    listen = [a.strip() for a in args.listen.split(",") if a.strip()] if args.listen else []
    try:
        memory = settings_from_args(args)
        frontend_dir = choose_front_end(getattr(args, "front_end", None), getattr(args, "front_end_root", None))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return ServerConfig(host=args.host, port=args.port, listen=listen, auth_token=args.auth_token or None,
                        cors_origin=args.enable_cors_header, allowed_hosts=list(args.allow_host),
                        max_upload_bytes=int(args.max_upload_size * MB), max_history=args.max_history,
                        memory=memory, executor=executor, ray_address=getattr(args, "ray_address", None),
                        workers=getattr(args, "workers", None),
                        ray_shared_storage=bool(getattr(args, "ray_shared_storage", False)),
                        extra_model_paths=extra_model_path_files(args), frontend_dir=frontend_dir,
                        preview_method=getattr(args, "preview_method", "auto"),
                        preview_size=getattr(args, "preview_size", 512))


def build_runtime(base_dir: str | None, memory: Any = None, extra_model_paths: list[str] | None = None) -> Runtime:
    """The runtime, with a memory manager built from `memory` (MemorySettings; default settings if None).
    Building the manager imports no torch: it loads on first model use. A bad extra_model_paths file stops
    start-up with its own message."""
    models = MemoryManager.from_settings(memory) if memory is not None else MemoryManager()
    try:
        runtime = Runtime.create(base_dir=base_dir, models=models, extra_model_paths=extra_model_paths)
    except ExtraModelPathsError as exc:
        raise SystemExit(f"fluxgraph serve: {exc}") from None
    for package in node_packages()[1:]:  # `nodes` itself is discovered by Runtime.create
        runtime.registry.discover(package)
    return runtime


def serve(args: argparse.Namespace) -> None:
    from aiohttp import web  # noqa: PLC0415 - aiohttp loads only when serving (a few hundred ms)

    from engine.server.app import create_app  # noqa: PLC0415 - the application imports aiohttp

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = build_config(args)
    if config.exposed and not config.auth_token:
        logging.getLogger("engine.server").warning(
            "listening beyond loopback without --auth-token: anyone on the network can queue prompts")
    runtime = build_runtime(args.base_dir, config.memory, config.extra_model_paths)
    logging.getLogger("engine.memory.manager").info("memory: %s", runtime.models.settings.describe())
    logging.getLogger("engine.server").info("%s", describe(config))
    backend = None
    if config.executor != "inprocess":  # connect now: a bad --ray-address stops here with a clear message
        backend = make_backend(runtime, config)
        try:
            backend.start()
        except (RuntimeError, ValueError) as exc:
            raise SystemExit(f"fluxgraph serve: {exc}") from None
    from engine.queue.store import QueueLockedError  # noqa: PLC0415 - sqlite3 loads with the queue

    try:
        app = create_app(runtime, config, backend=backend)
    except QueueLockedError as exc:  # a second server on the same base folder: say so, no traceback
        raise SystemExit(f"fluxgraph serve: {exc}; stop the other server, or give this one its own --base-dir") \
            from None
    hosts = config.bind_addresses
    shown = ", ".join(f"http://{'[' + h + ']' if ':' in h else h}:{config.port}" for h in hosts)
    print(f"fluxgraph serving on {shown}", flush=True)
    web.run_app(app, host=hosts if len(hosts) > 1 else hosts[0], port=config.port, print=None,
                access_log=None, handle_signals=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fluxgraph serve", description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    serve(parser.parse_args(argv))


__all__ = ["add_extra_model_paths_argument", "add_serve_arguments", "extra_model_path_files", "serve", "main"]
