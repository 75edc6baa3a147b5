"""Mask2Former semantic segmentation throughput: fluxgraph's pipeline next to the plain transformers pipeline
(Mask2FormerImageProcessorPil + Mask2FormerForUniversalSegmentation + post_process_semantic_segmentation),
measured in the same run on the same random weights. Prints one JSON document.

On a GPU: the full-size Swin-L ADE20K architecture (random weights) at 640x640, batch 1 and 8, fp32 and fp16;
ours also with torch.compile. On the CPU: the tiny zoo model and a scaled-down model of the real architecture
(fewer, narrower blocks; same code paths), fp32.

    python bench/segment.py [--iterations N] [--resolution 640] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.models.segmentation.mask2former import CONFIG_DIR, Preprocessing, Segmenter, ade20k_labels  # noqa: E402
from engine.models.segmentation.pipeline import segment  # noqa: E402

# A scaled-down Mask2Former-Swin: Swin-L's window (12), heads per width and 150 classes, far fewer channels.
SMALL_OVERRIDES = {
    "backbone_config": {"embed_dim": 48, "depths": [2, 2, 4, 2], "num_heads": [3, 6, 12, 24], "window_size": 12},
    "feature_size": 128, "mask_feature_size": 128, "hidden_dim": 128, "encoder_feedforward_dim": 512,
    "encoder_layers": 3, "decoder_layers": 4, "dim_feedforward": 512, "num_queries": 50,
}


def build_model(overrides: dict[str, Any] | None, seed: int = 0) -> Any:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    data = json.loads((CONFIG_DIR / "mask2former-swin-large-ade-semantic.json").read_text())
    for key, value in (overrides or {}).items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    torch.manual_seed(seed)
    return Mask2FormerForUniversalSegmentation(Mask2FormerConfig.from_dict(data)).eval()


def tiny_model() -> Any:
    from engine.models.segmentation.mask2former import load_segmenter
    from engine.zoo.segmentation import write_tiny_segmenter

    folder = write_tiny_segmenter(tempfile.mkdtemp(prefix="fluxgraph-bench-"))["folder"]
    return load_segmenter(folder).model


def test_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = (rng.random((size // 32 + 2, size // 32 + 2, 3)) * 255).astype(np.uint8)
        out.append(np.array(Image.fromarray(coarse).resize((size, size), Image.BILINEAR)))
    return out


def timed(function: Any, iterations: int, device: torch.device) -> tuple[float, Any]:
    result = function()  # warm-up (and compile)
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations, result


def reference_pipeline(model: Any, processor: Any, images: list[np.ndarray], device: Any, dtype: Any) -> Any:
    inputs = processor(images=images, return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(device=device, dtype=dtype)
    with torch.inference_mode():
        outputs = model(pixel_values=pixel_values, pixel_mask=inputs["pixel_mask"].to(device))
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[im.shape[:2] for im in images])
    return torch.stack([m.cpu() for m in maps])


def run_case(name: str, model: Any, resolution: int, batch: int, precision: str, device: torch.device,
             iterations: int, use_compile: bool) -> dict[str, Any]:
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    prep = Preprocessing(resolution, resolution * 4)
    segmenter = Segmenter(model=model, labels=tuple(ade20k_labels()), preprocessing=prep, config_name=name,
                          source="random weights")
    images = test_images(batch, resolution)
    tensor = torch.from_numpy(np.stack(images)).float() / 255.0
    processor = Mask2FormerImageProcessorPil(size={"shortest_edge": resolution, "longest_edge": resolution * 4},
                                             size_divisor=32)
    reference_model = segmenter.module_for(device, dtype)
    channels_last = device.type == "cuda"

    def ours(module: Any = None) -> Any:
        [result] = segment(segmenter, [tensor], batch_size=batch, device=device, dtype=dtype,
                           channels_last=channels_last, module=module)
        return result.label_map

    ref_time, ref_maps = timed(lambda: reference_pipeline(reference_model, processor, images, device, dtype),
                               iterations, device)
    our_time, our_maps = timed(ours, iterations, device)
    row: dict[str, Any] = {
        "model": name, "resolution": resolution, "batch": batch, "precision": precision,
        "reference_img_s": round(batch / ref_time, 2), "ours_img_s": round(batch / our_time, 2),
        "ratio": round(ref_time / our_time, 3),
        "label_agreement": round(float((our_maps == ref_maps).float().mean()), 5),
    }
    if use_compile:
        try:
            compiled = torch.compile(segmenter.module_for(device, dtype, channels_last=channels_last))
            compiled_time, _ = timed(lambda: ours(compiled), iterations, device)
            row["ours_compiled_img_s"] = round(batch / compiled_time, 2)
            row["ratio_compiled"] = round(ref_time / compiled_time, 3)
        except Exception as exc:  # noqa: BLE001 - compile support varies with the torch build; report, do not hide
            row["compile_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=0, help="timed runs per case (default: 10 GPU, 2 CPU)")
    parser.add_argument("--resolution", type=int, default=0, help="square image size (default: 640 GPU, 256 CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    iterations = args.iterations or (10 if gpu else 2)
    report: dict[str, Any] = {
        "benchmark": "mask2former-semantic-segmentation", "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "iterations": iterations, "results": [],
    }
    import transformers

    report["transformers"] = transformers.__version__
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        cases = [("swin-large-ade-semantic (random weights)", build_model(None), args.resolution or 640)]
        precisions = ["fp32", "fp16"]
    else:
        cases = [("tiny zoo model", tiny_model(), args.resolution or 256),
                 ("scaled-down Mask2Former-Swin (random weights)", build_model(SMALL_OVERRIDES),
                  args.resolution or 256)]
        precisions = ["fp32"]
        report["note"] = "no GPU here: CPU figures on small models; full-size Swin-L GPU figures still to be taken"
    for name, model, resolution in cases:
        for precision in precisions:
            for batch in (1, 8):
                try:
                    row = run_case(name, model, resolution, batch, precision, device, iterations,
                                   use_compile=gpu and not args.no_compile)
                except Exception as exc:  # noqa: BLE001 - e.g. an op without half-precision support: report it in the JSON
                    row = {"model": name, "resolution": resolution, "batch": batch, "precision": precision,
                           "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                report["results"].append(row)
                print(json.dumps(report["results"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
