"""A tiny random Mask2Former-Swin of the real architecture, for tests, demos and CI (no hub, no real weights).

`write_tiny_segmenter(models_dir)` writes it under `models/segmentation/` twice, in the two layouts the loader
accepts: a transformers folder (`config.json` + `model.safetensors` + `preprocessor_config.json`) and a single
safetensors file with a sidecar config of the same stem. Same classes as the full Swin-L ADE20K model (Swin
backbone, deformable pixel decoder, masked-attention decoder, 150 ADE20K classes), tiny widths.

Random weights barely react to their input, which would let a wrong pipeline pass a parity test; the
classifier, the mask embedding and the pixel decoder's output projection are scaled up so that class
probabilities are peaked and the label map follows the image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.models.common.configs import CONFIG_DIR

TINY_FOLDER_NAME = "tiny-mask2former-swin-ade"
TINY_FILE_NAME = "tiny-mask2former-swin-ade.safetensors"

# Processing settings written next to the tiny model: small images keep CPU tests fast.
TINY_PREPROCESSING = {"shortest_edge": 96, "longest_edge": 160, "size_divisor": 32}


def ade20k_labels() -> list[str]:
    return json.loads((CONFIG_DIR / "ade20k_labels.json").read_text())


def tiny_config_dict() -> dict[str, Any]:
    """Two blocks per Swin stage (window 4) so that shifted windows run on images of 96 px and more."""
    labels = ade20k_labels()
    return {
        "model_type": "mask2former",
        "architectures": ["Mask2FormerForUniversalSegmentation"],
        "backbone_config": {
            "model_type": "swin", "embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4],
            "window_size": 4, "image_size": 64, "patch_size": 4, "mlp_ratio": 2.0, "drop_path_rate": 0.0,
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
        "feature_size": 32, "mask_feature_size": 32, "hidden_dim": 32, "encoder_feedforward_dim": 64,
        "encoder_layers": 2, "decoder_layers": 3, "num_attention_heads": 2, "dim_feedforward": 64,
        "num_queries": 16,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def build_tiny_model(seed: int = 0):
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    config = Mask2FormerConfig(**tiny_config_dict())
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    _make_sensitive(model, seed)
    return model


def _make_sensitive(model, seed: int) -> None:
    """Scale the layers that decide classes and masks so that the tiny model's label map follows the image."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        classifier = model.class_predictor
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * 2.0)
        classifier.bias.zero_()
        mask_head = model.model.transformer_module.decoder.mask_predictor.mask_embedder
        for layer in mask_head.layers:
            for sub in layer.modules():
                if isinstance(sub, torch.nn.Linear):
                    sub.weight.mul_(4.0)
        projection = model.model.pixel_level_module.decoder.mask_projection
        projection.weight.mul_(8.0)


def write_tiny_segmenter(models_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny segmenter under `models_dir/segmentation/`; returns the folder and single-file paths."""
    from safetensors.torch import save_file

    target = Path(models_dir) / "segmentation"
    folder = target / TINY_FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(seed)
    model.save_pretrained(folder, safe_serialization=True)
    preprocessor = {"image_processor_type": "Mask2FormerImageProcessor", "do_resize": True,
                    "size": {"shortest_edge": TINY_PREPROCESSING["shortest_edge"],
                             "longest_edge": TINY_PREPROCESSING["longest_edge"]},
                    "size_divisor": TINY_PREPROCESSING["size_divisor"], "resample": 2, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
                    "image_std": [0.229, 0.224, 0.225], "ignore_index": 255, "num_labels": 150}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))

    single = target / TINY_FILE_NAME
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(single), metadata={"format": "pt", "architecture": "Mask2FormerForUniversalSegmentation"})
    # The sidecar config (same stem) tells the loader which architecture the file holds.
    single.with_suffix(".json").write_text((folder / "config.json").read_text())
    return {"folder": folder, "file": single}
