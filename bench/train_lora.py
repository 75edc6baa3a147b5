"""FLUX LoRA training speed and memory: fluxgraph's trainer next to a plain diffusers + peft loop written as
diffusers' train_dreambooth_lora_flux.py does it (cached latents and embeddings, add_adapter with a gaussian
LoraConfig, AdamW, FluxPipeline packing and ids, target = noise - latents), same transformer, same LoRA
targets, rank, batch size and data. Prints one JSON document: optimizer steps per second and peak memory of
each, and their ratios.

Each loop runs in its own process so that peak memory is its own (CPU: the process's maximum resident set;
GPU: torch's peak allocation). The transformer is a scaled-down FLUX.1-dev (2 double + 4 single blocks; 512
wide on the CPU, 3072 wide (the real width) in bf16 on a GPU) whose text widths are the tiny zoo encoders',
so both loops can encode the same captions; images 256x256 on the CPU, 512x512 on a GPU. Caching is not
timed on either side (the first steps are warm-up).

    python bench/train_lora.py [--steps N] [--batch B] [--rank R] [--rounds K]
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

WARMUP_STEPS = 2
TARGETS = "attention"


def build(device: Any) -> tuple[Any, Any, Any]:
    """(model, clip, vae) handles: the scaled-down transformer with the tiny zoo's encoders and VAE."""
    import torch
    from diffusers import FluxTransformer2DModel

    from bench.flux_step import instantiate
    from engine.models.common.configs import load_config
    from engine.models.flux1.variants import flux_model_handle
    from engine.zoo.flux1_tiny import TINY_CLIP, TINY_T5, tiny_components

    _, clip, vae = tiny_components("dev").handles()
    config = {k: v for k, v in load_config("flux1-dev").items() if not k.startswith("_")}
    config.update(num_layers=2, num_single_layers=4, joint_attention_dim=TINY_T5["d_model"],
                  pooled_projection_dim=TINY_CLIP["hidden_size"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type != "cuda":
        config.update(num_attention_heads=4)  # 512 wide
    torch.manual_seed(0)
    transformer = instantiate(FluxTransformer2DModel, config, dtype, device).eval()
    return flux_model_handle(transformer, "dev", source="bench"), clip, vae


def worker_ours(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    from engine.memory.manager import MemoryManager
    from engine.training.flux_lora.config import LoraTrainConfig
    from engine.training.flux_lora.trainer import TrainEvents, train_lora

    model, clip, vae = build(device)
    work = Path(args.work)
    times: list[float] = []

    def on_step(report: Any) -> None:
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter())

    config = LoraTrainConfig(data_dir=args.data, output_dir=str(work / "loras"), state_dir=str(work / "state-ours"),
                             output_name="bench", rank=args.rank, alpha=float(args.rank), target_modules=TARGETS,
                             steps=args.steps + WARMUP_STEPS, batch_size=args.batch, resolution=args.size,
                             guidance=3.5, learning_rate=1e-4, precision="auto", optimizer="adamw",
                             gradient_checkpointing=args.checkpointing)
    train_lora(config, model, clip, vae, MemoryManager(device=device), TrainEvents(on_step=on_step))
    timed = times[WARMUP_STEPS - 1:]
    return {"steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0])}


def worker_plain(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """The diffusers script's loop (train_dreambooth_lora_flux.py with --cache_latents, weighting 'none')."""
    import numpy as np
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling
    from peft import LoraConfig
    from PIL import Image

    from engine.memory.manager import MemoryManager
    from engine.models.common.configs import load_config
    from engine.sampling.text import encode_flux_prompt
    from engine.training.flux_lora.adapters import target_modules
    from engine.training.flux_lora.config import TARGET_PRESETS

    model, clip, vae = build(device)
    transformer = model.transformer
    memory = MemoryManager(device="cpu")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(load_config("flux1-dev-scheduler"))
    data = Path(args.data)
    files = sorted(data.glob("*.png"))
    latents_cache, embeds_cache, pooled_cache = [], [], []
    with torch.no_grad():  # --cache_latents and precomputed prompt embeddings, as the script does
        for path in files:
            pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
            pixels = pixels.permute(2, 0, 1)[None] * 2 - 1
            latent = vae.vae.encode(pixels).latent_dist.sample()
            latents_cache.append((latent - vae.vae.config.shift_factor) * vae.vae.config.scaling_factor)
            caption = path.with_suffix(".txt").read_text()
            embeds, pooled = encode_flux_prompt(clip, caption, caption, memory, t5_max_length=512)
            embeds_cache.append(embeds)
            pooled_cache.append(pooled)
    transformer.requires_grad_(False)
    names = target_modules(transformer, TARGET_PRESETS[TARGETS]["flux1"])
    transformer.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                       target_modules=names))
    params = [p for p in transformer.parameters() if p.requires_grad]
    for param in params:
        param.data = param.data.float()
    if args.checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    transformer.train()
    dtype = next(transformer.parameters()).dtype
    times = []
    for step in range(args.steps + WARMUP_STEPS):
        index = [(step * args.batch + k) % len(files) for k in range(args.batch)]
        model_input = torch.cat([latents_cache[i] for i in index]).to(device, dtype)
        prompt_embeds = torch.cat([embeds_cache[i] for i in index]).to(device, dtype)
        pooled = torch.cat([pooled_cache[i] for i in index]).to(device, dtype)
        bsz, channels, height, width = model_input.shape
        image_ids = FluxPipeline._prepare_latent_image_ids(bsz, height // 2, width // 2, device, dtype)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
        noise = torch.randn_like(model_input)
        u = compute_density_for_timestep_sampling("none", bsz)
        timesteps = scheduler.timesteps[(u * 1000).long()].to(device)
        sigmas = (timesteps / 1000).to(dtype).view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * model_input + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, bsz, channels, height, width)
        guidance = torch.tensor([3.5], device=device).expand(bsz)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                               pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                               img_ids=image_ids, return_dict=False)[0]
        pred = FluxPipeline._unpack_latents(pred, height=height * 8, width=width * 8, vae_scale_factor=8)
        loss = torch.mean(((pred.float() - (noise - model_input).float()) ** 2).reshape(bsz, -1), 1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    timed = times[WARMUP_STEPS - 1:]
    return {"steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0])}


def write_dataset(folder: Path, count: int, size: int) -> Path:
    from tests.support.flux_lora import write_shapes_dataset

    return write_shapes_dataset(folder, count=count, size=size)


def run_worker(kind: str, args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", kind, "--data", str(data), "--work", str(work), "--steps",
               str(args.steps), "--batch", str(args.batch), "--rank", str(args.rank), "--size", str(args.size)]
    if args.checkpointing:
        command.append("--checkpointing")
    return run_measured(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per loop")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--size", type=int, default=0, help="square image size (default: 256 CPU, 512 GPU)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on both sides")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each loop, alternating; the fastest counts")
    parser.add_argument("--worker", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.size = args.size or (512 if cuda else 256)
    if args.worker:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = (worker_ours if args.worker == "ours" else worker_plain)(args, device)
        if cuda:
            result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        print(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="fluxgraph-lora-bench-"))
    data = write_dataset(work / "data", count=max(4, args.batch * 2), size=args.size)
    report: dict[str, Any] = {
        "benchmark": "flux-lora-training",
        "model": ("scaled-down FLUX.1-dev transformer, 2 double + 4 single blocks, "
                  + ("3072 wide, bf16 weights + bf16 autocast" if cuda else "512 wide, float32")),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
        "image_size": args.size, "batch": args.batch, "rank": args.rank, "targets": TARGETS,
        "gradient_checkpointing": args.checkpointing, "timed_steps": args.steps, "rounds": args.rounds}
    alternate_rounds(report, args.rounds, "plain_diffusers_peft", lambda side: run_worker(side, args, data, work))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
