"""The segmentation pack: Mask2Former loading and semantic segmentation, class masks, mask morphology, dense-CRF
refinement and a coloured preview; fine-tuning (TrainSegmenter) and export to ONNX / TorchScript / pt2
(ExportSegmenter), whose files the loader runs too.

Declarations import no torch or numpy (the model modules they name load those only when used); node functions
load the heavy helpers when they run, so discovering the pack and serving `/object_info` stay fast.
"""

from . import export, loader, morphology, preview, refine, segment, select, training

NODES = [*loader.NODES, *segment.NODES, *select.NODES, *morphology.NODES, *refine.NODES, *preview.NODES,
         *training.NODES, *export.NODES]
