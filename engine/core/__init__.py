"""The engine's core: node schemas, value types, registry, prompt graph, validation, executor, cache,
node context and folder containment.

Stdlib only (networkx and yaml load lazily), no torch, no node pack, no server: `fluxgraph --help`,
validation and `/object_info` stay fast. Checked by import-linter (see pyproject.toml).
"""
