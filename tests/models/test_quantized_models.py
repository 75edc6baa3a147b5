"""Quantized weights kept as stored: GGUF decoding, the Q4_K writer, loading (transformers and text
encoders), memory accounting, LoRA deltas on quantized layers, fp8 matrix products on GPUs that have them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.flux import zoo_base

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DECODE_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"]


@pytest.fixture(scope="module")
def models() -> Path:
    return zoo_base() / "models"


def random_blocks(name: str, rows: int, row: int, seed: int = 0) -> np.ndarray:
    """Valid bytes of ggml type `name`: quantized by gguf-py where it can, else random blocks with finite
    float16 scales (gguf-py cannot write K-quants)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[name]
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((rows, row)).astype(np.float32)
    if name not in ("Q4_K", "Q5_K", "Q6_K"):
        data = gguf.quants.quantize(weights, qtype)
        return data.view(np.uint8)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, row // block * size), dtype=np.uint8)
    blocks = raw.reshape(-1, size)
    scales = rng.uniform(-0.05, 0.05, (blocks.shape[0], 2)).astype(np.float16).view(np.uint8)
    if name == "Q6_K":
        blocks[:, 208:210] = scales[:, :2]
    else:
        blocks[:, 0:4] = scales
    return raw


@pytest.mark.parametrize("name", DECODE_TYPES)
def test_torch_dequantization_equals_gguf_py(name):
    import gguf

    from engine.models.quant.gguf_dequant import dequantize

    qtype = gguf.GGMLQuantizationType[name]
    raw = random_blocks(name, 6, 512)
    expected = gguf.quants.dequantize(raw if name not in ("F16", "BF16") else raw.view(np.uint8), qtype)
    ours = dequantize(torch.from_numpy(raw.view(np.uint8).copy()), int(qtype), (6, 512), torch.float32)
    assert np.abs(expected).max() > 0
    assert torch.equal(ours, torch.from_numpy(np.ascontiguousarray(expected, dtype=np.float32)))


def test_q4_k_writer_round_trips_through_gguf_py():
    import gguf

    from engine.models.quant.gguf_dequant import dequantize
    from engine.models.quant.gguf_quantize import quantize_q4_k

    weights = np.random.default_rng(3).standard_normal((4, 1024)).astype(np.float32)
    blocks = quantize_q4_k(weights)
    assert blocks.shape == (4, 1024 // 256 * 144) and blocks.dtype == np.uint8
    decoded = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_K)
    # each 32-weight group spans [min(x, 0), max(x)] in 15 steps: at most about a step of error per weight
    step = (weights.reshape(-1, 32).max(1) - np.minimum(weights.reshape(-1, 32).min(1), 0)) / 15
    error = np.abs(decoded - weights).reshape(-1, 32).max(1)
    assert (error <= step * 1.1 + 1e-3).all()
    assert np.abs(decoded - weights).mean() < 0.1 * np.abs(weights).mean()
    ours = dequantize(torch.from_numpy(blocks), 12, (4, 1024), torch.float32)
    assert torch.equal(ours, torch.from_numpy(decoded))
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_q4_k(weights[:, :100])


def _stored_bytes(module) -> int:
    from engine.memory.layout import split_module

    return sum(part.nbytes for part in split_module(module)) + sum(b.numel() * b.element_size()
                                                                   for b in module.buffers())


@pytest.mark.parametrize("name,kind", [("flux1-dev-tiny-Q8_0.gguf", "GGUF"), ("flux1-dev-tiny-Q4_K.gguf", "GGUF"),
                                       ("flux1-dev-tiny-fp8_e4m3fn.safetensors", "Fp8"),
                                       ("flux1-dev-tiny-fp8_scaled.safetensors", "Fp8")])
