"""The core pack: image and mask nodes that need no model, image files in and out, primitive values.

Node declarations import no torch; the functions load it when they run, so discovering the pack and
serving `/object_info` stay fast.
"""

from . import image_io, image_ops, image_stitch, mask_ops, primitives

NODES = [*image_io.NODES, *image_ops.NODES, *image_stitch.NODES, *mask_ops.NODES, *primitives.NODES]
