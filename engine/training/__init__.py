"""Training loops used by nodes and the CLI (`segmentation/`: Mask2Former fine-tuning).
"""
