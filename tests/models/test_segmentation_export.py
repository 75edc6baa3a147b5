"""Export parity: ONNX Runtime, TorchScript and torch.export files give PyTorch's label maps (logits within 2e-3
relative) at each exported size, on the tiny random model and on the model fine-tuned by the training tests;
fp16 and int8 lose at most one mIoU point on the synthetic val set; other sizes are refused clearly; the loader
runs exported files in a workflow."""

from __future__ import annotations

import functools
import shutil
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.segmentation import (execute, finetuned_run, load_segmenter_tiny, segmentation_runtime,
                                        single_thread, workspace)

try:
    import onnxruntime  # noqa: F401
    HAVE_ORT = True
except ImportError:
    HAVE_ORT = False
needs_onnxruntime = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime is not installed (pip install onnxruntime)")

SIZE = (96, 96)  # the tiny model's processed size for the 64x64 val images


def export(segmenter: Any, name: str, **request: Any) -> list:
    from engine.models.segmentation.export import ExportRequest, export_segmenter

    with single_thread():
        return export_segmenter(segmenter, workspace() / "models" / "segmentation", name, ExportRequest(**request))


@functools.lru_cache(maxsize=None)
def finetuned() -> Any:
    from engine.models.segmentation.mask2former import load_segmenter

    return load_segmenter(finetuned_run().best_dir)


@functools.lru_cache(maxsize=None)
def val_set() -> tuple[list[np.ndarray], list[np.ndarray]]:
    from engine.training.segmentation.dataset import load_sample, validate_dataset

    info = validate_dataset(workspace() / "input" / "shapes", finetuned().labels)
    pairs = [load_sample(sample, False) for sample in info.val]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def label_maps(segmenter: Any) -> list[np.ndarray]:
    from engine.training.segmentation.metrics import predict_label_maps

    with single_thread():
        return predict_label_maps(segmenter, val_set()[0])


def miou(segmenter: Any) -> float:
    from engine.training.segmentation.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(len(finetuned().labels))
    for truth, predicted in zip(val_set()[1], label_maps(segmenter)):
        matrix.update(truth, predicted)
    return matrix.mean_iou()


def logits_error(exported: Any, model: Any, size: tuple[int, int]) -> float:
    from engine.models.segmentation.export import example_input

    values = example_input(size, batch=3, seed=5)  # batch 3: the graphs were traced at 2, the batch is dynamic
    with torch.inference_mode():
        reference = model(pixel_values=values)
    classes, masks = exported.run(values)
    return max(float((got - want).abs().max() / want.abs().max())
               for got, want in ((classes, reference.class_queries_logits),
                                 (masks, reference.masks_queries_logits)))


@functools.lru_cache(maxsize=None)
def finetuned_onnx() -> dict[str, Any]:
    """fp32, fp16 and int8 ONNX files of the fine-tuned model (one float export), by dtype."""
    records = export(finetuned(), "shapes-onnx", format="onnx", dtypes=("fp32", "fp16", "int8"), sizes=(SIZE,))
    return {record.dtype: record for record in records}


# ----- the fine-tuned model: every format, fp32 exact

@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnxruntime), "torchscript", "pt2"])
def test_fp32_exports_of_the_finetuned_model_reproduce_its_label_maps(fmt):
    from engine.models.segmentation.exported import load_exported_segmenter

    if fmt == "onnx":
        record = finetuned_onnx()["fp32"]
    else:  # pt2 files take seconds to load: checked here once instead of also by the exporter
        [record] = export(finetuned(), f"shapes-{fmt}", format=fmt, sizes=(SIZE,), verify=fmt != "pt2")
    if record.max_relative_error is not None:
        assert record.max_relative_error <= 2e-3 and record.label_agreement == 1.0
    exported = load_exported_segmenter(record.path)
    assert exported.labels == finetuned().labels and exported.sizes == [SIZE]
    assert logits_error(exported, finetuned().model, SIZE) <= 2e-3
    reference = label_maps(finetuned())
    assert len({int(v) for m in reference for v in np.unique(m)}) >= 3  # a model that segments, not one class
    for ours, theirs in zip(label_maps(exported), reference):
        assert np.array_equal(ours, theirs)


