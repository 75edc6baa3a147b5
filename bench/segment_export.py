"""Exported Mask2Former throughput: PyTorch eager next to its TorchScript, torch.export (pt2) and ONNX Runtime
fp32 / fp16 / int8 exports, measured in one run on the same weights and inputs. Prints one JSON document with
images per second, the ratio to PyTorch, and how far each export's logits and labels are from PyTorch's.

On the CPU: the scaled-down Mask2Former-Swin of bench/segment.py (Swin-L's window, heads and 150 classes,
narrower) at 512x512, batch 1 and 4, with its classifier and mask layers scaled up as in the tiny zoo so that
label maps vary over the image (random weights otherwise give one class everywhere and any export "agrees").
On a GPU: the full-size Swin-L ADE20K architecture (random weights) at 640x640, PyTorch fp32/fp16 next to
TorchScript and pt2 fp16, plus ONNX Runtime when its CUDA provider is installed.

    python bench/segment_export.py [--iterations N] [--resolution R] [--batches 1 4] [--formats ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.segment import SMALL_OVERRIDES, build_model  # noqa: E402
from engine.models.segmentation.mask2former import Preprocessing, Segmenter, ade20k_labels  # noqa: E402
from engine.models.segmentation.export import ExportRequest, example_input, export_segmenter  # noqa: E402
from engine.models.segmentation.exported import load_exported_file  # noqa: E402
from engine.models.segmentation.pipeline import semantic_scores  # noqa: E402
from engine.zoo.segmentation import _make_sensitive  # noqa: E402

CPU_FORMS = ["torchscript-fp32", "pt2-fp32", "onnx-fp32", "onnx-int8"]
GPU_FORMS = ["torchscript-fp16", "pt2-fp16", "onnx-fp16"]


def interleaved(cases: dict[str, Callable[[], Any]], rounds: int, cuda: bool) -> tuple[dict[str, float], dict]:
    """Each round runs every case once, in turn; a case's time is its fastest round. Interleaving and the
    minimum keep other load on the machine from favouring whichever case happened to run in a quiet moment."""
    best: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, function in cases.items():
            if name in outputs and name not in best and round_index > 0 and isinstance(outputs[name], str):
                continue  # failed in the warm-up
            try:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                result = function()
                if cuda:
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - reported in the JSON
                outputs[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            outputs[name] = result
            if round_index > 0:
                best[name] = min(best.get(name, elapsed), elapsed)
    return best, outputs


def agreement(outputs: tuple[Any, Any], reference: tuple[Any, Any]) -> dict[str, float]:
    classes, masks = (t.float().cpu() for t in outputs)
    ref_classes, ref_masks = (t.float().cpu() for t in reference)
    error = max(float((a - b).abs().max() / b.abs().max()) for a, b in ((classes, ref_classes), (masks, ref_masks)))
    same = [float((semantic_scores(classes[i], masks[i]).argmax(0) ==
                   semantic_scores(ref_classes[i], ref_masks[i]).argmax(0)).float().mean())
            for i in range(classes.shape[0])]
    return {"max_relative_logit_error": round(error, 6), "label_agreement": round(sum(same) / len(same), 5)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        name, model, forms = "swin-large-ade-semantic (random weights)", build_model(None), GPU_FORMS
        resolution = args.resolution or 640
    else:
        name, model, forms = "scaled-down Mask2Former-Swin (random weights, sensitive heads)", \
            build_model(SMALL_OVERRIDES), CPU_FORMS
        _make_sensitive(model, 0)
        resolution = args.resolution or 512
    forms = args.formats or forms
    segmenter = Segmenter(model=model.eval(), labels=tuple(ade20k_labels()),
                          preprocessing=Preprocessing(resolution, resolution * 4), config_name="bench", source=name)
    size = (resolution, resolution)
    report: dict[str, Any] = {
        "benchmark": "mask2former-export", "model": name, "resolution": resolution,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "iterations": args.iterations, "results": []}
    try:
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        forms = [f for f in forms if not f.startswith("onnx")]
        report["note"] = "onnxruntime not installed: ONNX forms skipped"

    out_dir = Path(tempfile.mkdtemp(prefix="fluxgraph-export-bench-"))
    runners: dict[str, Any] = {}
    for form in forms:
        fmt, dtype = form.split("-")
        start = time.perf_counter()
        try:
            [record] = export_segmenter(segmenter, out_dir, "bench", ExportRequest(
                format=fmt, dtypes=(dtype,), sizes=(size,), device=str(device), verify=False))
            runners[form] = load_exported_file(record.path, device)
            report.setdefault("export_seconds", {})[form] = round(time.perf_counter() - start, 1)
        except Exception as exc:  # noqa: BLE001 - an export that fails on this torch/ORT build is reported, not hidden
            report.setdefault("export_errors", {})[form] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(f"exported {form}", file=sys.stderr, flush=True)

    eager_dtypes = [torch.float32, torch.float16] if cuda else [torch.float32]
    for batch in args.batches:
        values = example_input(size, batch=batch, seed=batch).to(device)
        cases: dict[str, Callable[[], Any]] = {}
        for dtype in eager_dtypes:
            module = segmenter.module_for(device, dtype)

            def eager(module: Any = module, dtype: Any = dtype) -> tuple[Any, Any]:
                with torch.inference_mode():
                    out = module(pixel_values=values.to(dtype))
                return out.class_queries_logits, out.masks_queries_logits

            cases["pytorch-" + ("fp32" if dtype == torch.float32 else "fp16")] = eager
        for form, runner in runners.items():
            cases[form] = lambda runner=runner: runner.run(values)
        seconds, outputs = interleaved(cases, args.iterations, cuda)
        base = seconds["pytorch-fp32"]
        for form in cases:
            if form not in seconds:
                report["results"].append({"form": form, "batch": batch, "error": outputs[form]})
                continue
            row = {"form": form, "batch": batch, "img_s": round(batch / seconds[form], 3),
                   "ratio_to_pytorch_fp32": round(base / seconds[form], 3)}
            if form != "pytorch-fp32":
                row.update(agreement(outputs[form], outputs["pytorch-fp32"]))
            report["results"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    fastest = {}
    for batch in args.batches:
        rows = [r for r in report["results"] if r["batch"] == batch and r["form"] in runners and "img_s" in r]
        if rows:
            best = max(rows, key=lambda r: r["img_s"])
            fastest[str(batch)] = {"form": best["form"], "ratio_to_pytorch_fp32": best["ratio_to_pytorch_fp32"]}
    report["fastest_export"] = fastest
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3,
                        help="timed rounds after one warm-up round (each round runs every form once)")
    parser.add_argument("--resolution", type=int, default=0, help="square input size (default: 512 CPU, 640 GPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--formats", nargs="+", default=None,
                        help=f"forms to export and time (default CPU: {' '.join(CPU_FORMS)}; GPU: "
                             f"{' '.join(GPU_FORMS)})")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
