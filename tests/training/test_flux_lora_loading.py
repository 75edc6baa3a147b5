"""A LoRA trained here loads in our LoraLoaderModelOnly and in diffusers' `load_lora_weights`, and both give the
same image (tiny FLUX.1 dev and FLUX.2 klein from the zoo's files)."""

from __future__ import annotations

import pytest
import torch

from engine.backends.runtime import Runtime
from engine.core.folders import FolderPaths
from engine.core.registry import NodeRegistry
from engine.memory.manager import MemoryManager
from engine.training.flux_lora.config import LoraTrainConfig
from engine.training.flux_lora.models import load_training_models
from engine.training.flux_lora.trainer import train_lora
from tests.support.flux import capture_image, run_prompt, txt2img_prompt, zoo_base
from tests.support.flux2 import flux2_graph
from tests.support.flux_lora import training_base, write_shapes_dataset

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

TOLERANCE = 1e-4
SENSITIVITY = 0.01
PROMPT = "a sks red circle on a table"


def _train(base, tmp_path, name: str, **models) -> str:
    data = write_shapes_dataset(tmp_path / f"data-{name}", count=2)
    folders = FolderPaths(base)
    config = LoraTrainConfig(data_dir=str(data), output_name=name, output_dir=str(base / "models" / "loras"),
                             state_dir=str(tmp_path / f"state-{name}"), rank=4, alpha=8.0, steps=6,
                             learning_rate=0.02, resolution=64, guidance=3.5, target_modules="attention+mlp",
                             **models)
    model, clip, vae = load_training_models(config, folders)
    result = train_lora(config, model, clip, vae, MemoryManager(device="cpu"))
    return result.lora_path.name


def _runtime(base):
    registry = NodeRegistry().discover("nodes")
    registry.register(capture_image)
    return Runtime.create(base, registry=registry, models=MemoryManager(device="cpu"))


def _with_lora(graph: dict, sampler_node: str, name: str) -> dict:
    graph["40"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": name,
                                                                   "strength_model": 1.0}}
    graph[sampler_node]["inputs"]["model"] = ["40", 0]
    return graph


def test_flux1_dev_lora_loads_in_our_loader_and_diffusers_alike(tmp_path):
    from diffusers import FluxPipeline

    base = training_base(tmp_path / "base")
    name = _train(base, tmp_path, "dev-trained", unet="flux1-dev-tiny.safetensors",
                  clip=["t5xxl-tiny.safetensors", "clip_l-tiny.safetensors"], vae="ae-tiny.safetensors")
    runtime = _runtime(base)
    graph = txt2img_prompt("dev", seed=5, steps=3, prompt=PROMPT)
    plain, _ = run_prompt(runtime, graph)
    ours, _ = run_prompt(runtime, _with_lora(txt2img_prompt("dev", seed=5, steps=3, prompt=PROMPT), "9", name))

    pipe = FluxPipeline.from_pretrained(str(zoo_base() / "models" / "diffusers" / "flux1-dev-tiny"),
                                        torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(base / "models" / "loras" / name))
    expected = pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=3, guidance_scale=3.5,
                    max_sequence_length=256, generator=torch.Generator("cpu").manual_seed(5),
                    output_type="pt").images.permute(0, 2, 3, 1)
    assert float((ours - plain).abs().mean()) >= SENSITIVITY  # the trained LoRA really changes the image
    assert float((ours - expected).abs().max()) <= TOLERANCE


def test_flux2_klein_lora_loads_in_our_loader_and_diffusers_alike(tmp_path):
    from engine.zoo.flux2 import tiny_flux2

    base = training_base(tmp_path / "base")
    name = _train(base, tmp_path, "klein-trained", unet="flux2-klein-4b-tiny.safetensors",
                  clip=["qwen3-4b-tiny.safetensors"], vae="flux2-vae-tiny.safetensors")
    runtime = _runtime(base)
    plain, _ = run_prompt(runtime, flux2_graph("klein", seed=6, steps=3, prompt=PROMPT))
    ours, _ = run_prompt(runtime, _with_lora(flux2_graph("klein", seed=6, steps=3, prompt=PROMPT), "8", name))

    pipe = tiny_flux2("klein").pipeline()
    pipe.load_lora_weights(str(base / "models" / "loras" / name))
    expected = pipe(prompt=PROMPT, height=48, width=64, num_inference_steps=3,
                    generator=[torch.Generator().manual_seed(6)], output_type="pt").images.permute(0, 2, 3, 1)
    assert float((ours - plain).abs().mean()) >= SENSITIVITY
    assert float((ours - expected).abs().max()) <= TOLERANCE


