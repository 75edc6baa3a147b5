"""Loading shared by every model family: safe safetensors reading, strict module building, file and
family detection, the handles on MODEL / CLIP / VAE edges, shipped configs, key-layout conversion.
"""
