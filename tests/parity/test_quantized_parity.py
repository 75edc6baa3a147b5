"""Quantized FLUX.1 files through our graph: the same image as the reference on the same weights.

- GGUF (Q8_0 and Q4_K, the tiny zoo's files through UnetLoaderGGUF) against FluxPipeline whose transformer
  holds the file's weights decoded by gguf-py's own dequantizer in float32: within 1e-4 (we dequantize in
  float32 too, per layer).
- The same GGUF against diffusers' GGUF path (`from_single_file(..., quantization_config=GGUFQuantization
  Config(compute_dtype=float32))`) in FluxPipeline. diffusers multiplies the block scales in float16
  (docs/models.md, "Quantized files"), so its weights differ from the exact ones by float16 roundings
  (2^-11 of a 32-weight group's magnitude, one for Q8_0, four for K-quants); the test checks that bound
  weight by weight, then that our image differs from diffusers' by no more than diffusers' own distance
  from the exact image plus 1e-4.
- fp8 and scaled-fp8 files against the same files dequantized up front (ComfyUI's formula, float32): the
  per-layer upcast computes the same numbers, so the images agree within 1e-6.
- LoRA on the GGUF model against LoRA on its dequantized copy; removing the LoRA restores the image exactly.

Everything in float32; the reference pipeline loads the zoo's diffusers folder.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.support.flux import make_runtime, run_prompt, txt2img_prompt, zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TOLERANCE = 1e-4
STEPS, SEED, SIZE = 4, 7, 64


@pytest.fixture(scope="module")
def runtime():
    """The zoo runtime computing in float32 (GGUF files otherwise compute in bfloat16, docs/models.md)."""
    from engine.backends.runtime import Runtime
    from engine.memory.manager import MemoryManager

    base = make_runtime()
    return Runtime.create(zoo_base(), registry=base.registry, models=MemoryManager(device="cpu", dtype=torch.float32))


def _models():
    return zoo_base() / "models"


def graph_for(unet: str, *, gguf: bool = False, lora: tuple[str, float] | None = None, key: str = "out") -> dict:
    graph = txt2img_prompt("dev", width=SIZE, height=SIZE, seed=SEED, steps=STEPS, key=key)
    if gguf:
        graph["1"] = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": unet}}
    else:
        graph["1"]["inputs"]["unet_name"] = unet
    for node in graph.values():
        if node["class_type"] == "CLIPTextEncode":
            node["inputs"]["t5_max_length"] = 512  # FluxPipeline's length
    if lora is not None:
        graph["30"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora[0],
                                                                       "strength_model": lora[1]}}
        graph["9"]["inputs"]["model"] = ["30", 0]
    return graph


def exact_dequantized_state(name: str) -> dict[str, torch.Tensor]:
    """The GGUF file's transformer decoded by gguf-py (numpy, float32), in diffusers keys."""
    import gguf

    from engine.models.flux1.keys import bfl_to_diffusers

    reader = gguf.GGUFReader(str(_models() / "diffusion_models" / name))
    bfl = {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype("float32").copy())
           .reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    return bfl_to_diffusers(bfl)


@functools.lru_cache(maxsize=None)
def _pipeline():
    from diffusers import FluxPipeline

    folder = _models() / "diffusers/flux1-dev-tiny"
    pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_image(transformer=None, state=None) -> torch.Tensor:
    import copy

    pipe = _pipeline()
    if state is not None:
        transformer = copy.deepcopy(pipe.transformer)
        transformer.load_state_dict(state, strict=True)
    from diffusers import FluxPipeline

    run = FluxPipeline(**{**pipe.components, "transformer": transformer or pipe.transformer})
    run.set_progress_bar_config(disable=True)
    images = run(prompt=["a photo of a cat sitting on a red sofa"], width=SIZE, height=SIZE,
                 num_inference_steps=STEPS, guidance_scale=3.5, generator=[torch.Generator("cpu").manual_seed(SEED)],
                 output_type="pt").images
    return images.permute(0, 2, 3, 1)


@pytest.mark.parametrize("name", ["flux1-dev-tiny-Q8_0.gguf", "flux1-dev-tiny-Q4_K.gguf"])
def test_gguf_graph_matches_pipeline_on_exactly_dequantized_weights(runtime, name):
    ours, _ = run_prompt(runtime, graph_for(name, gguf=True))
    expected = reference_image(state=exact_dequantized_state(name))
    assert float((ours - expected).abs().max()) <= TOLERANCE
    full, _ = run_prompt(runtime, graph_for("flux1-dev-tiny.safetensors"))
    assert float((ours - full).abs().mean()) > 1e-4  # the file really is quantized (not the float weights)


