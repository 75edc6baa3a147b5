"""Mask2Former fine-tuning speed and memory: fluxgraph's trainer next to a plain transformers training loop
(Mask2FormerImageProcessorPil builds the batches, model(...).loss.backward(), AdamW) on the same synthetic data,
model and batch size. Prints one JSON document: optimizer steps per second and peak memory of each.

Each loop runs in its own process so that peak memory is its own (CPU: the process's maximum resident set;
GPU: torch's peak allocation). On the CPU: the scaled-down Mask2Former-Swin of bench/segment.py at 256x256;
on a GPU: the full-size Swin-L architecture at 512x512 with bf16 mixed precision (ours: precision auto).

    python bench/train_segment.py [--steps N] [--batch B] [--size S]
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
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.training_rounds import alternate_rounds, run_measured  # noqa: E402

WARMUP_STEPS = 2  # not timed: first-step allocations and lazy initialisation


def prepare(work: Path, size: int, images: int) -> dict[str, str]:
    """The synthetic dataset and the base model (random weights) as files, shared by both workers."""
    import torch

    from bench.segment import SMALL_OVERRIDES, build_model
    from engine.training.segmentation.checkpoint import save_model_folder
    from engine.models.segmentation.mask2former import Preprocessing
    from engine.training.segmentation.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(work / "data", train=images, val=2, size=size, seed=0)
    model = build_model(None if torch.cuda.is_available() else SMALL_OVERRIDES)
    base = save_model_folder(work / "base", model, Preprocessing(size, size * 4))
    return {"data": str(data), "base": str(base)}


def worker_ours(args: argparse.Namespace) -> dict[str, Any]:
    from engine.training.segmentation.config import TrainConfig
    from engine.training.segmentation.trainer import TrainEvents, train

    times: list[float] = []
    config = TrainConfig(data_dir=args.data, output_dir=str(Path(args.work) / "run"), base_model=args.base,
                         epochs=1000, batch_size=args.batch, crop_size=args.size, num_points=args.points,
                         max_steps=args.steps + WARMUP_STEPS, scale_min=1.0, scale_max=1.0, seed=0)
    train(config, TrainEvents(on_step=lambda report: times.append(time.perf_counter())))
    timed = times[WARMUP_STEPS - 1:]
    return {"steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0])}


def worker_plain(args: argparse.Namespace) -> dict[str, Any]:
    """What a transformers user writes: the image processor builds the batch, the model computes its loss."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = Path(args.data)
    classes = json.loads((data / "classes.json").read_text())
    model = Mask2FormerForUniversalSegmentation.from_pretrained(
        args.base, num_labels=len(classes), ignore_mismatched_sizes=True, train_num_points=args.points).to(device)
    model.train()
    processor = Mask2FormerImageProcessorPil(size={"shortest_edge": args.size, "longest_edge": args.size * 4},
                                             size_divisor=32, ignore_index=255, do_reduce_labels=False)
    names = sorted(p.stem for p in (data / "images" / "train").iterdir())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    amp = device.type == "cuda"
    times = []
    for step in range(args.steps + WARMUP_STEPS):
        batch = [names[(step * args.batch + k) % len(names)] for k in range(args.batch)]
        images = [np.array(Image.open(data / "images" / "train" / f"{n}.jpg").convert("RGB")) for n in batch]
        labels = [np.array(Image.open(data / "annotations" / "train" / f"{n}.png")) for n in batch]
        inputs = processor(images=images, segmentation_maps=labels, return_tensors="pt")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(pixel_values=inputs["pixel_values"].to(device), pixel_mask=inputs["pixel_mask"].to(device),
                         mask_labels=[m.to(device) for m in inputs["mask_labels"]],
                         class_labels=[c.to(device) for c in inputs["class_labels"]]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    timed = times[WARMUP_STEPS - 1:]
    return {"steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0])}


def run_worker(kind: str, args: argparse.Namespace, paths: dict[str, str], work: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--data", paths["data"], "--base", paths["base"],
               "--work", str(work), "--steps", str(args.steps), "--batch", str(args.batch), "--size", str(args.size),
               "--points", str(args.points)]
    return run_measured(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per loop")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=0, help="square image size (default: 256 CPU, 512 GPU)")
    parser.add_argument("--points", type=int, default=12544, help="loss points per mask (transformers' default)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each loop, alternating; the fastest counts")
    parser.add_argument("--worker", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    args.size = args.size or (512 if cuda else 256)
    if args.worker:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = (worker_ours if args.worker == "ours" else worker_plain)(args)
        if cuda:
            result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        print(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="fluxgraph-train-bench-"))
    # one step more than is run: the timed steps never include the end-of-epoch evaluation
    paths = prepare(work, args.size, images=args.batch * (args.steps + WARMUP_STEPS + 1))
    report: dict[str, Any] = {
        "benchmark": "mask2former-finetuning",
        "model": "swin-large-ade-semantic (random weights)" if cuda else "scaled-down Mask2Former-Swin",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "image_size": args.size, "batch": args.batch, "timed_steps": args.steps, "loss_points": args.points,
        "rounds": args.rounds}
    alternate_rounds(report, args.rounds, "plain_transformers", lambda side: run_worker(side, args, paths, work))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
