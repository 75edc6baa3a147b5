"""LoRA apply / strength change / removal: our patching next to diffusers' load_lora_weights + fuse_lora.

    python bench/lora.py                      # CUDA: full-size FLUX.1-dev (random bf16); CPU: scaled-down
    python bench/lora.py --model real         # CPU anchor shape: real widths, 2 double + 4 single blocks
    python bench/lora.py --rank 32 --repeats 3

Prints one JSON document. One rank-`--rank` LoRA on every attention and MLP linear of the blocks (44 linears
for 2 double + 4 single blocks), written once as a diffusers/PEFT file that both sides read. Same
transformer, same run, each operation repeated `--repeats` times (median reported):
- ours: apply = read + convert the file (`engine.models.lora.loader.apply_lora`) + patch the weights
  (`apply_patches`); change strength = new handle + re-patch (originals restored first); remove = restore.
  Our weights after removal are compared with the originals (max abs difference, expected 0).
- diffusers: apply = load_lora_weights + fuse_lora; change strength = unfuse_lora + fuse_lora(new scale),
  and the full reload (unload_lora_weights + load_lora_weights + fuse_lora); remove = unfuse_lora +
  unload_lora_weights (its restore error is reported too); set_adapters on unfused adapters, and the extra
  time those unfused adapters cost on every step (one transformer forward with and without them).
Our per-step cost is that of the plain model (the weights are patched, nothing runs per step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from flux_step import _sync, build_transformer  # noqa: E402

CPU_ANCHOR = {"load_lora_weights_s": 0.065, "fuse_lora_s": 5.2, "unfuse_lora_s": 5.1, "set_adapters_s": 0.0015}
TARGET_SPEEDUP = 5.0


def build(kind: str, device: torch.device) -> tuple[Any, str]:
    model, label = build_transformer(kind, device)
    return model.requires_grad_(False), label


def lora_targets(model: Any) -> list[str]:
    """Every attention and MLP linear of the blocks (no modulation, embedder or output layers)."""
    from torch import nn

    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith(("transformer_blocks.", "single_transformer_blocks.")) \
                and ".norm" not in name:
            names.append(name)
    return names


def write_lora(model: Any, rank: int, path: Path) -> int:
    from engine.models.common.safetensors_io import save_safetensors

    gen = torch.Generator().manual_seed(0)
    modules = dict(model.named_modules())
    state = {}
    for name in lora_targets(model):
        linear = modules[name]
        state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=gen) * 0.01
        state[f"transformer.{name}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=gen) * 0.01
    save_safetensors({k: v.to(model.dtype) for k, v in state.items()}, path)
    return len(state) // 2


def timed(run: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def max_weight_diff(model: Any, originals: dict[str, torch.Tensor]) -> float:
    return max(float((p.detach().float() - originals[n].float()).abs().max()) for n, p in model.named_parameters())


def bench_ours(model: Any, path: Path, repeats: int, device: torch.device) -> dict:
    from engine.models.lora.loader import _CACHE, apply_lora
    from engine.models.lora.patch import apply_patches, patches_for, restore_weights
    from engine.models.flux1.variants import flux_model_handle

    base = flux_model_handle(model, "dev", source="bench")
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply, change, remove = [], [], []
    from engine.models.lora.deltas import DELTAS

    for _ in range(repeats):
        _CACHE.clear()  # a first apply reads and converts the file (and multiplies the deltas)
        DELTAS.clear()

        def first() -> None:
            handle = apply_lora(path, base, None, 1.0, 0.0).model
            with apply_patches(model, patches_for(handle.patches, "transformer")):
                pass

        def strength() -> None:
            handle = apply_lora(path, base, None, 0.5, 0.0).model
            with apply_patches(model, patches_for(handle.patches, "transformer")):
                pass

        apply.append(timed(first, device))
        change.append(timed(strength, device))
        remove.append(timed(lambda: restore_weights(model), device))
    summary = summarise({"apply_s": apply, "change_strength_s": change, "remove_s": remove})
    summary["restore_max_abs_error"] = max_weight_diff(model, originals)
    return summary


def bench_diffusers(model: Any, path: Path, repeats: int, device: torch.device, width: int) -> dict:
    from diffusers import FluxPipeline

    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=model)
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    times: dict[str, list[float]] = {k: [] for k in ("load", "fuse", "change", "reload", "unfuse", "set_adapters")}
    restore_error = 0.0
    for _ in range(repeats):
        times["load"].append(timed(lambda: pipe.load_lora_weights(str(path), adapter_name="bench"), device))
        times["fuse"].append(timed(lambda: pipe.fuse_lora(lora_scale=1.0), device))
        times["change"].append(timed(lambda: (pipe.unfuse_lora(), pipe.fuse_lora(lora_scale=0.5)), device))

        def reload() -> None:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
            pipe.load_lora_weights(str(path), adapter_name="bench")
            pipe.fuse_lora(lora_scale=0.25)

        times["reload"].append(timed(reload, device))
        times["unfuse"].append(timed(lambda: (pipe.unfuse_lora(), pipe.unload_lora_weights()), device))
        restore_error = max(restore_error, max_weight_diff(model, originals))
    pipe.load_lora_weights(str(path), adapter_name="bench")
    for weight in (0.5, 1.0, 0.75):
        times["set_adapters"].append(timed(lambda w=weight: pipe.set_adapters(["bench"], [w]), device))
    step = forward(model, device, width)
    plain, unfused = [], []
    for _ in range(max(repeats, 2)):  # alternate, so other load on the machine hits both alike
        pipe.disable_lora()
        plain.append(timed(step, device))
        pipe.enable_lora()
        unfused.append(timed(step, device))
    pipe.unload_lora_weights()
    out = {"load_lora_weights_s": times["load"], "fuse_lora_s": times["fuse"],
           "apply_s": [a + b for a, b in zip(times["load"], times["fuse"])],
           "change_strength_unfuse_fuse_s": times["change"], "change_strength_reload_s": times["reload"],
           "remove_s": times["unfuse"], "set_adapters_s": times["set_adapters"], "plain_step_s": plain,
           "unfused_adapters_step_s": unfused}
    summary = summarise(out)
    summary["unfused_adapters_extra_per_step_s"] = summary["unfused_adapters_step_s"] - summary["plain_step_s"]
    summary["restore_max_abs_error"] = restore_error
    return summary


def summarise(samples: dict[str, list[float]]) -> dict[str, float]:
    """The minimum of each timing (the least disturbed run on a shared machine) and its median."""
    out: dict[str, float] = {}
    for key, values in samples.items():
        out[key] = min(values)
        out[key[: -len("_s")] + "_median_s"] = statistics.median(values)
    return out


def forward(model: Any, device: torch.device, width: int) -> Callable[[], None]:
    """One transformer forward at width x width with 512 text tokens (a sampling step without CFG)."""
    gen = torch.Generator().manual_seed(1)
    tokens = (width // 16) ** 2
    dtype = model.dtype
    kwargs = dict(hidden_states=torch.randn(1, tokens, 64, generator=gen).to(device, dtype),
                  encoder_hidden_states=torch.randn(1, 512, model.config.joint_attention_dim, generator=gen).to(
                      device, dtype),
                  pooled_projections=torch.randn(1, model.config.pooled_projection_dim, generator=gen).to(
                      device, dtype),
                  timestep=torch.tensor([0.5], device=device, dtype=dtype),
                  guidance=torch.tensor([3.5], device=device), txt_ids=torch.zeros(512, 3, device=device),
                  img_ids=torch.zeros(tokens, 3, device=device), return_dict=False)

    def run() -> None:
        with torch.inference_mode():
            model(**kwargs)

    run()  # warm-up
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None)
    parser.add_argument("--model", choices=["full", "real", "scaled"], default=None,
                        help="full-size (GPU default), real widths with 6 blocks, or scaled-down (CPU default)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=None, help="image size of the per-step measurement")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = args.model or ("full" if device.type == "cuda" else "scaled")
    width = args.width or (1024 if device.type == "cuda" else 256)
    model, label = build(kind, device)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench_lora.safetensors"
        linears = write_lora(model, args.rank, path)
        ours = bench_ours(model, path, args.repeats, device)
        theirs = bench_diffusers(model, path, args.repeats, device, width)
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(), "model": label, "lora_rank": args.rank, "lora_linears": linears,
        "step_measured_at": f"{width}x{width}", "repeats": args.repeats,
        "ours": {k: round(v, 6) if isinstance(v, float) else v for k, v in ours.items()},
        "diffusers": {k: round(v, 6) if isinstance(v, float) else v for k, v in theirs.items()},
        "ours_extra_per_step_s": 0.0,
        "speedup_change_strength_vs_diffusers_reload": round(theirs["change_strength_reload_s"]
                                                              / ours["change_strength_s"], 2),
        "speedup_apply_vs_diffusers": round(theirs["apply_s"] / ours["apply_s"], 2),
        "speedup_remove_vs_diffusers": round(theirs["remove_s"] / max(ours["remove_s"], 1e-9), 1),
        "speedup_change_strength_vs_diffusers_unfuse_fuse": round(theirs["change_strength_unfuse_fuse_s"]
                                                                   / ours["change_strength_s"], 2),
        "target_speedup": TARGET_SPEEDUP,
        "cpu_anchor_real_widths": CPU_ANCHOR,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
