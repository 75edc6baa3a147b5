"""LoRAs on FLUX.2: the BFL/ComfyUI and diffusers/PEFT layouts give the same patch, and LoraLoaderModelOnly on a
klein graph matches diffusers' Flux2KleinPipeline.load_lora_weights."""

from __future__ import annotations

import pytest
import torch

from engine.models.common.safetensors_io import save_safetensors
from tests.support.flux2 import SENSITIVITY, TOLERANCE, flux2_graph
from tests.support.flux import make_runtime, run_prompt, zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is faster

RANK = 4


def _lora_pairs(inner: int, mlp: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """diffusers module -> (down [r, in], up [out, r]) for a few layers of the tiny klein transformer."""
    gen = torch.Generator().manual_seed(3)

    def pair(out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(RANK, in_features, generator=gen) * 0.3,
                torch.randn(out_features, RANK, generator=gen) * 0.3)

    down, up = pair(3 * inner, inner)  # the fused q/k/v of double block 0 share one down matrix
    pairs = {f"transformer_blocks.0.attn.to_{name}": (down, part) for name, part in zip("qkv", up.chunk(3))}
    pairs["single_transformer_blocks.1.attn.to_qkv_mlp_proj"] = pair(3 * inner + 2 * mlp, inner)
    pairs["transformer_blocks.1.ff.linear_out"] = pair(inner, mlp)
    return pairs


@pytest.fixture(scope="module")
def lora_files():
    from engine.zoo.flux2 import tiny_flux2

    config = tiny_flux2("klein").transformer.config
    inner = config.num_attention_heads * config.attention_head_dim
    pairs = _lora_pairs(inner, int(inner * config.mlp_ratio))
    folder = zoo_base() / "models" / "loras"
    peft = {}
    for module, (down, up) in pairs.items():
        peft[f"transformer.{module}.lora_A.weight"] = down
        peft[f"transformer.{module}.lora_B.weight"] = up
    q, k, v = (pairs[f"transformer_blocks.0.attn.to_{n}"] for n in "qkv")
    bfl = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": q[0],
           "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.cat([q[1], k[1], v[1]]),
           "diffusion_model.double_blocks.0.img_attn.qkv.alpha": torch.tensor(float(RANK)),
           "diffusion_model.single_blocks.1.linear1.lora_A.weight":
               pairs["single_transformer_blocks.1.attn.to_qkv_mlp_proj"][0],
           "diffusion_model.single_blocks.1.linear1.lora_B.weight":
               pairs["single_transformer_blocks.1.attn.to_qkv_mlp_proj"][1],
           "diffusion_model.double_blocks.1.img_mlp.2.lora_A.weight": pairs["transformer_blocks.1.ff.linear_out"][0],
           "diffusion_model.double_blocks.1.img_mlp.2.lora_B.weight": pairs["transformer_blocks.1.ff.linear_out"][1]}
    peft_path = save_safetensors(peft, folder / "flux2-klein-tiny-peft.safetensors")
    save_safetensors(bfl, folder / "flux2-klein-tiny-bfl.safetensors")
    return peft_path


def _with_lora(graph: dict, name: str, strength: float) -> dict:
    graph["40"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": name,
                                                                   "strength_model": strength}}
    graph["8"]["inputs"]["model"] = ["40", 0]
    return graph


def test_lora_matches_diffusers_load_lora_weights_in_both_layouts(lora_files):
    from engine.zoo.flux2 import tiny_flux2

    runtime = make_runtime()
    pipe = tiny_flux2("klein").pipeline()
    pipe.load_lora_weights(str(lora_files))
    expected = pipe(prompt="a photo of a cat", height=48, width=64, num_inference_steps=3,
                    generator=[torch.Generator().manual_seed(6)], output_type="pt").images.permute(0, 2, 3, 1)
    graph = flux2_graph("klein", seed=6, steps=3, prompt="a photo of a cat")
    plain, _ = run_prompt(runtime, graph)
    assert float((plain - expected).abs().mean()) >= SENSITIVITY  # the LoRA really changes the image
    for name in ("flux2-klein-tiny-peft.safetensors", "flux2-klein-tiny-bfl.safetensors"):
        ours, _ = run_prompt(runtime, _with_lora(flux2_graph("klein", seed=6, steps=3, prompt="a photo of a cat"),
                                                  name, 1.0))
        assert float((ours - expected).abs().max()) <= TOLERANCE, name
    half, _ = run_prompt(runtime, _with_lora(flux2_graph("klein", seed=6, steps=3, prompt="a photo of a cat"),
                                             "flux2-klein-tiny-bfl.safetensors", 0.5))
    assert float((half - expected).abs().mean()) >= SENSITIVITY / 2
    again, _ = run_prompt(runtime, graph)  # the base weights come back exactly after the LoRA runs
    assert torch.equal(again, plain)


def test_a_flux1_lora_on_a_flux2_model_is_refused_naming_the_file(lora_files):
    from engine.models.flux2.transformer import load_diffusion_model
    from engine.models.lora.loader import apply_lora
    from engine.models.common.safetensors_io import ModelFileError

    model = load_diffusion_model(zoo_base() / "models/diffusion_models/flux2-klein-4b-tiny.safetensors")
    for layout in ("comfy", "kohya", "peft"):
        path = zoo_base() / "models" / "loras" / f"flux1-dev-tiny-lora-{layout}.safetensors"
        with pytest.raises(ModelFileError) as info:
            apply_lora(path, model, None, 1.0, 0.0)
        assert path.name in str(info.value), layout
