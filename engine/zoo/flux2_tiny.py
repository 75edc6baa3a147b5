"""Tiny random FLUX.2 components of the real architectures (klein and dev), deterministic and made sensitive.

diffusers' Flux2Transformer2DModel and AutoencoderKLFlux2, transformers' Qwen3ForCausalLM (klein) and
Mistral3ForConditionalGeneration (dev, with a one-layer Pixtral vision tower the text path never uses), and
the tokenizers of `flux2_tokenizers`. Weights come from `tiny.seeded_init_`; the weights that carry
conditioning are scaled up as for FLUX.1 so that prompt, seed, guidance and reference images visibly move
the image.

The text encoders are narrow but deep: FLUX.2 reads layers (9, 18, 27) of Qwen3 and (10, 20, 30) of
Mistral, and transformers 5 replaces the last hidden state with the final-normalised one, so they have
more layers than that (and one more than needed, so the loaders' layer truncation is exercised).
Widths differ between the parts (klein text 3 x 32 = 96, dev text 3 x 48 = 144) so that mixing them up fails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.zoo.flux1_tiny import make_sensitive_, seeded_init_
from engine.zoo.flux2_tokenizers import make_mistral_tokenizer, make_qwen3_tokenizer

FLUX2_TINY_VARIANTS = ("klein", "klein-base", "dev")
TINY_FLUX2_TRANSFORMER = dict(patch_size=1, in_channels=128, num_layers=2, num_single_layers=2,
                              attention_head_dim=16, num_attention_heads=2, timestep_guidance_channels=64,
                              mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4), rope_theta=2000, eps=1e-6)
TINY_QWEN3 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=29, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6, max_position_embeddings=40960,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True)
TINY_MISTRAL = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=32, num_attention_heads=8,
                    num_key_value_heads=8, head_dim=4, rms_norm_eps=1e-5, max_position_embeddings=131072,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0}, sliding_window=None)
TINY_PIXTRAL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                    image_size=64, patch_size=16)
TINY_FLUX2_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 64, 64),
                      layers_per_block=1, act_fn="silu", latent_channels=32, norm_num_groups=32, sample_size=64,
                      use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True,
                      batch_norm_eps=1e-4, patch_size=(2, 2))
FLUX2_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                              max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
                              time_shift_type="exponential")

_SENSITIVITY = (
    ("attn.to_out.0.weight", 3.0), ("attn.to_add_out.weight", 3.0), ("attn.to_out.weight", 2.0),
    ("attn.norm_q.weight", 3.0), ("attn.norm_k.weight", 3.0),
    ("attn.norm_added_q.weight", 3.0), ("attn.norm_added_k.weight", 3.0),
    ("time_guidance_embed.timestep_embedder.", 3.0), ("time_guidance_embed.guidance_embedder.", 3.0),
    ("context_embedder.weight", 2.0),
)


@dataclass
class TinyFlux2:
    """In-memory tiny FLUX.2 parts; names follow the diffusers pipelines' constructor arguments."""

    variant: str  # "klein" | "klein-base" | "dev"
    transformer: Any
    vae: Any
    text_encoder: Any  # Qwen3ForCausalLM (klein) | Mistral3ForConditionalGeneration (dev)
    tokenizer: Any

    @property
    def is_klein(self) -> bool:
        return self.variant.startswith("klein")

    def scheduler(self) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER_CONFIG)

    def pipeline(self) -> Any:
        """diffusers' Flux2KleinPipeline (klein) or Flux2Pipeline (dev) over these modules."""
        from diffusers import Flux2KleinPipeline, Flux2Pipeline

        kwargs = dict(scheduler=self.scheduler(), vae=self.vae, text_encoder=self.text_encoder,
                      tokenizer=self.tokenizer, transformer=self.transformer)
        if self.is_klein:
            pipe = Flux2KleinPipeline(**kwargs, is_distilled=self.variant == "klein")
        else:
            pipe = Flux2Pipeline(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def tiny_flux2_transformer(variant: str, seed: int = 0) -> Any:
    from diffusers import Flux2Transformer2DModel

    if variant not in FLUX2_TINY_VARIANTS:
        raise ValueError(f"tiny FLUX.2 variant {variant!r} is not one of {list(FLUX2_TINY_VARIANTS)}")
    text_width = 3 * (TINY_MISTRAL if variant == "dev" else TINY_QWEN3)["hidden_size"]
    model = Flux2Transformer2DModel(**TINY_FLUX2_TRANSFORMER, joint_attention_dim=text_width,
                                    guidance_embeds=variant == "dev")
    return make_sensitive_(seeded_init_(model, seed * 1000 + 20 + FLUX2_TINY_VARIANTS.index(variant)),
                           _SENSITIVITY).eval()


def tiny_flux2_vae(seed: int = 0) -> Any:
    import torch
    from diffusers import AutoencoderKLFlux2

    vae = seeded_init_(AutoencoderKLFlux2(**TINY_FLUX2_VAE), seed * 1000 + 30).eval()
    gen = torch.Generator().manual_seed(seed * 1000 + 31)
    channels = vae.bn.running_mean.shape[0]
    vae.bn.running_mean.copy_(0.2 * torch.randn(channels, generator=gen))  # non-trivial statistics, so the
    vae.bn.running_var.copy_(0.5 + torch.rand(channels, generator=gen))  # normalisation is really exercised
    return vae


def tiny_qwen3(tokenizer: Any, seed: int = 0) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    vocab = -(-len(tokenizer) // 64) * 64  # padded rows, as Qwen3's 151936 for 151669 tokens
    config = Qwen3Config(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id, **TINY_QWEN3)
    return seeded_init_(Qwen3ForCausalLM(config), seed * 1000 + 40).eval()


def tiny_mistral3(tokenizer: Any, seed: int = 0) -> Any:
    from transformers import (Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig,
                              PixtralVisionConfig)

    text = MistralConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_MISTRAL)
    config = Mistral3Config(vision_config=PixtralVisionConfig(**TINY_PIXTRAL), text_config=text,
                            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
                            multimodal_projector_bias=False)
    return seeded_init_(Mistral3ForConditionalGeneration(config), seed * 1000 + 41).eval()


def tiny_flux2(variant: str = "klein", seed: int = 0) -> TinyFlux2:
    """Deterministic tiny FLUX.2 `variant` components, fp32, on CPU, in eval mode."""
    shared = tiny_flux2_shared(seed, "dev" if variant == "dev" else "klein")
    return dataclasses.replace(shared, variant=variant, transformer=tiny_flux2_transformer(variant, seed))


def tiny_flux2_shared(seed: int = 0, family: str = "klein") -> TinyFlux2:
    """VAE, text encoder and tokenizer of the klein or dev family (transformer unset)."""
    if family == "dev":
        tokenizer = make_mistral_tokenizer()
        encoder = tiny_mistral3(tokenizer, seed)
    else:
        tokenizer = make_qwen3_tokenizer()
        encoder = tiny_qwen3(tokenizer, seed)
    return TinyFlux2(variant=family, transformer=None, vae=tiny_flux2_vae(seed), text_encoder=encoder,
                     tokenizer=tokenizer)
