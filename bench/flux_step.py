"""Seconds per sampling step: our FLUX sampler against diffusers' FluxPipeline, same transformer, same run.

    python bench/flux_step.py                 # CUDA when available, else CPU
    python bench/flux_step.py --device cpu --steps 6

Prints one JSON document. Each case runs the same FluxTransformer2DModel through
`engine.sampling.pipeline.sample` (euler + simple, as a KSampler would) and through `FluxPipeline` with
precomputed text embeddings (`output_type="latent"`, so neither side decodes), alternating the two
`--repeats` times; a step's time is taken between consecutive per-step callbacks (CUDA synchronised) and
the median over steps after the first (warm-up) is reported, with the minimum (the least disturbed step
when other work shares the machine). Peak memory: CUDA's max_memory_allocated on a
GPU; on the CPU the peak resident set size during the run (sampled every 2 ms), and its rise above the
level at the start.

Cases: on CUDA the full-size FLUX.1-dev transformer (shipped config) with random bf16 weights at 1024x1024
and 512x512; on the CPU the tiny zoo's transformer and a scaled-down model of the real architecture (real
widths for text/pooled inputs and rope axes, fewer and narrower blocks), in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import functools
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

H100_ANCHOR_S_PER_STEP = 0.1835  # diffusers, eager, FLUX.1-dev 1024x1024, measured on an H100 (issue 4)
T5_TOKENS = 512  # FluxPipeline's default max_sequence_length for dev


class PeakRss:
    """Samples this process's resident set size in a thread while a block runs (Linux /proc)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * self._page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def instantiate(model_class: Any, config: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Any:
    """model_class(**config), its weights created in `dtype` straight on `device`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return model_class(**config)
    finally:
        torch.set_default_dtype(previous)


def build_transformer(kind: str, device: torch.device) -> tuple[Any, str]:
    """(FLUX.1 transformer, label): "tiny" (the zoo's), "scaled" (real input widths, 2 double + 4 single
    blocks, 512 wide), "real" (real widths, 2 double + 4 single blocks) or "full" (full size, bf16)."""
    from diffusers import FluxTransformer2DModel

    from engine.models.common.configs import load_config

    if kind == "tiny":
        from engine.zoo.writer import tiny_components

        return tiny_components("dev").transformer.to(device), "tiny zoo transformer (float32)"
    config = {k: v for k, v in load_config("flux1-dev").items() if not k.startswith("_")}
    if kind == "scaled":
        config.update(num_layers=2, num_single_layers=4, num_attention_heads=4)  # 512 wide, real I/O widths
        dtype, label = torch.float32, "scaled-down FLUX.1-dev (2 double + 4 single blocks, 512 wide, float32)"
    elif kind == "real":
        config.update(num_layers=2, num_single_layers=4)
        dtype, label = torch.float32, "FLUX.1-dev real widths, 2 double + 4 single blocks, float32"
    else:
        dtype, label = torch.bfloat16, "FLUX.1-dev full size, random bf16 weights"
    return instantiate(FluxTransformer2DModel, config, dtype, device).eval(), label


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_times(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


class StepClock:
    """Stamps the time (CUDA synchronised) at the start, unless start=False, and at each step callback."""

    def __init__(self, device: torch.device, start: bool = True) -> None:
        self.device = device
        self.stamps: list[float] = []
        if start:
            self.stamp()

    def stamp(self, *args: Any, **kwargs: Any) -> None:
        _sync(self.device)
        self.stamps.append(time.perf_counter())

    def on_step_end(self, pipeline: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        """diffusers' callback_on_step_end."""
        self.stamp()
        return {}

    def step_times(self) -> list[float]:
        return _step_times(self.stamps)


