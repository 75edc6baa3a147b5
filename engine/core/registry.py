"""The node registry: discovers node packs under a package (by default `nodes`) and holds their schemas.

A pack is a subpackage exposing `NODES`, a sequence of `NodeSchema`, and optionally `GRAPH_VALIDATORS`:
checks that need the whole prompt (e.g. a FLUX.1 model wired into a FLUX.2 graph), each a callable
`(prompt, folders) -> {node_id: message}`. A pack that fails to import is
reported in `failed` and skipped; the rest keep working. Each schema is checked when registered
(`engine.core.schema_checks`): a declaration that does not fit its function fails its pack the same way.
The registry is an object passed to whoever needs it, never a module-level global.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import traceback
from typing import Any, Callable, Iterable, Iterator

from engine.core.schema import NodeSchema
from engine.core.schema_checks import check_schema

# Importable packages of node packs to load besides `nodes` (comma-separated), e.g. test packs.
EXTRA_PACKAGES_ENV = "FLUXGRAPH_EXTRA_NODE_PACKAGES"


def node_packages(environ: Any = None) -> list[str]:
    """`nodes` and the packages named in FLUXGRAPH_EXTRA_NODE_PACKAGES, in that order."""
    value = (environ if environ is not None else os.environ).get(EXTRA_PACKAGES_ENV, "")
    return ["nodes", *(p.strip() for p in value.split(",") if p.strip())]

log = logging.getLogger(__name__)


class NodeRegistry:
    def __init__(self, schemas: Iterable[NodeSchema] = ()) -> None:
        self._schemas: dict[str, NodeSchema] = {}
        self.failed: dict[str, str] = {}  # pack module -> error text
        self.graph_validators: list[Callable[[dict, Any], dict[str, str]]] = []
        for schema in schemas:
            self.register(schema)

    def register(self, schema: NodeSchema) -> None:
        """Add a node; raises `SchemaError` when its declaration is wrong."""
        check_schema(schema)
        if schema.name in self._schemas and self._schemas[schema.name] is not schema:
            log.warning("node %s registered twice; the later declaration wins", schema.name)
        self._schemas[schema.name] = schema

    def discover(self, package: str = "nodes") -> "NodeRegistry":
        root = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            module_name = f"{package}.{info.name}"
            try:
                module = importlib.import_module(module_name)
                for schema in getattr(module, "NODES", ()):
                    self.register(schema)
                self.graph_validators.extend(getattr(module, "GRAPH_VALIDATORS", ()))
            except Exception as exc:  # noqa: BLE001 - a broken pack must not take the others down
                self.failed[module_name] = f"{type(exc).__name__}: {exc}"
                log.error("node pack %s failed to import and is skipped:\n%s", module_name,
                          traceback.format_exc())
        return self

    def get(self, name: str) -> NodeSchema | None:
        return self._schemas.get(name)

    def __getitem__(self, name: str) -> NodeSchema:
        return self._schemas[name]

    def __contains__(self, name: object) -> bool:
        return name in self._schemas

    def __iter__(self) -> Iterator[NodeSchema]:
        return iter(self._schemas.values())

    def __len__(self) -> int:
        return len(self._schemas)

    def names(self) -> list[str]:
        return list(self._schemas)

    def object_info(self, choice_env: Any = None) -> dict[str, Any]:
        return {name: schema.object_info(choice_env) for name, schema in self._schemas.items()}


def default_registry() -> NodeRegistry:
    return NodeRegistry().discover("nodes")
