"""FLUX.1 (dev, schnell, Fill, Kontext): transformer, CLIP-L + T5-XXL text encoders, VAE, all-in-one
checkpoints, BFL <-> diffusers keys, and what each variant means for sampling.
"""
