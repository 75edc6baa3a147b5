"""A tiny FLUX.1 dev diffusers folder with sizes no shape convention predicts, for the "config is the truth" tests.

`write_odd_flux1_folder(folder, seed)` writes a FluxPipeline folder (model_index.json, transformer/, vae/,
text_encoder*/, tokenizer*/, scheduler/) whose config.json files hold what the weights cannot show and what
differs from the conventions used for single files (docs/models.md):

- transformer: attention heads 16 wide, rope axes (4, 6, 6) (the convention would give (2, 7, 7));
- CLIP: 6 heads of 8 (the convention: 64-wide heads), its own bos/eos/pad ids;
- T5: relative attention max distance 64 (the released T5: 128);
- VAE: GroupNorm with 4 groups (the convention: 32);
- tokenizer/: a cased byte-level BPE declared as `PreTrainedTokenizerFast` (a CLIPTokenizer would lowercase,
  giving other ids); tokenizer_2/: the T5 Unigram declared as `T5TokenizerFast`.

It is not part of the tiny zoo (`engine.zoo.writer`): tests write it where they need it. Same seed, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.models.common.configs import load_config
from engine.zoo.files import save_pipeline
from engine.zoo.flux1_tiny import make_sensitive_, seeded_init_
from engine.zoo.tokenizers import CLIP_BOS, CLIP_EOS, make_clip_tokenizer, make_t5_tokenizer

ODD_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=1, attention_head_dim=16,
                       num_attention_heads=4, axes_dims_rope=(4, 6, 6), guidance_embeds=True)
ODD_CLIP = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=48)
ODD_T5 = dict(d_model=40, d_kv=12, num_heads=2, d_ff=64, num_layers=2, relative_attention_num_buckets=16,
              relative_attention_max_distance=64, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
              tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
ODD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 24), layers_per_block=1,
               act_fn="silu", latent_channels=16, norm_num_groups=4, sample_size=64, scaling_factor=0.3611,
               shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
               mid_block_add_attention=True)
CLIP_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
T5_TOKENIZER_CLASS = "T5TokenizerFast"


def cased_clip_tokenizer() -> Any:
    """The tiny CLIP BPE without lowercasing, as a generic fast tokenizer (its tokenizer.json is its truth)."""
    from tokenizers import Regex, normalizers
    from transformers import PreTrainedTokenizerFast

    backend = make_clip_tokenizer().backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " ")])
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=77, bos_token=CLIP_BOS,
                                   eos_token=CLIP_EOS, pad_token=CLIP_EOS, unk_token=CLIP_EOS)


def odd_pipeline(seed: int = 0) -> Any:
    """The FluxPipeline of odd sizes (fp32, CPU, eval), deterministic for `seed`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok, t5_tok = cased_clip_tokenizer(), make_t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), bos_token_id=clip_tok.bos_token_id,
                                        eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id,
                                        **ODD_CLIP))
    t5 = T5EncoderModel(T5Config(vocab_size=-(-len(t5_tok) // 8) * 8, **ODD_T5))
    vae = AutoencoderKL(**ODD_VAE)
    transformer = FluxTransformer2DModel(**ODD_TRANSFORMER, joint_attention_dim=ODD_T5["d_model"],
                                         pooled_projection_dim=ODD_CLIP["hidden_size"])
    seeded_init_(clip, seed * 1000 + 11).eval()
    seeded_init_(t5, seed * 1000 + 12).eval()
    seeded_init_(vae, seed * 1000 + 13).eval()
    make_sensitive_(seeded_init_(transformer, seed * 1000 + 14)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(load_config("flux1-dev-scheduler"))
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=transformer)


def write_odd_flux1_folder(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write the odd-sized FluxPipeline folder (module docstring); returns the files written, sorted."""
    folder = Path(folder)
    written = save_pipeline(lambda: odd_pipeline(seed), folder)
    for sub, declared in (("tokenizer", CLIP_TOKENIZER_CLASS), ("tokenizer_2", T5_TOKENIZER_CLASS)):
        path = folder / sub / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(dict(config, tokenizer_class=declared), indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")
    index = folder / "model_index.json"
    pipeline = json.loads(index.read_text(encoding="utf-8"))
    pipeline.update(tokenizer=["transformers", CLIP_TOKENIZER_CLASS], tokenizer_2=["transformers", T5_TOKENIZER_CLASS])
    index.write_text(json.dumps(pipeline, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return written
