"""Seconds per sampling step of FLUX Kontext editing with 0, 1 and 2 reference images, ours next to diffusers'
FluxKontextPipeline (one reference) on the same transformer in the same run.

    python bench/kontext.py                   # CUDA: full-size FLUX.1 Kontext (random bf16) at 1024x1024
    python bench/kontext.py --device cpu --resolution 512 --steps 3

Prints one JSON document. References are latents of the output's size (a 1024x1024 reference adds 4096
image tokens), given to our sampler as ReferenceLatent conditioning (method "offset") and to
FluxKontextPipeline as `image` latents (its VAE is skipped). Text: 512 random T5 tokens. A step's time is
taken between consecutive per-step callbacks (CUDA synchronised); the median and the minimum over the steps
after the first are reported. CPU: the scaled-down model of bench/flux_step.py (2 double + 4 single blocks,
512 wide, real input widths), float32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from flux_step import T5_TOKENS, build_transformer, make_pipeline, run_diffusers, run_ours  # noqa: E402


def stats(times: list[float]) -> dict[str, float]:
    return {"s_per_step": round(statistics.median(times), 5), "min_s_per_step": round(min(times), 5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    model, label = build_transformer("full" if device.type == "cuda" else "scaled", device)
    if device.type == "cuda":
        label = label.replace("FLUX.1-dev", "FLUX.1 Kontext (dev shapes)")
    size = args.resolution
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, T5_TOKENS, model.config.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, model.config.pooled_projection_dim, generator=gen)
    references = [torch.randn(1, 16, size // 8, size // 8, generator=gen) for _ in range(2)]
    pipe = make_pipeline(model, "kontext")
    ours: dict[int, list[float]] = {0: [], 1: [], 2: []}
    theirs: list[float] = []
    with torch.inference_mode():
        for _ in range(args.repeats):  # alternate, so drift and other load hit every case alike
            for count in ours:
                ours[count] += run_ours(model, embeds, pooled, size, size, args.steps, device, variant="kontext",
                                        guidance=2.5, references=references[:count])[1:]
            # the pipeline's reference goes in as latents (its VAE is skipped), at the output's size
            theirs += run_diffusers(pipe, embeds, pooled, size, size, args.steps, device, guidance=2.5,
                                    image=references[0].to(device, pipe.transformer.dtype), _auto_resize=False,
                                    max_area=size * size)[1:]
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(), "model": label, "resolution": f"{size}x{size}",
        "image_tokens": (size // 16) ** 2, "text_tokens": T5_TOKENS, "steps": args.steps, "repeats": args.repeats,
        "ours": {f"{count}_references": stats(times) for count, times in ours.items()},
        "diffusers_1_reference": stats(theirs),
        "ratio_ours_over_diffusers_1_reference": round(statistics.median(ours[1]) / statistics.median(theirs), 4),
        "ratio_of_minimums_1_reference": round(min(ours[1]) / min(theirs), 4),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