@needs_onnxruntime
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_fp16_and_int8_onnx_lose_at_most_one_miou_point(dtype):
    from engine.models.segmentation.exported import load_exported_segmenter

    record = finetuned_onnx()[dtype]
    exact, reduced = miou(finetuned()), miou(load_exported_segmenter(record.path))
    print(f"val mIoU: PyTorch {exact:.4f}, ONNX {dtype} {reduced:.4f}; check-input logits within "
          f"{record.max_relative_error:.2e}, labels {record.label_agreement:.4f} equal")
    assert exact > 0.6 and reduced >= exact - 0.01
    assert record.max_relative_error > 1e-6  # really reduced precision, not the fp32 graph under another name


# ----- the tiny random model: two sizes, through the node and the loader

@pytest.fixture(scope="module")
def runtime() -> Any:
    return segmentation_runtime()


def export_prompt(fmt: str, sizes: str, name: str, dtype: str = "fp32") -> dict:
    return {"1": {"class_type": "Mask2FormerLoader", "inputs": {"model_name": "tiny-mask2former-swin-ade"}},
            "2": {"class_type": "ExportSegmenter", "inputs": {"segmenter": ["1", 0], "format": fmt, "dtype": dtype,
                                                              "sizes": sizes, "output_name": name}}}


NODE_EXPORT: dict[str, Any] = {}


def node_export(runtime: Any) -> Any:
    """The tiny model exported to TorchScript at 96x96 and 96x128 by the ExportSegmenter node (once)."""
    if "result" not in NODE_EXPORT:
        NODE_EXPORT["result"] = execute(runtime, export_prompt("torchscript", "96x96, 96x128", "tiny-export"))
    return NODE_EXPORT["result"]


def test_export_node_writes_one_file_per_size_each_reproducing_the_tiny_model(runtime):
    from engine.models.segmentation.exported import list_exported_segmenters, load_exported_segmenter
    from engine.models.segmentation.pipeline import segment

    result = node_export(runtime)
    assert result.status == "success", result.errors
    text = result.outputs["2"]["text"]
    assert [line.split(":")[0] for line in text] == ["tiny-export-96x96-fp32.pt", "tiny-export-96x128-fp32.pt"]
    assert all("labels 100.00% equal" in line for line in text)
    listed = list_exported_segmenters(runtime.folders)
    assert "tiny-export-96x128-fp32.pt" in listed and not any("training_state" in n for n in listed)

    tiny = load_segmenter_tiny()
    exported = load_exported_segmenter(workspace() / "models/segmentation/tiny-export-96x96-fp32.pt")
    assert exported.sizes == [(96, 96), (96, 128)]  # the other size of the same export comes along
    rng = np.random.default_rng(3)
    for size in [(96, 96), (96, 128)]:
        assert logits_error(exported, tiny.model, size) <= 2e-3
        image = torch.from_numpy(rng.random((2, *size, 3), dtype=np.float32))
        [want] = segment(tiny, [image])
        [got] = segment(exported, [image])  # processed size == exported size: exact
        assert torch.equal(got.label_map, want.label_map), size
        assert len(torch.unique(want.label_map)) > 1


@needs_onnxruntime
def test_the_loader_runs_an_onnx_file_in_a_workflow_as_pytorch_does(runtime):
    from PIL import Image

    from tests.support.flux import CAPTURED

    onnx_name = finetuned_onnx()["fp32"].path.name
    shutil.copy(workspace() / "input/shapes/images/val/val_0001.jpg", runtime.folders.input_dir / "val_0001.jpg")
    previews = {}
    for model_name in (onnx_name, "shapes-run/best"):
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "val_0001.jpg"}},
            "2": {"class_type": "Mask2FormerLoader", "inputs": {"model_name": model_name}},
            "3": {"class_type": "SemanticSegment", "inputs": {"segmenter": ["2", 0], "image": ["1", 0],
                                                              "resolution": 0, "precision": "auto", "batch_size": 8,
                                                              "batching": "group"}},
            "4": {"class_type": "SegmentationPreview", "inputs": {"image": ["1", 0], "segmentation": ["3", 0],
                                                                  "opacity": 1.0, "legend": True}},
            "5": {"class_type": "CaptureImage", "inputs": {"images": ["4", 0], "key": model_name}},
        }
        result = execute(runtime, prompt)
        assert result.status == "success", result.errors
        previews[model_name] = CAPTURED.pop(model_name)
    assert torch.equal(*previews.values())  # same colours everywhere and the same legend of class names
    assert Image.open(runtime.folders.input_dir / "val_0001.jpg").size == (64, 64)