def test_quantized_model_takes_its_file_size_in_memory(models, name, kind):
    from engine.memory.torch_backend import TorchBackend
    from engine.models.flux2.transformer import load_diffusion_model

    path = models / "diffusion_models" / name
    model = load_diffusion_model(path, compute_dtype=torch.float32).transformer
    layer = model.transformer_blocks[0].ff.net[2]
    assert type(layer).__name__.startswith(kind)
    resident = _stored_bytes(model)
    assert abs(resident - path.stat().st_size) <= 0.05 * path.stat().st_size
    parts, _, _ = TorchBackend("cpu").describe(model)  # what the memory manager places, streams and offloads
    assert sum(p.nbytes for p in parts) <= resident
    assert sum(p.nbytes for p in parts) >= 0.9 * resident
    full = load_diffusion_model(models / "diffusion_models/flux1-dev-tiny.safetensors",
                                compute_dtype=torch.float32).transformer
    assert resident < 0.6 * _stored_bytes(full)  # fp8 or smaller, not dequantized copies


def test_scaled_fp8_keeps_fp8_and_scales_per_layer(models):
    from engine.models.flux1.transformer import load_flux_transformer

    model = load_flux_transformer(models / "diffusion_models/flux1-dev-tiny-fp8_scaled.safetensors",
                                  compute_dtype=torch.float32).transformer
    layer = model.single_transformer_blocks[0].attn.to_q
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.scale_weight.dtype == torch.float32
    assert model.x_embedder.weight.dtype == torch.float32  # the unscaled ("fp8mixed") layers stay float
    bf16 = load_flux_transformer(models / "diffusion_models/flux1-dev-tiny-fp8_scaled.safetensors",
                                 compute_dtype=torch.bfloat16).transformer
    assert bf16.transformer_blocks[0].attn.to_k.scale_weight.dtype == torch.float32  # scales are never rounded


def test_weight_dtype_fp8_keeps_gguf_layers_and_quantizes_the_rest(models):
    from engine.models.flux2.transformer import load_diffusion_model

    model = load_diffusion_model(models / "diffusion_models/flux1-dev-tiny-Q8_0.gguf", weight_dtype="fp8_e5m2",
                                 compute_dtype=torch.float32).transformer
    assert model.transformer_blocks[0].ff.net[2].weight.dtype == torch.uint8  # GGUF blocks untouched
    plain = load_diffusion_model(models / "diffusion_models/flux1-dev-tiny.safetensors", weight_dtype="fp8_e5m2",
                                 compute_dtype=torch.float32).transformer
    assert plain.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e5m2


def test_lora_delta_on_a_quantized_layer_is_applied_after_dequantization_and_removed(models):
    from engine.models.flux2.transformer import load_diffusion_model
    from engine.models.lora.patch import LoraPatch, WeightDelta, apply_patches, restore_weights

    model = load_diffusion_model(models / "diffusion_models/flux1-dev-tiny-Q4_K.gguf",
                                 compute_dtype=torch.float32).transformer
    layer = model.transformer_blocks[0].ff.net[2]
    stored = layer.weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    up, down = torch.randn(layer.out_features, 4, generator=gen), torch.randn(4, layer.in_features, generator=gen)
    patch = LoraPatch("test", ("test",), "transformer", (WeightDelta("transformer_blocks.0.ff.net.2", up, down, 0.5),),
                      strength=0.8)
    x = torch.randn(3, layer.in_features, generator=gen)
    expected = x @ (layer.dequantized_weight(torch.float32) + 0.4 * up @ down).T + layer.bias
    with apply_patches(model, [patch]):
        assert torch.allclose(layer(x), expected, atol=1e-4)
    assert torch.equal(layer.weight, stored)  # never baked into the stored blocks
    assert restore_weights(model) and layer.lora_deltas == ()
    assert torch.allclose(layer(x), x @ layer.dequantized_weight(torch.float32).T + layer.bias, atol=1e-5)


