"""What a live preview costs per sampling step, against the step itself: latent2rgb and taesd, 512 and 1024.

    python bench/preview.py                          # CUDA when available, else CPU
    python bench/preview.py --device cpu --kinds tiny --sizes 512 --steps 3

Prints one JSON document. Each case samples with our sampler (`engine.sampling.pipeline.sample`, euler +
simple, as a KSampler would) on the tiny zoo's FLUX.1 transformer or the scaled-down model of
bench/flux_step.py; at each step the progress callback times, for every method, what a server does with the
step's preview: render the `LatentPreview` (engine.sampling.previews) and encode the JPEG frame
(engine.backends.worker_common.encode_preview) at `--preview-size`. The step time excludes those renders.
The taesd decoder is the zoo's random one of TAESD's real shape (engine.zoo.vae_approx), which costs what the
published taef1 costs. Reported: median seconds per step (steps after the first), median seconds per preview
per method, and their ratio in percent (the target: under 5 % at 1024x1024).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.flux_step import _sync, build_transformer, chosen_device, device_parser, environment  # noqa: E402

METHODS = ("latent2rgb", "taesd")


def bench_case(kind: str, size: int, steps: int, preview_size: int, device: torch.device,
               folders: Any) -> dict[str, Any]:
    from engine.backends.worker_common import encode_preview
    from engine.memory.manager import MemoryManager
    from engine.models.flux1.variants import flux_model_handle
    from engine.sampling.pipeline import Guider, RandomNoise, SamplerChoice, sample, schedule_for
    from engine.sampling.schedules import scheduler_sigmas

    model, label = build_transformer(kind, device)
    handle = flux_model_handle(model, "dev", source="bench")
    text_width = model.config.joint_attention_dim
    pooled_width = model.config.pooled_projection_dim
    embeds, pooled = torch.randn(1, 64, text_width), torch.randn(1, pooled_width)
    latent = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
    sigmas = scheduler_sigmas("simple", schedule_for(handle, latent["samples"]), steps)
    stamps: list[float] = []
    spent: list[float] = []  # preview time inside each step's callback
    costs: dict[str, list[float]] = {m: [] for m in METHODS}
    frame_sizes: dict[str, tuple[int, int]] = {}

    def on_progress(step: int, total: int, preview: Any = None) -> None:
        _sync(device)
        begin = time.perf_counter()
        for method in METHODS:
            start = time.perf_counter()
            jpeg, _ = encode_preview(preview, preview_size, method, folders)
            _sync(device)
            costs[method].append(time.perf_counter() - start)
            if method not in frame_sizes:
                from PIL import Image

                import io

                frame_sizes[method] = Image.open(io.BytesIO(jpeg)).size
        spent.append(time.perf_counter() - begin)
        stamps.append(time.perf_counter())

    _sync(device)
    stamps.append(time.perf_counter())
    sample(Guider(handle, [[embeds, {"pooled_output": pooled, "guidance": 3.5}]]), SamplerChoice("euler"), sigmas,
           latent, RandomNoise(0), memory=MemoryManager(device=device), progress=on_progress)
    steps_s = [b - a - s for a, b, s in zip(stamps, stamps[1:], spent)][1:] or [stamps[1] - stamps[0] - spent[0]]
    step = statistics.median(steps_s)
    out: dict[str, Any] = {"model": label, "size": f"{size}x{size}", "steps": steps,
                           "step_s": round(step, 4), "preview_size": preview_size, "previews": {}}
    for method in METHODS:
        cost = statistics.median(costs[method][1:] or costs[method])  # the first taesd one loads the decoder
        out["previews"][method] = {"preview_s": round(cost, 5), "percent_of_step": round(100 * cost / step, 2),
                                   "frame": list(frame_sizes[method])}
    return out


def main(argv: list[str] | None = None) -> int:

    parser = device_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=None, help="comma-separated: tiny, scaled, full (default: tiny,scaled on "
                                                      "the CPU, full on CUDA)")
    parser.add_argument("--sizes", default="512,1024", help="comma-separated square image sizes")
    parser.add_argument("--steps", type=int, default=3, help="sampling steps per case")
    parser.add_argument("--preview-size", type=int, default=512)
    args = parser.parse_args(argv)
    device = chosen_device(args)
    kinds = (args.kinds or ("full" if device.type == "cuda" else "tiny,scaled")).split(",")
    from engine.core.folders import FolderPaths
    from engine.zoo.vae_approx import write_tiny_decoders

    with tempfile.TemporaryDirectory(prefix="fluxgraph-preview-bench-") as base:
        write_tiny_decoders(Path(base) / "models")  # TAESD's real shape, random weights
        folders = FolderPaths(Path(base))
        cases = [bench_case(kind, int(size), args.steps, args.preview_size, device, folders)
                 for kind in kinds for size in args.sizes.split(",")]
    print(json.dumps({**environment(device), "cases": cases}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
