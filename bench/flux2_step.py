"""Seconds per sampling step for FLUX.2 klein: our sampler against diffusers' Flux2KleinPipeline, same run.

    python bench/flux2_step.py                  # CUDA when available, else CPU
    python bench/flux2_step.py --device cpu --steps 4

Prints one JSON document. Each case runs the same Flux2Transformer2DModel through
`engine.sampling.pipeline.sample` (euler + the FLUX.2 schedule, as SamplerCustomAdvanced with Flux2Scheduler)
and through `Flux2KleinPipeline` (step-distilled, no CFG) with precomputed text embeddings (512 tokens) and
`output_type="latent"`, alternating the two `--repeats` times, with 0 and 2 reference images. Our references
are latents on the conditioning (ReferenceLatent); the pipeline gets images of the same size and encodes them
before its loop, so the steps compare the same token counts. Step times, medians, minimums and peak memory
are taken as in bench/flux_step.py.

Cases: on CUDA the full-size klein 4B transformer (5 double + 20 single blocks, 3072 wide, text width 7680)
with random bf16 weights at 1024x1024, references 1024x1024 each; on the CPU the tiny zoo's klein
transformer and a scaled-down klein of the real input widths (1 double + 2 single blocks, 512 wide), float32,
at 256x256 with 256x256 references.
"""

from __future__ import annotations

import json
import os
import functools
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.flux_step import StepClock, _sync, environment, instantiate, measure, step_bench_setup  # noqa: E402

TEXT_TOKENS = 512  # the FLUX.2 pipelines pad every prompt to 512 tokens
KLEIN_4B = dict(in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128, num_attention_heads=24,
                joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
                axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=False)
FLUX2_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=32)


def build(kind: str, device: torch.device) -> tuple[Any, Any, str]:
    """(transformer, VAE for the pipeline's reference encoding, label)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    from engine.zoo.flux2_tiny import tiny_flux2, tiny_flux2_vae

    if kind == "tiny":
        return (tiny_flux2("klein").transformer.to(device), tiny_flux2_vae().to(device),
                "tiny zoo klein transformer (float32)")
    config = dict(KLEIN_4B)
    if kind == "scaled":
        config.update(num_layers=1, num_single_layers=2, num_attention_heads=4)
        dtype, label = torch.float32, "scaled-down klein 4B (1 double + 2 single blocks, 512 wide, float32)"
    else:
        dtype, label = torch.bfloat16, "FLUX.2 klein 4B full size, random bf16 weights"
    model = instantiate(Flux2Transformer2DModel, config, dtype, device)
    vae = instantiate(AutoencoderKLFlux2, FLUX2_VAE, dtype, device) if kind == "full" else tiny_flux2_vae().to(device)
    return model.eval(), vae.eval(), label


def run_ours(model: Any, embeds: torch.Tensor, references: list[torch.Tensor], width: int, height: int,
             steps: int, device: torch.device) -> list[float]:
    from engine.memory.manager import MemoryManager
    from engine.models.flux2.transformer import FLUX2_SAMPLING
    from engine.models.common.handles import FluxModel
    from engine.sampling.flux2_schedule import flux2_sigmas
    from engine.sampling.pipeline import Guider, RandomNoise, SamplerChoice, sample

    handle = FluxModel(transformer=model, variant="flux2-klein-4b", family="flux2", guidance_embeds=False,
                       sampling=FLUX2_SAMPLING, source="bench")
    latent = {"samples": torch.zeros(1, 128, height // 16, width // 16)}
    options: dict[str, Any] = {"pooled_output": None}
    if references:
        options["reference_latents"] = references
    clock = StepClock(device)
    sample(Guider(handle, [[embeds, options]]), SamplerChoice("euler"), flux2_sigmas(steps, width, height), latent,
           RandomNoise(0), memory=MemoryManager(device=device), progress=clock.stamp)
    return clock.step_times()


def make_pipeline(model: Any, vae: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    from engine.zoo.flux2_tiny import FLUX2_SCHEDULER_CONFIG

    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER_CONFIG), vae=vae,
                              text_encoder=None, tokenizer=None, transformer=model, is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe: Any, embeds: torch.Tensor, images: list[Any], width: int, height: int, steps: int,
                  device: torch.device) -> list[float]:
    _sync(device)
    clock = StepClock(device, start=False)  # started by the first transformer call, after the references are encoded

    def first_step_start(pipeline: Any, *args: Any, **kwargs: Any) -> None:
        if not clock.stamps:
            clock.stamp()

    hook = pipe.transformer.register_forward_pre_hook(first_step_start)
    try:
        pipe(image=images or None, prompt_embeds=embeds.to(device, pipe.transformer.dtype), width=width,
             height=height, num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
             generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=clock.on_step_end)
    finally:
        hook.remove()
    return clock.step_times()


def bench_case(kind: str, size: int, refs: int, steps: int, repeats: int, device: torch.device) -> dict:
    import numpy as np
    from PIL import Image

    model, vae, label = build(kind, device)
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, TEXT_TOKENS, model.config.joint_attention_dim, generator=gen)
    references = [torch.randn(1, 128, size // 16, size // 16, generator=gen) for _ in range(refs)]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(refs)]
    pipe = make_pipeline(model, vae)
    ours, theirs = [], []
    ours_peak = theirs_peak = None
    with torch.inference_mode():
        for _ in range(repeats):  # alternate, so drift (clocks, caches, other load) hits both sides
            ours_run = functools.partial(run_ours, model, embeds, references, size, size, steps, device)
            times, ours_peak, _ = measure(ours_run, device)
            ours += times[1:]
            theirs_run = functools.partial(run_diffusers, pipe, embeds, images, size, size, steps, device)
            times, theirs_peak, _ = measure(theirs_run, device)
            theirs += times[1:]
    ours_step, theirs_step = statistics.median(ours), statistics.median(theirs)
    image_tokens = (size // 16) ** 2
    result = {
        "model": label, "resolution": f"{size}x{size}", "reference_images": refs,
        "image_tokens": image_tokens, "reference_tokens": refs * image_tokens, "text_tokens": TEXT_TOKENS,
        "steps": steps, "repeats": repeats,
        "ours_s_per_step": round(ours_step, 5), "diffusers_s_per_step": round(theirs_step, 5),
        "ratio_ours_over_diffusers": round(ours_step / theirs_step, 4),
        "ours_min_s_per_step": round(min(ours), 5), "diffusers_min_s_per_step": round(min(theirs), 5),
        "ratio_of_minimums": round(min(ours) / min(theirs), 4),
        "ours_peak_bytes": ours_peak, "diffusers_peak_bytes": theirs_peak,
    }
    del pipe, model, vae
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    args, device, steps = step_bench_setup(argv, __doc__.split("\n\n")[0], gpu_steps=6, cpu_steps=4)
    if device.type == "cuda":
        cases = [("full", 1024, 0), ("full", 1024, 2)]
    else:
        cases = [("tiny", 256, 0), ("tiny", 256, 2), ("scaled", 256, 0), ("scaled", 256, 2)]
    report = {
        **environment(device),
        "cases": [bench_case(kind, size, refs, steps, args.repeats, device) for kind, size, refs in cases],
    }
    if device.type != "cuda":
        report["note"] = "no CUDA device: GPU figures (full-size klein 4B at 1024x1024, 0 and 2 references) " \
                         "still to be taken"
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
