"""Fine-tuning Mask2Former semantic segmenters on a folder dataset (issue 12).

One routine, reached from the `TrainSegmenter` node and from `fluxgraph train segmenter`:

- `config.TrainConfig`: every setting, checked before anything heavy runs (stdlib only);
- `dataset`: the folder layout (`images/`, `annotations/`, `train`/`val` splits, `classes.json`), validated
  up front with specific errors, and the samples;
- `augment`: the reference recipes' random scale, crop (category-area constraint) and horizontal flip;
- `model_setup`: base weights in, class head replaced when the class count differs, targets for the losses;
- `schedule`: linear warm-up then polynomial or cosine decay;
- `metrics`: mIoU and per-class IoU on the val split, through the inference pipeline the nodes use;
- `checkpoint`: best/ and last/ as transformers folders that Mask2FormerLoader lists, plus the training state;
- `trainer`: the loop (AdamW, gradient accumulation, mixed precision on GPU, exact resume).

Only `config` is imported by the node pack and the CLI at declaration time; the rest loads torch.
"""
