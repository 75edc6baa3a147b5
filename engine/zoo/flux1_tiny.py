"""Tiny random FLUX.1 components of the real architectures, deterministic and made sensitive.

`tiny_components(variant, seed)` builds diffusers' FluxTransformer2DModel and AutoencoderKL and
transformers' CLIPTextModel and T5EncoderModel with a few small layers, plus locally trained tokenizers.
Weights come from our own seeded initialiser (not the libraries' init, which may change between versions),
so the same seed gives the same tensors everywhere.

Random tiny models barely react to their inputs, which lets a wrong implementation pass a parity test. So
the weights that carry the conditioning (attention outputs, q/k norms, timestep and guidance embedders)
are scaled up: a change of prompt, seed or guidance moves the decoded image clearly (tests/test_zoo.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.models.common.configs import load_config
from engine.models.common.handles import FluxTextEncoders, FluxVAE
from engine.models.flux1.variants import flux_model_handle
from engine.zoo.tokenizers import make_clip_tokenizer, make_t5_tokenizer

VARIANTS = ("dev", "schnell")

# Widths deliberately differ from each other so that a loader that mixes them up fails loudly.
TINY_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
                        num_attention_heads=2, axes_dims_rope=(4, 14, 14))
# Conventions the loaders rely on when inferring sizes from shapes (see docs/models.md): CLIP head width 64,
# FLUX rope axes (h/8, 7h/16, 7h/16) of the head width h, VAE GroupNorm with 32 groups.
TINY_CLIP = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=128,
                 bos_token_id=0, eos_token_id=2, pad_token_id=1)
TINY_T5 = dict(d_model=48, d_kv=8, num_heads=4, d_ff=96, num_layers=2, relative_attention_num_buckets=32,
               relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
               tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
               eos_token_id=1)
TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 64, 64),
                layers_per_block=1, act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=64,
                scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
                force_upcast=True, mid_block_add_attention=True)

# name fragment -> factor, applied after init (see module docstring).
_SENSITIVITY = (
    ("attn.to_out.0.weight", 3.0), ("attn.to_add_out.weight", 3.0),
    ("attn.norm_q.weight", 3.0), ("attn.norm_k.weight", 3.0),
    ("attn.norm_added_q.weight", 3.0), ("attn.norm_added_k.weight", 3.0),
    ("time_text_embed.timestep_embedder.", 3.0), ("time_text_embed.guidance_embedder.", 3.0),
    ("time_text_embed.text_embedder.", 2.0), ("context_embedder.weight", 2.0),
)


@dataclass
class TinyComponents:
    """In-memory tiny FLUX.1 parts; names follow FluxPipeline's constructor arguments."""

    variant: str
    transformer: Any
    vae: Any
    text_encoder: Any  # CLIPTextModel
    tokenizer: Any  # CLIPTokenizer
    text_encoder_2: Any  # T5EncoderModel
    tokenizer_2: Any  # T5Tokenizer

    def scheduler(self) -> Any:
        """FlowMatchEulerDiscreteScheduler configured as the real variant's scheduler_config."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(load_config(f"flux1-{self.variant}-scheduler"))

    def pipeline_kwargs(self) -> dict[str, Any]:
        return dict(scheduler=self.scheduler(), vae=self.vae, text_encoder=self.text_encoder,
                    tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                    transformer=self.transformer)

    def handles(self, source: str = "tiny") -> tuple[Any, Any, Any]:
        """(FluxModel, FluxTextEncoders, FluxVAE) handles over these modules, as the loaders return them."""
        model = flux_model_handle(self.transformer, self.variant, source=source)
        encoders = FluxTextEncoders(clip=self.text_encoder, clip_tokenizer=self.tokenizer, t5=self.text_encoder_2,
                                    t5_tokenizer=self.tokenizer_2,
                                    t5_max_length=256 if self.variant == "schnell" else 512, source=source)
        vae = FluxVAE(vae=self.vae, scaling_factor=self.vae.config.scaling_factor,
                      shift_factor=self.vae.config.shift_factor, source=source)
        return model, encoders, vae


def seeded_init_(module: Any, seed: int) -> Any:
    """Fill every parameter from a seeded CPU generator, layer-type aware, in module order (in place)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    with torch.no_grad():
        for _, sub in module.named_modules():
            direct = list(sub.named_parameters(recurse=False))
            if not direct:
                continue
            is_norm = isinstance(sub, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(sub).__name__.lower()
            for pname, param in direct:
                if is_norm:
                    value = 1.0 + 0.1 * randn(param.shape) if pname == "weight" else 0.1 * randn(param.shape)
                elif isinstance(sub, nn.Embedding):
                    value = 0.5 * randn(param.shape)
                elif pname == "weight" and param.ndim >= 2:
                    fan_in = param[0].numel()
                    value = randn(param.shape) / fan_in ** 0.5
                else:
                    value = 0.02 * randn(param.shape)
                param.copy_(value.to(param.dtype))
    return module


def make_sensitive_(transformer: Any, factors: tuple[tuple[str, float], ...] = _SENSITIVITY) -> Any:
    """Scale the weights that carry conditioning (see module docstring); in place. `factors` pairs a
    parameter-name fragment with its scale; the first matching fragment wins."""
    import torch

    with torch.no_grad():
        for name, param in transformer.named_parameters():
            for fragment, factor in factors:
                if fragment in name:
                    param.mul_(factor)
                    break
    return transformer


def build_tiny_transformer(variant: str, seed: int, joint_dim: int, pooled_dim: int) -> Any:
    from diffusers import FluxTransformer2DModel

    config = dict(TINY_TRANSFORMER, joint_attention_dim=joint_dim, pooled_projection_dim=pooled_dim,
                  guidance_embeds=variant != "schnell")
    model = FluxTransformer2DModel(**config)
    return make_sensitive_(seeded_init_(model, seed)).eval()


def tiny_components(variant: str = "dev", seed: int = 0) -> TinyComponents:
    """Deterministic tiny FLUX.1 `variant` ("dev" or "schnell") components, fp32, on CPU, in eval mode."""
    shared = tiny_shared_parts(seed)
    return dataclasses.replace(shared, variant=variant, transformer=tiny_transformer(variant, seed))


def tiny_shared_parts(seed: int = 0) -> TinyComponents:
    """Text encoders, tokenizers and VAE (shared by all variants, as for real FLUX.1); transformer unset."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, t5_tok = make_clip_tokenizer(), make_t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), **TINY_CLIP))
    t5_vocab = -(-len(t5_tok) // 8) * 8  # real T5 pads its embedding rows to a multiple of 8 (32128)
    t5 = T5EncoderModel(T5Config(vocab_size=t5_vocab, **TINY_T5))
    vae = AutoencoderKL(**TINY_VAE)
    seeded_init_(clip, seed * 1000 + 1).eval()
    seeded_init_(t5, seed * 1000 + 2).eval()
    seeded_init_(vae, seed * 1000 + 3).eval()
    return TinyComponents(variant="", transformer=None, vae=vae, text_encoder=clip, tokenizer=clip_tok,
                          text_encoder_2=t5, tokenizer_2=t5_tok)


def tiny_transformer(variant: str, seed: int = 0) -> Any:
    """The tiny FluxTransformer2DModel of `variant`, sized to the tiny text encoders."""
    if variant not in VARIANTS:
        raise ValueError(f"tiny FLUX variant {variant!r} is not one of {list(VARIANTS)}")
    transformer_seed = seed * 1000 + 4 + VARIANTS.index(variant)
    return build_tiny_transformer(variant, transformer_seed, TINY_T5["d_model"], TINY_CLIP["hidden_size"])
