"""Per-step time and peak memory of quantized FLUX.1 weights: bf16, fp8, GGUF Q8_0 and Q4_K, ours next to
diffusers (its bf16 model and its GGUF quantizer), on the same weights in the same run.

    python bench/quantized.py                     # CPU: a FLUX.1-dev of real widths (3072), few blocks
    python bench/quantized.py --double 2 --single 4 --size 256 --text-tokens 512

Prints one JSON document. One random FLUX.1-dev transformer of the real widths with `--double` double and
`--single` single blocks is written in each storage format by the project itself (bf16 and fp8 safetensors
in BFL keys; GGUF Q8_0 and Q4_K with BFL keys for us, the same blocks under diffusers keys for diffusers,
whose single-file converter hard-codes the full-size model) and loaded back from the file by each side:
ours through `load_diffusion_model` (UNETLoader / UnetLoaderGGUF) and `engine.sampling.pipeline.sample`,
diffusers through `from_single_file(..., quantization_config=GGUFQuantizationConfig(compute_dtype=bf16))`
(bf16: `from_single_file` of the bf16 file) and FluxPipeline with precomputed embeddings. Compute dtype
bfloat16 everywhere. A step's time is the median over steps after the first; peak memory is the peak
resident set size during the run (CPU) or max_memory_allocated (CUDA), and `model_bytes` what the loaded
model holds (its parameters and buffers: stored bytes for quantized layers).
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.flux_step import (device_parser, chosen_device, environment, instantiate, make_pipeline,  # noqa: E402
                             measure, run_diffusers, run_ours)

Q8_0, Q4_K = 8, 12


def write_files(folder: Path, double: int, single: int) -> dict[str, Path]:
    """The random scaled-down transformer as bf16 / fp8 safetensors and Q8_0 / Q4_K GGUF (ours: BFL keys;
    "-diffusers": diffusers keys), plus a diffusers config folder."""
    from diffusers import FluxTransformer2DModel

    from engine.models.common.configs import load_config
    from engine.models.common.safetensors_io import save_safetensors
    from engine.models.flux1.keys import bfl_to_diffusers, diffusers_to_bfl
    from engine.models.quant.gguf_file import open_gguf, transformer_state
    from engine.models.quant.gguf_write import save_gguf
    from engine.zoo.quantized import fp8_state

    config = {k: v for k, v in load_config("flux1-dev").items() if not k.startswith("_")}
    config.update(num_layers=double, num_single_layers=single)
    torch.manual_seed(0)
    model = instantiate(FluxTransformer2DModel, config, torch.bfloat16, torch.device("cpu"))
    with torch.no_grad():
        for param in model.parameters():  # the library's init is slow at this size; weights only need a scale
            param.normal_(0, 0.02)
    model.save_config(str(folder / "transformer"))
    bfl = diffusers_to_bfl(model.state_dict())
    del model
    files = {"bf16": save_safetensors(bfl, folder / "bf16.safetensors"),
             "fp8_e4m3fn": save_safetensors(fp8_state(bfl), folder / "fp8.safetensors")}
    for name, qtype in (("Q8_0", Q8_0), ("Q4_K", Q4_K)):
        files[name] = save_gguf(bfl, folder / f"{name}.gguf", "flux", qtype)
        blocks, _ = transformer_state(open_gguf(files[name]), "flux1")
        files[f"{name}-diffusers"] = save_gguf(bfl_to_diffusers(blocks), folder / f"{name}-diffusers.gguf", "flux",
                                               qtype)
    return files


def model_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def load_ours(path: Path, device: torch.device) -> Any:
    from engine.models.flux2.transformer import load_diffusion_model

    return load_diffusion_model(path, compute_dtype=torch.bfloat16).transformer.to(device)


def load_diffusers(path: Path, folder: Path, device: torch.device) -> Any:
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    extra = {"quantization_config": GGUFQuantizationConfig(compute_dtype=torch.bfloat16)} \
        if path.suffix == ".gguf" else {}
    return FluxTransformer2DModel.from_single_file(str(path), config=str(folder), subfolder="transformer",
                                                   torch_dtype=torch.bfloat16, local_files_only=True,
                                                   **extra).to(device)


def bench_one(side: str, model: Any, embeds: Any, pooled: Any, size: int, steps: int, repeats: int,
              device: torch.device) -> dict[str, Any]:
    times: list[float] = []
    peak = rise = None
    with torch.inference_mode():
        for _ in range(repeats):
            if side == "ours":
                run = functools.partial(run_ours, model, embeds, pooled, size, size, steps, device)
            else:
                run = functools.partial(run_diffusers, make_pipeline(model), embeds, pooled, size, size, steps,
                                        device)
            step_times, peak, rise = measure(run, device)
            times += step_times[1:]
    return {"s_per_step": round(statistics.median(times), 4), "min_s_per_step": round(min(times), 4),
            "peak_bytes": peak, "peak_rise_bytes": rise, "model_bytes": model_bytes(model)}


def main(argv: list[str] | None = None) -> int:
    parser = device_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--double", type=int, default=1, help="double-stream blocks (FLUX.1-dev: 19)")
    parser.add_argument("--single", type=int, default=2, help="single-stream blocks (FLUX.1-dev: 38)")
    parser.add_argument("--size", type=int, default=128, help="image width and height")
    parser.add_argument("--text-tokens", type=int, default=128, help="T5 tokens (FluxPipeline's default: 512)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    device = chosen_device(args)
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, args.text_tokens, 4096, generator=gen)
    pooled = torch.randn(1, 768, generator=gen)
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fluxgraph-bench-quantized-") as tmp:
        folder = Path(tmp)
        files = write_files(folder, args.double, args.single)
        for storage in ("bf16", "fp8_e4m3fn", "Q8_0", "Q4_K"):
            case: dict[str, Any] = {"storage": storage, "file_bytes": files[storage].stat().st_size}
            model = load_ours(files[storage], device)
            case["ours"] = bench_one("ours", model, embeds, pooled, args.size, args.steps, args.repeats, device)
            del model
            reference = {"bf16": "bf16", "Q8_0": "Q8_0-diffusers", "Q4_K": "Q4_K-diffusers"}.get(storage)
            if reference is not None:  # diffusers reads no fp8 safetensors as fp8 (it would upcast on load)
                model = load_diffusers(files[reference], folder, device)
                case["diffusers"] = bench_one("diffusers", model, embeds, pooled, args.size, args.steps,
                                              args.repeats, device)
                del model
                case["ratio_ours_over_diffusers_s_per_step"] = round(
                    case["ours"]["s_per_step"] / case["diffusers"]["s_per_step"], 3)
            cases.append(case)
    bf16_step = cases[0]["ours"]["s_per_step"]
    for case in cases:
        case["ours"]["step_over_bf16"] = round(case["ours"]["s_per_step"] / bf16_step, 3)
        case["ours"]["model_bytes_over_file"] = round(case["ours"]["model_bytes"] / case["file_bytes"], 4)
    report = {**environment(device), "model": f"FLUX.1-dev real widths (3072), {args.double} double + "
                                              f"{args.single} single blocks, random weights, bfloat16 compute",
              "resolution": f"{args.size}x{args.size}", "text_tokens": args.text_tokens, "steps": args.steps,
              "repeats": args.repeats, "cases": cases}
    if device.type != "cuda":
        report["note"] = ("no CUDA device: the FLUX.1-dev 1024x1024 figures under an 8 GB budget (peak VRAM, "
                          "step time against the resident bf16 step) are still to be taken")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