def test_training_on_an_fp8_base_keeps_the_base_quantised(tmp_path):
    """QLoRA-style: the frozen base stays fp8 (UNETLoader's weight_dtype), the adapters train in float32, and
    the fp8 modules come back unchanged afterwards."""
    base = training_base(tmp_path / "base")
    data = write_shapes_dataset(tmp_path / "data", count=2)
    config = LoraTrainConfig(data_dir=str(data), output_name="fp8", output_dir=str(base / "models" / "loras"),
                             state_dir=str(tmp_path / "state"), rank=4, alpha=4.0, steps=3, resolution=64,
                             learning_rate=0.01, unet="flux1-dev-tiny.safetensors",
                             clip=["t5xxl-tiny.safetensors", "clip_l-tiny.safetensors"], vae="ae-tiny.safetensors",
                             weight_dtype="fp8_e4m3fn")
    model, clip, vae = load_training_models(config, FolderPaths(base))
    layer = model.transformer.transformer_blocks[0].attn.to_q
    before = layer.weight.detach().clone()
    result = train_lora(config, model, clip, vae, MemoryManager(device="cpu"))
    assert all(torch.isfinite(torch.tensor(result.losses)))
    after = model.transformer.transformer_blocks[0].attn.to_q
    assert after is layer and after.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(after.weight.view(torch.uint8), before.view(torch.uint8))
    from safetensors.torch import load_file

    tensors = load_file(str(result.lora_path))
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if k.endswith("lora_B.weight"))


def test_training_on_a_gguf_base_equals_training_on_its_dequantized_copy(tmp_path):
    """QLoRA-style on GGUF: the Q8_0 blocks stay as stored and each step sees exactly the dequantized weights,
    so the losses and the LoRA equal a run on a float copy of the same weights."""
    from safetensors.torch import load_file

    from engine.models.common.safetensors_io import save_safetensors
    from engine.models.flux1.keys import diffusers_to_bfl
    from engine.models.quant.layers import quantized_layers
    from tests.parity.test_quantized_parity import exact_dequantized_state

    base = training_base(tmp_path / "base")
    data = write_shapes_dataset(tmp_path / "data", count=2)
    copy_name = "flux1-dev-tiny-Q8_0-dequantized-tiny.safetensors"  # the name the quantized parity test writes
    save_safetensors(diffusers_to_bfl(exact_dequantized_state("flux1-dev-tiny-Q8_0.gguf")),
                     zoo_base() / "models" / "diffusion_models" / copy_name, {"fluxgraph.variant": "dev"})
    runs = {}
    for unet in ("flux1-dev-tiny-Q8_0.gguf", copy_name):
        config = LoraTrainConfig(data_dir=str(data), output_name=unet.split(".")[0] + "-lora",
                                 output_dir=str(base / "models" / "loras"), state_dir=str(tmp_path / unet),
                                 rank=4, alpha=4.0, steps=3, resolution=64, learning_rate=0.01, unet=unet,
                                 clip=["t5xxl-tiny.safetensors", "clip_l-tiny.safetensors"], vae="ae-tiny.safetensors")
        model, clip, vae = load_training_models(config, FolderPaths(base), dtype=torch.float32)
        layers = quantized_layers(model.transformer)
        stored = {name: layer.state_dict() for name, layer in layers.items()}
        result = train_lora(config, model, clip, vae, MemoryManager(device="cpu"))
        if unet.endswith(".gguf"):
            assert layers, "the GGUF base was not kept quantized"
            after = quantized_layers(model.transformer)
            assert all(torch.equal(a, b) for name in stored for a, b in
                       zip(stored[name].values(), after[name].state_dict().values()))
        runs[unet] = (result.losses, load_file(str(result.lora_path)))
    (gguf_losses, gguf_lora), (copy_losses, copy_lora) = runs.values()
    assert max(abs(a - b) for a, b in zip(gguf_losses, copy_losses)) <= 1e-4
    assert gguf_lora.keys() == copy_lora.keys()
    assert max(float((gguf_lora[k] - copy_lora[k]).abs().max()) for k in gguf_lora) <= 1e-4
    assert any(float(t.abs().max()) > 0 for k, t in gguf_lora.items() if k.endswith("lora_B.weight"))