def test_gguf_t5_matches_its_exactly_dequantized_weights(models):
    import gguf

    from engine.models.flux1.text_encoders import build_t5, load_text_encoder_file
    from engine.models.quant.gguf_file import llama_cpp_to_hf, open_gguf

    path = models / "text_encoders/t5xxl-tiny-Q8_0.gguf"
    t5 = load_text_encoder_file(path, torch.float32)["t5xxl"]
    assert type(t5.encoder.block[0].layer[1].DenseReluDense.wo).__name__.startswith("GGUF")
    reader = gguf.GGUFReader(str(path))
    exact = {t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype("float32").copy())
             .reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors}
    reference = build_t5(llama_cpp_to_hf(open_gguf(path), exact), path, torch.float32)
    ids = torch.tensor([[5, 9, 17, 3, 1]])
    with torch.no_grad():
        ours, theirs = t5(ids)[0], reference(ids)[0]
        plain = load_text_encoder_file(models / "text_encoders/t5xxl-tiny.safetensors", torch.float32)["t5xxl"]
        float_out = plain(ids)[0]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert 0 < float((ours - float_out).abs().max()) < 0.1 * float(float_out.abs().max())


def _decoder_to_llama_cpp(state: dict, permute_heads: tuple[int, int] | None = None) -> dict:
    """HF decoder base-model keys -> llama.cpp names; `permute_heads` (q heads, kv heads) interleaves q / k rows
    as llama.cpp's converter does for llama-architecture models."""
    from engine.models.quant.gguf_file import _DECODER

    names = {hf: ll for ll, hf in _DECODER.items()}
    out = {}
    for key, value in state.items():
        if key == "embed_tokens.weight":
            out["token_embd.weight"] = value
        elif key == "norm.weight":
            out["output_norm.weight"] = value
        else:
            _, index, rest = key.split(".", 2)
            stem, _, param = rest.rpartition(".")
            if permute_heads and stem in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = permute_heads[0] if stem == "self_attn.q_proj" else permute_heads[1]
                value = value.reshape(heads, 2, value.shape[0] // heads // 2, *value.shape[1:]).swapaxes(1, 2) \
                    .reshape(value.shape)
            out[f"blk.{index}.{names[stem]}.{param}"] = value
    return out


@pytest.mark.parametrize("source,arch", [("qwen3-4b-tiny.safetensors", "qwen3"),
                                         ("mistral3-small-tiny.safetensors", "llama")])
def test_gguf_flux2_text_encoders_load_with_llama_cpp_names(models, tmp_path, source, arch):
    from engine.models.common.safetensors_io import open_safetensors
    from engine.models.flux2.text_encoders import language_model_state, load_flux2_text_encoder
    from engine.models.quant.gguf_write import save_gguf

    float_path = models / "text_encoders" / source
    state = language_model_state(open_safetensors(float_path).load(), float_path)
    plain = load_flux2_text_encoder(float_path, [models / "tokenizers"], torch.float32)
    config = plain.model.config
    meta = {}
    heads = None
    if arch == "llama":
        heads = (config.num_attention_heads, config.num_key_value_heads)
        meta = {"llama.attention.head_count": heads[0], "llama.attention.head_count_kv": heads[1]}
    path = save_gguf(_decoder_to_llama_cpp(state, heads), tmp_path / f"{arch}-tiny-F32.gguf", arch, 0, meta)
    loaded = load_flux2_text_encoder(path, [models / "tokenizers"], torch.float32)
    assert loaded.architecture == plain.architecture
    ids = torch.tensor([[3, 8, 12, 5, 7, 2]])
    with torch.no_grad():
        ours = loaded.model(ids, output_hidden_states=True).hidden_states[-2]
        theirs = plain.model(ids, output_hidden_states=True).hidden_states[-2]
    assert float(theirs.abs().mean()) > 0.01
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)  # F32 file: the same weights (q / k rows included)


def test_flux2_transformer_loads_from_gguf(models, tmp_path):
    from engine.models.common.safetensors_io import open_safetensors
    from engine.models.flux2.transformer import is_flux2_model, load_diffusion_model
    from engine.models.quant.gguf_write import save_gguf

    source = models / "diffusion_models/flux2-klein-4b-tiny.safetensors"
    path = save_gguf(open_safetensors(source).load(), tmp_path / "flux2-klein-tiny-Q8_0.gguf", "flux2", 8)
    assert is_flux2_model(path)
    handle = load_diffusion_model(path, compute_dtype=torch.float32)
    assert handle.family == "flux2" and handle.variant.startswith("flux2-klein")
    assert any(type(m).__name__.startswith("GGUF") for m in handle.transformer.modules())


