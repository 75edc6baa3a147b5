"""Seconds per sampling step with a ControlNet: ours against diffusers' FluxControlNetPipeline, same models.

    python bench/control.py                   # CUDA when available, else CPU
    python bench/control.py --device cpu --steps 5 --repeats 2

Prints one JSON document. The transformer is flux_step.py's scaled-down FLUX.1-dev on the CPU (real input
widths, 2 double + 4 single blocks, 512 wide, float32) or the full-size one on CUDA (bf16, random weights);
the ControlNet is a union FluxControlNetModel of the same widths with an InstantX union's depth relative to
its transformer (CPU: 1 double + 2 single blocks; CUDA: the real 5 double + 10 single). Both sides run the
same modules with precomputed text embeddings and a control image encoded by the tiny zoo's VAE (encoding
happens before the first step and is not timed), alternating `--repeats` times; per-step times come from the
per-step callbacks, the first (warm-up) step dropped, medians and minimums reported. The plain (no
ControlNet) step of each side is measured in the same run, so the ControlNet's own cost is shown too.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from flux_step import (T5_TOKENS, StepClock, build_transformer, environment, instantiate, make_pipeline,  # noqa: E402
                       run_diffusers, run_ours, step_bench_setup)

GUIDANCE = 3.5
UNION_MODE = 1  # SetUnionControlNetType "depth"


def build_controlnet(transformer, device: torch.device):
    from diffusers import FluxControlNetModel

    config = {k: transformer.config[k] for k in ("in_channels", "attention_head_dim", "num_attention_heads",
                                                  "joint_attention_dim", "pooled_projection_dim",
                                                  "guidance_embeds", "axes_dims_rope")}
    depth = dict(num_layers=5, num_single_layers=10) if device.type == "cuda" else \
        dict(num_layers=1, num_single_layers=2)
    model = instantiate(FluxControlNetModel, {**config, **depth, "num_mode": 10}, transformer.dtype, device)
    with torch.no_grad():
        for param in model.parameters():  # diffusers zero-initialises the output blocks: make them do work
            param.normal_(0.0, 0.02)
    return model.eval(), f"union FluxControlNetModel, {depth['num_layers']} double + " \
                         f"{depth['num_single_layers']} single blocks"


def tiny_vae(device: torch.device, dtype: torch.dtype):
    from engine.models.common.handles import FluxVAE
    from engine.zoo.flux1_tiny import tiny_shared_parts

    vae = tiny_shared_parts().vae.to(device, dtype)
    return vae, FluxVAE(vae=vae, scaling_factor=vae.config.scaling_factor, shift_factor=vae.config.shift_factor,
                        source="bench")


def run_ours_control(transformer, controlnet, vae_handle, image, embeds, pooled, size, steps, device):
    from engine.memory.manager import MemoryManager
    from engine.models.control.controlnet import ControlNet
    from engine.models.flux1.variants import flux_model_handle
    from engine.sampling.control_nets import apply_controlnet
    from engine.sampling.pipeline import Guider, RandomNoise, SamplerChoice, sample, schedule_for
    from engine.sampling.schedules import scheduler_sigmas

    memory = MemoryManager(device=device)
    handle = flux_model_handle(transformer, "dev", source="bench")
    net = ControlNet(model=controlnet, layout="instantx", union=True, union_type=UNION_MODE, source="bench")
    cond = [[embeds, {"pooled_output": pooled, "guidance": GUIDANCE}]]
    positive, _ = apply_controlnet(cond, cond, net, image, 1.0, 0.0, 1.0, vae_handle, memory)
    latent = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
    sigmas = scheduler_sigmas("simple", schedule_for(handle, latent["samples"]), steps)
    clock = StepClock(device)
    sample(Guider(handle, positive), SamplerChoice("euler"), sigmas, latent, RandomNoise(0), memory=memory,
           progress=clock.stamp)
    return clock.step_times()


def run_diffusers_control(pipe, image, embeds, pooled, size, steps, device):
    dtype = pipe.transformer.dtype
    clock = StepClock(device)
    pipe(prompt_embeds=embeds.to(device, dtype), pooled_prompt_embeds=pooled.to(device, dtype), width=size,
         height=size, num_inference_steps=steps, guidance_scale=GUIDANCE, output_type="latent",
         control_image=(image.permute(0, 3, 1, 2) * 2 - 1).to(device, dtype), control_mode=UNION_MODE,
         controlnet_conditioning_scale=1.0, generator=torch.Generator("cpu").manual_seed(0),
         callback_on_step_end=clock.on_step_end)
    return clock.step_times()


def stats(times: list[float]) -> dict[str, float]:
    return {"s_per_step": round(statistics.median(times), 5), "min_s_per_step": round(min(times), 5)}


def main(argv: list[str] | None = None) -> int:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetPipeline

    from engine.models.common.configs import load_config

    args, device, steps = step_bench_setup(argv, __doc__.split("\n\n")[0], gpu_steps=8, cpu_steps=5)
    size = 1024 if device.type == "cuda" else 256
    transformer, label = build_transformer("full" if device.type == "cuda" else "scaled", device)
    controlnet, net_label = build_controlnet(transformer, device)
    vae, vae_handle = tiny_vae(device, transformer.dtype)
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, T5_TOKENS, transformer.config.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, transformer.config.pooled_projection_dim, generator=gen)
    image = torch.rand(1, size, size, 3, generator=gen)
    pipe = FluxControlNetPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(load_config("flux1-dev-scheduler")), vae=vae,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer,
        controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    plain_pipe = make_pipeline(transformer)
    runs = {
        "ours_controlnet": functools.partial(run_ours_control, transformer, controlnet, vae_handle, image, embeds,
                                             pooled, size, steps, device),
        "diffusers_controlnet": functools.partial(run_diffusers_control, pipe, image, embeds, pooled, size, steps,
                                                  device),
        "ours_plain": functools.partial(run_ours, transformer, embeds, pooled, size, size, steps, device),
        "diffusers_plain": functools.partial(run_diffusers, plain_pipe, embeds, pooled, size, size, steps, device),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for _ in range(args.repeats):  # alternate, so drift and other load hit every case alike
            for name, run in runs.items():
                times[name] += run()[1:]
    result = {name: stats(values) for name, values in times.items()}
    ours, theirs = result["ours_controlnet"]["s_per_step"], result["diffusers_controlnet"]["s_per_step"]
    report = {
        **environment(device), "model": label, "controlnet": net_label, "resolution": f"{size}x{size}",
        "image_tokens": (size // 16) ** 2, "text_tokens": T5_TOKENS, "steps": steps, "repeats": args.repeats,
        **result,
        "ratio_ours_over_diffusers_controlnet": round(ours / theirs, 4),
        "ratio_of_minimums_controlnet": round(result["ours_controlnet"]["min_s_per_step"]
                                              / result["diffusers_controlnet"]["min_s_per_step"], 4),
        "controlnet_overhead_ours": round(ours / result["ours_plain"]["s_per_step"], 4),
        "controlnet_overhead_diffusers": round(theirs / result["diffusers_plain"]["s_per_step"], 4),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