def test_gguf_graph_matches_diffusers_gguf_quantizer(runtime, tmp_path):
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from engine.models.flux1.keys import bfl_to_diffusers
    from engine.models.quant.gguf_file import open_gguf, transformer_state
    from engine.models.quant.gguf_write import save_gguf

    name = "flux1-dev-tiny-Q4_K.gguf"
    # diffusers' single-file converter hard-codes FLUX's full width, so it gets the same blocks in its keys
    blocks, _ = transformer_state(open_gguf(_models() / "diffusion_models" / name), "flux1")
    ours_state = bfl_to_diffusers(blocks)
    path = save_gguf(ours_state, tmp_path / "diffusers-keys.gguf", "flux", 12)
    reference = FluxTransformer2DModel.from_single_file(
        str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(_models() / "diffusers/flux1-dev-tiny"), subfolder="transformer", torch_dtype=torch.float32,
        local_files_only=True)
    checked = 0
    for key, module in reference.named_modules():
        weight = getattr(module, "weight", None)
        if hasattr(weight, "quant_type"):
            theirs = dequantize_gguf_tensor(weight).float().reshape(weight.shape[0], -1, 32)
            exact = ours_state[f"{key}.weight"].dequantize(torch.float32).reshape(weight.shape[0], -1, 32)
            # float16 roundings per weight: Q8_0 one (d * q); K-quants four (d * scale, dmin * min, times q,
            # the difference), each at most 2^-11 of the 32-weight group's largest magnitude
            roundings = 4 if int(weight.quant_type) >= 10 else 1
            bound = roundings * 2.0 ** -11 * exact.abs().amax(dim=-1, keepdim=True) + 1e-7
            assert (theirs - exact).abs().le(bound).all(), key
            checked += 1
    assert checked > 10
    ours, _ = run_prompt(runtime, graph_for(name, gguf=True))
    theirs = reference_image(transformer=reference)
    exact = reference_image(state=exact_dequantized_state(name))
    diffusers_error = float((theirs - exact).abs().max())
    assert float((ours - theirs).abs().max()) <= diffusers_error + TOLERANCE
    assert diffusers_error < 0.02  # the float16 rounding stays small on the image


@pytest.mark.parametrize("name", ["flux1-dev-tiny-fp8_e4m3fn.safetensors", "flux1-dev-tiny-fp8_scaled.safetensors"])
def test_fp8_files_match_the_same_file_dequantized_up_front(runtime, name):
    from engine.models.common.safetensors_io import open_safetensors, save_safetensors
    from tests.support.quantized import dequantize_scaled_fp8

    source = _models() / "diffusion_models" / name
    dequantized = dequantize_scaled_fp8(open_safetensors(source).load(), torch.float32)
    copy_name = name.replace(".safetensors", "-dequantized-tiny.safetensors")
    save_safetensors(dequantized, source.with_name(copy_name), {"fluxgraph.variant": "dev"})
    ours, _ = run_prompt(runtime, graph_for(name))
    upfront, _ = run_prompt(runtime, graph_for(copy_name))
    assert float((ours - upfront).abs().max()) <= 1e-6
    full, _ = run_prompt(runtime, graph_for("flux1-dev-tiny.safetensors"))
    assert float((ours - full).abs().mean()) > 1e-4  # fp8 rounding is there: the layers really are fp8


def test_lora_on_gguf_matches_lora_on_its_dequantized_copy_and_restores_exactly(runtime):
    from engine.models.common.safetensors_io import save_safetensors
    from engine.models.flux1.keys import diffusers_to_bfl

    name = "flux1-dev-tiny-Q8_0.gguf"
    copy_name = "flux1-dev-tiny-Q8_0-dequantized-tiny.safetensors"
    save_safetensors(diffusers_to_bfl(exact_dequantized_state(name)), _models() / "diffusion_models" / copy_name,
                     {"fluxgraph.variant": "dev"})
    lora = ("flux1-dev-tiny-lora-kohya.safetensors", 0.8)
    before, _ = run_prompt(runtime, graph_for(name, gguf=True))
    ours, _ = run_prompt(runtime, graph_for(name, gguf=True, lora=lora))
    dequantized, _ = run_prompt(runtime, graph_for(copy_name, lora=lora))
    assert float((ours - dequantized).abs().max()) <= TOLERANCE
    assert float((ours - before).abs().mean()) >= 0.01  # the LoRA changes the image clearly
    after, _ = run_prompt(runtime, graph_for(name, gguf=True))
    assert torch.equal(after, before)  # removed: the quantized layers hold no delta any more