def test_gguf_errors_name_the_file(models, tmp_path):
    from engine.models.common.safetensors_io import ModelFileError
    from engine.models.flux1.text_encoders import load_text_encoder_file
    from engine.models.flux2.transformer import load_diffusion_model

    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelFileError, match="not a GGUF file") as info:
        load_diffusion_model(bogus)
    assert str(bogus) in str(info.value)
    with pytest.raises(ModelFileError, match="T5-XXL"):
        load_text_encoder_file(models / "diffusion_models/flux1-dev-tiny-Q8_0.gguf")


@pytest.mark.gpu
def test_fp8_e4m3fn_fast_uses_fp8_matmul_on_gpus_that_have_it(models):
    from engine.models.flux2.transformer import load_diffusion_model
    from engine.models.quant.layers import fp8_matmul_available

    if not fp8_matmul_available(torch.device("cuda")):
        pytest.skip("this GPU has no fp8 matrix product (compute capability < 8.9)")
    model = load_diffusion_model(models / "diffusion_models/flux1-dev-tiny.safetensors",
                                 weight_dtype="fp8_e4m3fn_fast", compute_dtype=torch.bfloat16).transformer
    layer = model.transformer_blocks[0].ff.net[2].cuda()
    assert layer.fp8_matmul
    x = torch.randn(40, layer.in_features, device="cuda", dtype=torch.bfloat16)
    fast = layer(x)
    layer.fp8_matmul = False
    upcast = layer(x)
    assert fast.dtype == torch.bfloat16 and fast.shape == upcast.shape
    assert not torch.equal(fast, upcast)  # really a different (fp8) product
    assert float((fast - upcast).abs().max()) <= 0.1 * float(upcast.abs().max())


def test_streaming_through_slots_moves_the_quantized_bytes(models):
    """As on a GPU with too little memory: blocks are copied into the window as stored (GGUF bytes)."""
    from engine.memory.budget import MemorySettings
    from engine.memory.layout import BASE, split_module
    from engine.memory.manager import MemoryManager
    from engine.memory.torch_backend import TorchBackend
    from engine.models.flux2.transformer import load_diffusion_model

    path = models / "diffusion_models/flux1-dev-tiny-Q4_K.gguf"
    gen = torch.Generator().manual_seed(2)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=gen),
                  encoder_hidden_states=torch.randn(1, 8, 48, generator=gen),
                  pooled_projections=torch.randn(1, 128, generator=gen), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))

    def load():
        return load_diffusion_model(path, compute_dtype=torch.float32).transformer

    with torch.no_grad():
        expected = load()(**inputs).sample
        module = load()
        parts = split_module(module)
        base = next(p for p in parts if p.name == BASE).nbytes
        blocks = [p.nbytes for p in parts if p.block]
        settings = MemorySettings(budget_bytes=base + 2 * max(blocks) + min(blocks), reserve_bytes=0, device="cpu")
        memory = MemoryManager(settings=settings, backend=TorchBackend("cpu", cpu_streaming="slots"))
        with memory.use(module):
            streamed = module(**inputs).sample
    stats = memory.stats()["models"][0]
    assert 0 < stats["streamed_parts"] < stats["parts"]
    assert torch.allclose(streamed, expected, rtol=1e-5, atol=1e-5)
    stored = sum(p.numel() * p.element_size() for p in module.parameters())
    assert sum(p.nbytes for p in parts) == stored  # what is placed and streamed: the stored bytes
    assert module.transformer_blocks[0].ff.net[2].weight.dtype == torch.uint8


