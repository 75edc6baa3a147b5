"""LoRA files for FLUX.1 and FLUX.2: key layouts -> low-rank deltas, patches applied and restored exactly.
"""
