"""FLUX Redux: the SigLIP vision tower (CLIP_VISION) and the Redux image embedder (STYLE_MODEL).
"""
