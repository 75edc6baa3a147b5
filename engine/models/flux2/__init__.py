"""FLUX.2 (klein 4B / 9B, dev): transformer, Qwen3 / Mistral text encoders and tokenizers, VAE, keys, variants.
"""
