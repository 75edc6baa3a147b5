"""Model loading, one package per family: find files under models/, detect their layout, build
diffusers/transformers modules offline. Never a hub.

- `common/`: safetensors reading, strict building, detection, handles, configs, key conversion;
- `flux1/`, `flux2/`, `redux/`, `lora/`, `segmentation/`: one family each (see docs/models.md).

Nothing here imports torch at import time. The tiny test/demo models are in `engine.zoo`.
"""