def test_sizes_that_were_not_exported_are_refused_or_padded(runtime):
    from engine.models.segmentation.exported import InputSizeError, load_exported_file, load_exported_segmenter
    from engine.models.segmentation.pipeline import segment

    assert node_export(runtime).status == "success"
    path = workspace() / "models/segmentation/tiny-export-96x96-fp32.pt"
    runner = load_exported_file(path)
    with pytest.raises(InputSizeError, match=r"exported for input size 96x96 only; got 64x96"):
        runner.run(torch.zeros(1, 3, 64, 96))
    segmenter = load_exported_segmenter(path)
    with pytest.raises(InputSizeError, match=r"exported for input size\(s\) 96x96, 96x128; got 128x128"):
        segmenter.run(torch.zeros(1, 3, 128, 128))
    landscape, portrait = torch.rand(1, 60, 80, 3), torch.rand(1, 80, 60, 3)
    with pytest.raises(InputSizeError, match=r"an image processed to 128x96 fits none"):
        segment(segmenter, [portrait])  # landscape sizes only: a portrait image needs its own export
    with pytest.raises(InputSizeError, match=r"an image processed to 160x224 fits none"):
        segment(segmenter, [landscape], resolution=160)
    [exact] = segment(segmenter, [landscape])  # processed to 96x128: the exported size
    [padded] = segment(segmenter, [landscape], resolution=64)  # 64x96, padded into 96x96 and cropped back
    assert exact.label_map.shape == padded.label_map.shape == (1, 60, 80)
    assert padded.mask_logits.shape[-2:] == (16, 24)  # the image's own region of the 96x96 graph's 24x24 grid


@needs_onnxruntime
def test_an_onnx_file_refuses_other_sizes():
    from engine.models.segmentation.exported import InputSizeError, load_exported_file

    runner = load_exported_file(finetuned_onnx()["int8"].path)
    assert runner.size == SIZE and runner.meta["dtype"] == "int8"
    with pytest.raises(InputSizeError, match=r"shapes-onnx-96x96-int8.onnx was exported for input size 96x96 only"):
        runner.run(torch.zeros(2, 3, 96, 64))


def test_bad_export_requests_are_refused_before_writing_anything(tmp_path):
    from engine.models.segmentation.export import ExportError, ExportRequest, export_segmenter, parse_sizes

    tiny = load_segmenter_tiny()
    with pytest.raises(ExportError, match="int8 is made by ONNX Runtime dynamic quantization: use format onnx"):
        export_segmenter(tiny, tmp_path, "x", ExportRequest(format="pt2", dtypes=("fp16", "int8")))
    with pytest.raises(ExportError, match="size 100x96: height and width must be positive multiples of 32"):
        export_segmenter(tiny, tmp_path, "x", ExportRequest(sizes=((100, 96),)))
    with pytest.raises(ExportError, match="format must be one of onnx, torchscript, pt2"):
        export_segmenter(tiny, tmp_path, "x", ExportRequest(format="tflite"))
    with pytest.raises(ExportError, match="may hold letters, digits"):
        export_segmenter(tiny, tmp_path, "../x", ExportRequest(format="torchscript"))
    with pytest.raises(ExportError, match="is not HEIGHTxWIDTH"):
        parse_sizes("512 by 512")
    assert parse_sizes("512x640, 256") == ((512, 640), (256, 256))
    assert not list(tmp_path.iterdir())


def test_the_loader_refuses_files_that_are_not_fluxgraph_exports(tmp_path):
    from engine.models.segmentation.exported import ExportedModelError, load_exported_segmenter

    foreign = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(ExportedModelError, match="without fluxgraph.json: not exported by fluxgraph"):
        load_exported_segmenter(foreign)
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"garbage")
    with pytest.raises(ExportedModelError, match="not a TorchScript or pt2 archive"):
        load_exported_segmenter(broken)
    if HAVE_ORT:
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x00\x01")
        with pytest.raises(ExportedModelError, match="ONNX Runtime cannot load it"):
            load_exported_segmenter(bad)


def test_an_exported_segmenter_cannot_be_exported_again(runtime):
    ts = workspace() / "models/segmentation/shapes-torchscript-96x96-fp32.pt"
    if not ts.exists():
        export(finetuned(), "shapes-torchscript", format="torchscript", sizes=(SIZE,))
    prompt = export_prompt("torchscript", "96x96", "again")
    prompt["1"]["inputs"]["model_name"] = "shapes-torchscript-96x96-fp32.pt"
    result = execute(runtime, prompt)
    assert result.status == "error" and "already an exported graph" in result.error["exception_message"]
