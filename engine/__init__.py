"""fluxgraph engine: graph parsing, validation, execution, caching and serving.

The core modules (schema, graph, validate, executor, cache) import neither torch nor any node pack, so that
`fluxgraph --help`, validation and `/object_info` stay fast.
"""

__version__ = "0.1.0"