def test_scaled_fp8_t5_keeps_fp8_and_matches_its_up_front_dequantization(models, tmp_path):
    from engine.models.common.safetensors_io import open_safetensors, save_safetensors
    from tests.support.quantized import dequantize_scaled_fp8
    from engine.models.flux1.text_encoders import load_text_encoder_file
    from engine.zoo.quantized import scaled_fp8_state

    state = open_safetensors(models / "text_encoders/t5xxl-tiny.safetensors").load()
    scaled = scaled_fp8_state({k.replace("encoder.block.", "double_blocks."): v for k, v in state.items()})
    scaled = {k.replace("double_blocks.", "encoder.block."): v for k, v in scaled.items()}
    path = save_safetensors(scaled, tmp_path / "t5xxl-tiny-fp8_e4m3fn_scaled.safetensors")
    upfront = save_safetensors(dequantize_scaled_fp8(scaled, torch.float32), tmp_path / "t5xxl-upfront.safetensors")
    t5 = load_text_encoder_file(path, torch.float32)["t5xxl"]
    reference = load_text_encoder_file(upfront, torch.float32)["t5xxl"]
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert t5.encoder.block[1].layer[1].DenseReluDense.wo.weight.dtype == torch.float8_e4m3fn
    ids = torch.tensor([[4, 11, 6, 9, 1]])
    with torch.no_grad():
        ours, theirs = t5(ids)[0], reference(ids)[0]
    assert torch.equal(ours, theirs)


def test_mixed_precision_layout_weight_scale_and_comfy_quant(models, tmp_path):
    """ComfyUI's newer layout: `<layer>.weight_scale`, `<layer>.comfy_quant` (the layer's JSON format)."""
    import json

    from engine.models.common.safetensors_io import open_safetensors, save_safetensors
    from engine.models.flux1.transformer import load_flux_transformer

    state = open_safetensors(models / "diffusion_models/flux1-dev-tiny.safetensors").load()
    marker = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    mixed, upfront = dict(state), dict(state)
    for key in [k for k in state if k.startswith("double_blocks.") and k.endswith(".weight") and state[k].ndim == 2]:
        layer = key[: -len(".weight")]
        scale = (state[key].abs().max() / 448).reshape(())
        mixed[key] = (state[key] / scale).to(torch.float8_e4m3fn)
        mixed[f"{layer}.weight_scale"], mixed[f"{layer}.comfy_quant"] = scale, marker
        upfront[key] = mixed[key].float() * scale
    model = load_flux_transformer(save_safetensors(mixed, tmp_path / "mixed.safetensors"), variant="dev").transformer
    reference = load_flux_transformer(save_safetensors(upfront, tmp_path / "up.safetensors"), variant="dev").transformer
    layer = model.transformer_blocks[1].attn.to_v
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(layer.dequantized_weight(torch.float32), reference.transformer_blocks[1].attn.to_v.weight)
    assert model.single_transformer_blocks[0].attn.to_q.weight.dtype == torch.float32  # unmarked: full precision
    mixed["double_blocks.0.img_mlp.0.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    with pytest.raises(ValueError, match="nvfp4"):
        load_flux_transformer(save_safetensors(mixed, tmp_path / "nvfp4.safetensors"), variant="dev")


def test_fp8_matrix_product_path_agrees_with_upcasting():
    """The `fp8_e4m3fn_fast` product itself (torch._scaled_mm also runs on the CPU): activations rounded to
    e4m3fn with one dynamic scale, weight as stored times its scale."""
    from torch import nn

    from engine.models.quant.fp8_matmul import scaled_mm_linear
    from engine.models.quant.layers import Fp8Linear, convert_linear

    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    scale = layer.weight.detach().abs().max() / 448
    layer.weight = nn.Parameter((layer.weight.detach() / scale).to(torch.float8_e4m3fn), requires_grad=False)
    layer.register_buffer("scale_weight", scale.reshape(1))
    convert_linear(layer, Fp8Linear)
    x = torch.randn(3, 7, 64)  # 21 rows: padded to a multiple of 16 inside
    with torch.no_grad():
        fast, upcast = scaled_mm_linear(layer, x), layer(x)
    assert fast.shape == upcast.shape and not torch.equal(fast, upcast)
    assert float((fast - upcast).abs().max()) <= 0.05 * float(upcast.abs().max())
    odd = nn.Linear(60, 48)
    odd.weight = nn.Parameter(odd.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    assert scaled_mm_linear(odd, torch.randn(2, 60)) is None  # widths not multiples of 16: the layer upcasts
