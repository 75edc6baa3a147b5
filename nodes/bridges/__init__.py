"""Bridges between model families: segmentation masks made ready for FLUX inpainting."""

from . import inpaint

NODES = [*inpaint.NODES]