def run_ours(model: Any, embeds: torch.Tensor, pooled: torch.Tensor, width: int, height: int, steps: int,
             device: torch.device, variant: str = "dev", guidance: float = 3.5,
             references: Sequence[torch.Tensor] = ()) -> list[float]:
    """Step times of our sampler (euler + simple); `references` as ReferenceLatent conditioning (Kontext)."""
    from engine.memory.manager import MemoryManager
    from engine.models.flux1.variants import flux_model_handle
    from engine.sampling.pipeline import Guider, RandomNoise, SamplerChoice, sample, schedule_for
    from engine.sampling.reference import add_reference_latent
    from engine.sampling.schedules import scheduler_sigmas

    handle = flux_model_handle(model, variant, source="bench")
    latent = {"samples": torch.zeros(1, 16, height // 8, width // 8)}
    sigmas = scheduler_sigmas("simple", schedule_for(handle, latent["samples"]), steps)
    cond = [[embeds, {"pooled_output": pooled, "guidance": guidance}]]
    for reference in references:
        cond = add_reference_latent(cond, reference)
    clock = StepClock(device)
    sample(Guider(handle, cond), SamplerChoice("euler"), sigmas, latent, RandomNoise(0),
           memory=MemoryManager(device=device), progress=clock.stamp)
    return clock.step_times()


# diffusers' pipeline and scheduler config for each variant the benchmarks compare
PIPELINES = {"dev": ("FluxPipeline", "flux1-dev-scheduler"),
             "kontext": ("FluxKontextPipeline", "flux1-kontext-scheduler")}


def make_pipeline(model: Any, variant: str = "dev") -> Any:
    import diffusers

    from engine.models.common.configs import load_config

    pipeline_class, scheduler_config = PIPELINES[variant]
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(load_config(scheduler_config))
    pipe = getattr(diffusers, pipeline_class)(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                                              text_encoder_2=None, tokenizer_2=None, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(pipe: Any, embeds: torch.Tensor, pooled: torch.Tensor, width: int, height: int, steps: int,
                  device: torch.device, guidance: float = 3.5, **pipe_kwargs: Any) -> list[float]:
    """Step times of the diffusers pipeline; `pipe_kwargs` go to its call (Kontext: the reference image)."""
    dtype = pipe.transformer.dtype
    clock = StepClock(device)
    pipe(prompt_embeds=embeds.to(device, dtype), pooled_prompt_embeds=pooled.to(device, dtype), width=width,
         height=height, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
         generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=clock.on_step_end, **pipe_kwargs)
    return clock.step_times()


def measure(run: Callable[[], list[float]], device: torch.device) -> tuple[list[float], int | None, int | None]:
    """(step times, peak bytes, rise above the start in bytes)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        times = run()
        peak = torch.cuda.max_memory_allocated(device)
        return times, peak, peak - start
    with PeakRss() as rss:
        times = run()
    return times, rss.peak, rss.peak - rss.start


def bench_case(kind: str, width: int, height: int, steps: int, repeats: int, device: torch.device) -> dict:
    model, label = build_transformer(kind, device)
    joint, pooled_dim = model.config.joint_attention_dim, model.config.pooled_projection_dim
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, T5_TOKENS, joint, generator=gen)
    pooled = torch.randn(1, pooled_dim, generator=gen)
    pipe = make_pipeline(model)
    ours, theirs = [], []
    ours_peak = theirs_peak = ours_rise = theirs_rise = None
    with torch.inference_mode():
        for _ in range(repeats):  # alternate, so drift (clocks, caches, other load) hits both sides
            times, ours_peak, ours_rise = measure(
                functools.partial(run_ours, model, embeds, pooled, width, height, steps, device), device)
            ours += times[1:]
            times, theirs_peak, theirs_rise = measure(
                functools.partial(run_diffusers, pipe, embeds, pooled, width, height, steps, device), device)
            theirs += times[1:]
    ours_step, theirs_step = statistics.median(ours), statistics.median(theirs)
    result = {
        "model": label, "resolution": f"{width}x{height}", "image_tokens": (width // 16) * (height // 16),
        "text_tokens": T5_TOKENS, "steps": steps, "repeats": repeats,
        "ours_s_per_step": round(ours_step, 5), "diffusers_s_per_step": round(theirs_step, 5),
        "ratio_ours_over_diffusers": round(ours_step / theirs_step, 4),
        # the fastest step of each side: least disturbed by other load on a shared machine
        "ours_min_s_per_step": round(min(ours), 5), "diffusers_min_s_per_step": round(min(theirs), 5),
        "ratio_of_minimums": round(min(ours) / min(theirs), 4),
        "ours_peak_bytes": ours_peak, "diffusers_peak_bytes": theirs_peak,
        "ours_peak_rise_bytes": ours_rise, "diffusers_peak_rise_bytes": theirs_rise,
    }
    del pipe, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def step_bench_setup(argv: list[str] | None, description: str, gpu_steps: int, cpu_steps: int
                     ) -> tuple[argparse.Namespace, torch.device, int]:
    """The command line the per-step benchmarks share: (arguments, device, steps per run)."""
    parser = device_parser(description)
    parser.add_argument("--steps", type=int, default=None,
                        help=f"sampling steps per run (default {gpu_steps} GPU, {cpu_steps} CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    args = parser.parse_args(argv)
    device = chosen_device(args)
    return args, device, args.steps or (gpu_steps if device.type == "cuda" else cpu_steps)


def device_parser(description: str) -> argparse.ArgumentParser:
    """A benchmark's command line with --device and --threads (see `chosen_device`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def chosen_device(args: argparse.Namespace) -> torch.device:
    """The device --device names (auto: CUDA when there is one), with --threads applied."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def environment(device: torch.device) -> dict[str, Any]:
    """Where a benchmark ran, for the head of its JSON report."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "diffusers": __import__("diffusers").__version__}


def main(argv: list[str] | None = None) -> int:
    args, device, steps = step_bench_setup(argv, __doc__.split("\n\n")[0], gpu_steps=8, cpu_steps=5)
    if device.type == "cuda":
        cases = [("full", 1024, 1024), ("full", 512, 512)]
    else:
        cases = [("tiny", 256, 256), ("scaled", 256, 256)]
    report = {
        **environment(device),
        "anchor_diffusers_s_per_step_h100_1024": H100_ANCHOR_S_PER_STEP,
        "cases": [bench_case(kind, w, h, steps, args.repeats, device) for kind, w, h in cases],
    }
    if device.type != "cuda":
        report["note"] = "no CUDA device: GPU figures (full-size FLUX.1-dev at 1024 and 512) still to be taken"
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
