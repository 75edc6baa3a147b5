"""Seconds per step and peak memory of a FLUX transformer run under a memory budget: ours against diffusers.

    python bench/offload.py                       # CUDA when available, else CPU
    python bench/offload.py --device cpu --steps 3 --out bench/results/offload-cpu.json

Every configuration runs in a fresh child process (so peak memory is its own) and does one warm-up call and
`--steps` timed calls of the transformer (one call = one denoising step) with fixed inputs.

CUDA: the full-size FLUX.1-dev transformer (shipped config) with random bf16 weights at 1024x1024; ours fully
resident, with a 4 GiB and a 12 GiB budget (`--vram-budget`), next to diffusers eager, diffusers
`enable_group_offload(block_level, 1 block, use_stream=True)` and `enable_model_cpu_offload`. Peak memory is
torch.cuda.max_memory_allocated.

CPU: the budget applies to RAM. The tiny zoo transformer and a scaled-down FLUX.1 (the real block code and
input widths, fewer and narrower blocks) in float32, loaded from a safetensors file; ours fully resident and
with budgets below the model's size (the rest memory-mapped and streamed from the file), next to diffusers
eager (weights read into RAM) and diffusers group offloading to disk (`offload_to_disk_path`, its CPU
equivalent). `enable_model_cpu_offload` needs an accelerator; the error it gives is recorded. Peak memory is
the peak resident set size (VmHWM, file-backed pages included) during the timed steps and over the whole
run, and the baseline of the process before the model was loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GIB = 1 << 30
ISSUE_ANCHOR = {"diffusers group offload (block_level, 1 block, use_stream)": {"s_per_step": 0.58, "peak_gib": 1.76}}
TARGETS = {"ours, 4 GiB budget": "<= 0.45 s/step at <= 4 GiB peak", "ours, 12 GiB budget": "<= 0.30 s/step",
           "ours, fully resident": "no slower than diffusers eager"}
# Scaled-down FLUX.1: real text/pooled widths and rope axes, 4 heads of 128 (512 wide), 4 double + 8 single.
SCALED = dict(num_layers=4, num_single_layers=8, num_attention_heads=4)


# ----------------------------------------------------------------------------- measurements (child side)
def rss_now() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def model_config(kind: str) -> dict[str, Any]:
    from engine.models.common.configs import load_config
    from engine.zoo.flux1_tiny import TINY_TRANSFORMER

    config = {k: v for k, v in load_config("flux1-dev").items() if not k.startswith("_")}
    if kind == "tiny":
        config.update(TINY_TRANSFORMER)
    elif kind == "scaled":
        config.update(SCALED)
    return config


def step_inputs(config: dict[str, Any], size: int, text_tokens: int, device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    tokens = (size // 16) ** 2
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, tokens, config["in_channels"], generator=g).to(device, dtype),
                encoder_hidden_states=torch.randn(1, text_tokens, config["joint_attention_dim"], generator=g)
                .to(device, dtype),
                pooled_projections=torch.randn(1, config["pooled_projection_dim"], generator=g).to(device, dtype),
                timestep=torch.tensor([0.5], device=device, dtype=dtype),
                img_ids=torch.zeros(tokens, 3, device=device), txt_ids=torch.zeros(text_tokens, 3, device=device),
                guidance=torch.tensor([3.5], device=device, dtype=dtype), return_dict=False)


def timed_steps(call: Any, steps: int, device: Any) -> list[float]:
    import torch

    times = []
    with torch.no_grad():
        for _ in range(steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return times


def run_interleaved(cases: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Seconds per step of several configurations of one model, called round-robin in one process, so that
    load from other work on the machine hits them alike (memory figures come from the separate runs)."""
    import torch

    device = torch.device(cases[0]["device"])
    config = model_config(cases[0]["model"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = step_inputs(config, cases[0]["size"], cases[0]["text_tokens"], device, dtype)
    times: dict[str, list[float]] = {c["label"]: [] for c in cases}
    with contextlib.ExitStack() as stack:
        runners = []
        for case in cases:
            module, _manager, context = prepare(case, config, device, dtype)
            stack.enter_context(context)
            runners.append((case["label"], module))
        with torch.no_grad():
            for _, module in runners:
                module(**inputs)  # warm-up
            for _ in range(rounds):
                for label, module in runners:
                    started = time.perf_counter()
                    module(**inputs)
                    times[label].append(time.perf_counter() - started)
    return {label: {"min_s_per_step": round(min(t), 4), "median_s_per_step": round(statistics.median(t), 4)}
            for label, t in times.items()}


def run_child(case: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    device = torch.device(case["device"])
    config = model_config(case["model"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = step_inputs(config, case["size"], case["text_tokens"], device, dtype)
    import diffusers  # noqa: F401 - imported before the baseline: the libraries are not the model
    import engine.models.flux1.transformer  # noqa: F401

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_now()["VmRSS"]
    started = time.perf_counter()
    module, manager, context = prepare(case, config, device, dtype)
    load_seconds = time.perf_counter() - started
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        stack.enter_context(context)  # ours: placing the weights (copies, pinning) happens here
        out["place_seconds"] = round(time.perf_counter() - started, 3)
        out["peak_rss_load_bytes"] = rss_now()["VmHWM"]
        reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = timed_steps(lambda: module(**inputs), case["steps"], device)
        out["peak_rss_steps_bytes"] = rss_now()["VmHWM"]
        if manager is not None:
            out["placement"] = manager.stats()["models"]
    out.update(load_seconds=round(load_seconds, 3), first_call_s=round(times[0], 4),
               s_per_step=round(statistics.median(times[1:]), 4), min_s_per_step=round(min(times[1:]), 4),
               baseline_rss_bytes=baseline, model_bytes=sum(p.numel() * p.element_size() for p in module.parameters()))
    if device.type == "cuda":
        out["peak_vram_bytes"] = int(torch.cuda.max_memory_allocated())
        out["peak_vram_gib"] = round(out["peak_vram_bytes"] / GIB, 3)
        out["peak_vram_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return out


def prepare(case: dict[str, Any], config: dict[str, Any], device: Any, dtype: Any) -> tuple[Any, Any, Any]:
    """(module to call, our manager or None, context to run in) for one configuration."""
    kind = case["kind"]
    if kind.startswith("ours"):
        from engine.memory.manager import MemoryManager
        from engine.memory.budget import MemorySettings

        module = build_or_load(case, config, device, dtype)
        settings = MemorySettings(budget_bytes=case.get("budget_bytes"), reserve_bytes=case.get("reserve_bytes"),
                                  device=str(device))
        manager = MemoryManager(settings=settings)
        return module, manager, manager.use(module)
    module = build_or_load(case, config, device, dtype)
    if kind == "diffusers eager":
        return module.to(device), None, contextlib.nullcontext()
    if kind == "diffusers group offload":
        offload = dict(onload_device=device, offload_device=torch_device("cpu"), offload_type="block_level",
                       num_blocks_per_group=1)
        if device.type == "cuda":
            offload.update(use_stream=True)
        else:
            offload.update(offload_to_disk_path=tempfile.mkdtemp(prefix="fg-offload-", dir=case["work_dir"]))
        module.enable_group_offload(**offload)
        return module, None, contextlib.nullcontext()
    if kind == "diffusers model cpu offload":
        from diffusers import FluxPipeline

        pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=module)
        pipe.enable_model_cpu_offload(device=device)
        return module, None, contextlib.nullcontext()
    raise ValueError(f"unknown configuration {kind!r}")


def torch_device(name: str) -> Any:
    import torch

    return torch.device(name)


def build_or_load(case: dict[str, Any], config: dict[str, Any], device: Any, dtype: Any) -> Any:
    """CPU: from the safetensors file (ours memory-mapped, diffusers' read into RAM). CUDA: random weights
    built in CPU memory (the manager or the offloading hooks move them)."""
    import torch
    from diffusers import FluxTransformer2DModel

    if device.type == "cpu":
        if case["kind"].startswith("ours"):
            from engine.models.flux1.transformer import load_flux_transformer

            return load_flux_transformer(case["file"], variant="dev").transformer
        from safetensors.torch import load_file

        with torch.device("meta"):
            module = FluxTransformer2DModel(**config)
        module.load_state_dict(load_file(case["file"]), assign=True)
        return module.eval().requires_grad_(False)
    with torch.device("meta"):
        module = FluxTransformer2DModel(**config)
    generator = torch.Generator().manual_seed(0)
    for name, param in list(module.named_parameters()):
        owner, _, attr = name.rpartition(".")
        weight = torch.empty(param.shape, dtype=dtype).normal_(0.0, 0.02, generator=generator)
        setattr(module.get_submodule(owner), attr, torch.nn.Parameter(weight, requires_grad=False))
    for owner, attr, buf in [(m, n, b) for m in module.modules() for n, b in m._buffers.items() if b is not None]:
        owner._buffers[attr] = torch.zeros(buf.shape, dtype=buf.dtype)
    return module.eval()


# ----------------------------------------------------------------------------- the cases (parent side)
def write_model_file(kind: str, work_dir: Path) -> Path:
    import torch
    from diffusers import FluxTransformer2DModel

    from engine.models.common.safetensors_io import save_safetensors

    path = work_dir / f"flux-{kind}.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        module = FluxTransformer2DModel(**model_config(kind))
        save_safetensors(module.state_dict(), path)
    return path


def streaming_sizes(path: Path) -> tuple[int, int, int]:
    """(weight bytes, smallest budget that can stream: base + two-block window, smallest block)."""
    from engine.models.flux1.transformer import load_flux_transformer
    from engine.memory.layout import BASE, split_module

    parts = split_module(load_flux_transformer(path, variant="dev").transformer)  # mapped: nothing read
    blocks = [p.nbytes for p in parts if p.block]
    base = sum(p.nbytes for p in parts if p.name == BASE)
    return sum(p.nbytes for p in parts), base + 2 * max(blocks), min(blocks)


def cpu_cases(args: argparse.Namespace, work_dir: Path) -> list[dict[str, Any]]:
    cases = []
    for kind, size, text in (("tiny", 128, 64), ("scaled", 256, 256)):
        path = write_model_file(kind, work_dir)
        weights, least, block = streaming_sizes(path)
        common = dict(device="cpu", model=kind, size=size, text_tokens=text, steps=args.steps, file=str(path),
                      work_dir=str(work_dir), weight_bytes=weights)
        cases.append(dict(common, kind="diffusers eager", label="diffusers eager (weights read into RAM)"))
        cases.append(dict(common, kind="ours", label="ours, fully resident (memory-mapped)"))
        budgets = {int(weights * f): f"{f:.0%} of the weights" for f in (0.75, 0.5) if weights * f >= least + block}
        budgets[least + block] = "base + window + one block"
        for budget, why in sorted(budgets.items(), reverse=True):
            cases.append(dict(common, kind="ours", budget_bytes=budget, reserve_bytes=0,
                              label=f"ours, budget {budget / (1 << 20):.1f} MiB ({why})"))
        cases.append(dict(common, kind="diffusers group offload",
                          label="diffusers group offload (block_level, 1 block, to disk)"))
        cases.append(dict(common, kind="diffusers model cpu offload",
                          label="diffusers enable_model_cpu_offload (CPU: nothing to offload to)"))
    return cases


def cuda_cases(args: argparse.Namespace, work_dir: Path) -> list[dict[str, Any]]:
    common = dict(device="cuda", model="full", size=1024, text_tokens=512, steps=args.steps, work_dir=str(work_dir))
    return [dict(common, kind="diffusers eager", label="diffusers eager"),
            dict(common, kind="ours", label="ours, fully resident"),
            dict(common, kind="ours", budget_bytes=4 * GIB, label="ours, 4 GiB budget"),
            dict(common, kind="ours", budget_bytes=12 * GIB, label="ours, 12 GiB budget"),
            dict(common, kind="diffusers group offload",
                 label="diffusers group offload (block_level, 1 block, use_stream)"),
            dict(common, kind="diffusers model cpu offload", label="diffusers enable_model_cpu_offload")]


def run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    result = {k: v for k, v in case.items() if k not in ("file", "work_dir")}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        result.update(json.loads(lines[-1]))
    else:
        tail = (done.stderr or done.stdout).strip().splitlines()
        result["error"] = tail[-1] if tail else f"exit status {done.returncode}"
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if "peak_rss_steps_bytes" in result:
        mib = 1 << 20
        result["peak_rss_steps_mib"] = round(result["peak_rss_steps_bytes"] / mib, 1)
        result["peak_rss_above_baseline_mib"] = round((result["peak_rss_steps_bytes"]
                                                       - result["baseline_rss_bytes"]) / mib, 1)
    return result


def run_interleaved_child(cases: list[dict[str, Any]], rounds: int, timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--rounds", str(rounds), "--interleave", json.dumps(cases)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (done.stderr or done.stdout).strip().splitlines()
    return {"error": tail[-1] if tail else f"exit status {done.returncode}"}


def machine() -> dict[str, Any]:
    import diffusers
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up call")
    parser.add_argument("--out", default=None, help="JSON file (default bench/results/offload-<device>.json)")
    parser.add_argument("--work-dir", default=None, help="where model files and disk offloads go")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--rounds", type=int, default=4,
                        help="CPU: rounds of the interleaved timing of all configurations in one process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--interleave", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    if args.interleave:
        print(json.dumps(run_interleaved(json.loads(args.interleave), args.rounds)), flush=True)
        return
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="fg-bench-offload-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    cases = cuda_cases(args, work_dir) if device == "cuda" else cpu_cases(args, work_dir)
    results = []
    for case in cases:
        result = run_case(case, args.timeout)
        results.append(result)
        shown = {k: result.get(k) for k in ("s_per_step", "peak_rss_steps_bytes", "peak_vram_gib", "error")}
        print(f"{case['model']:>6} | {case['label']:<60} | {shown}", file=sys.stderr, flush=True)
    interleaved = {}
    if device == "cpu":  # a shared CPU machine: compare speeds side by side as well
        for model in sorted({c["model"] for c in cases}):
            group = [c for c in cases if c["model"] == model and "model cpu offload" not in c["kind"]]
            interleaved[model] = run_interleaved_child(group, args.rounds, args.timeout)
            print(f"{model:>6} | interleaved: {interleaved[model]}", file=sys.stderr, flush=True)
    notes = ["seconds per step: median (and min) of the timed calls in each configuration's own process; "
             "interleaved_timing: the same configurations called round-robin in one process (fairer on a "
             "shared machine; its memory figures are not separable)",
             "peak_rss_*: VmHWM, file-backed pages of memory-mapped weights included; baseline_rss_bytes: the "
             "process with torch and diffusers imported, before the model"]
    if device == "cpu":
        notes.append("GPU figures (full-size FLUX.1-dev, 1024x1024, 4 and 12 GiB budgets) are still to be "
                     "taken: run this script on a CUDA machine")
    report = {"bench": "offload", "device": device, "machine": machine(), "steps": args.steps, "notes": notes,
              "interleaved_timing": interleaved,
              "issue_anchor": ISSUE_ANCHOR if device == "cuda" else None,
              "targets": TARGETS if device == "cuda" else None,
              "results": results}
    out = Path(args.out or ROOT / "bench" / "results" / f"offload-{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
