"""Node packs. Each subpackage exposes `NODES`, a sequence of `engine.core.schema.NodeSchema`.

Packs: `core` (images, masks, primitives, IO), `flux`, `segmentation`, `bridges`.
"""
