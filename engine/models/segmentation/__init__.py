"""Mask2Former segmenters (SEGMENTER): loading, the inference pipeline, export and exported files.
"""
