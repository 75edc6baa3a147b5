"""Tiny zoo, conditioning part: FLUX Fill and Kontext transformers, SigLIP + Redux, LoRAs in each layout.

Written by `write_conditioning_zoo` (called from `engine.zoo.writer.write_tiny_zoo`), deterministic and fast:

    diffusion_models/flux1-fill-tiny.safetensors            Fill transformer (384 input channels), BFL keys
    diffusion_models/flux1-kontext-dev-tiny.safetensors     Kontext transformer (dev shapes; "kontext" in name)
    diffusers/flux1-{fill,kontext}-tiny-transformer/        the same as diffusers transformer folders
    clip_vision/sigclip-vision-tiny.safetensors             SigLIP vision tower, `vision_model.*` keys
    clip_vision/siglip-vision-tiny/                         the same as a transformers folder (+ preprocessor)
    style_models/flux1-redux-tiny.safetensors               Redux image embedder (redux_up / redux_down)
    style_models/flux1-redux-tiny-embedder/                 the same as a diffusers ReduxImageEncoder folder
    loras/flux1-dev-tiny-lora-{comfy,comfy-updown,kohya,peft}.safetensors      LoRA 1 in each layout
    loras/flux1-dev-tiny-lora2-{kohya,peft}.safetensors                        LoRA 2 (for stacking)

Every layout of one LoRA holds the same low-rank deltas (`tiny_lora(...)`), with alphas chosen as powers of
two so that each file gives bit-identical deltas; the PEFT file is what diffusers' `load_lora_weights` reads
in the parity tests. The fused BFL modules are written with `flux_keys.diffusers_to_bfl`, independently of
the loader's own key mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.models.common.safetensors_io import save_safetensors
from engine.models.flux1.keys import diffusers_to_bfl
from engine.zoo.flux1_tiny import TINY_CLIP, TINY_T5, TINY_TRANSFORMER, make_sensitive_, seeded_init_
from engine.zoo.tokenizers import make_clip_tokenizer

TINY_SIGLIP = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                   image_size=32, patch_size=8, num_channels=3, layer_norm_eps=1e-6,
                   hidden_act="gelu_pytorch_tanh")
LORA_RANK = 4
# LoRA layouts and the alpha each file stores (scale = alpha / rank); None = no alpha key (scale 1).
LORA_LAYOUTS = {"comfy": 2.0, "comfy-updown": None, "kohya": 8.0, "peft": None}
LORA2_LAYOUTS = {"kohya": 4.0, "peft": None}

# LoRA targets, in diffusers names. Fused BFL modules (q/k/v, single linear1) list all their parts with one
# shared down matrix, as a LoRA trained on the BFL layout has them.
_LORA1_GROUPS = (
    ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v"),
    ("transformer_blocks.0.attn.to_add_out",), ("transformer_blocks.0.ff.net.0.proj",),
    ("transformer_blocks.0.norm1.linear",),
    ("transformer_blocks.1.attn.add_q_proj", "transformer_blocks.1.attn.add_k_proj",
     "transformer_blocks.1.attn.add_v_proj"),
    ("transformer_blocks.1.ff_context.net.2",),
    ("single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
     "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"),
    ("single_transformer_blocks.0.proj_out",), ("single_transformer_blocks.0.norm.linear",),
    ("norm_out.linear",), ("proj_out",), ("context_embedder",),
)
_LORA1_CLIP = ("text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.0.self_attn.v_proj",
               "text_model.encoder.layers.1.mlp.fc1")
_LORA2_GROUPS = (
    ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v"),
    ("single_transformer_blocks.1.attn.to_q", "single_transformer_blocks.1.attn.to_k",
     "single_transformer_blocks.1.attn.to_v", "single_transformer_blocks.1.proj_mlp"),
    ("single_transformer_blocks.0.proj_out",), ("time_text_embed.timestep_embedder.linear_1",),
)
_LORA2_CLIP = ("text_model.encoder.layers.1.self_attn.out_proj",)


def _config(**extra: Any) -> dict[str, Any]:
    return dict(TINY_TRANSFORMER, joint_attention_dim=TINY_T5["d_model"],
                pooled_projection_dim=TINY_CLIP["hidden_size"], guidance_embeds=True, **extra)


def tiny_fill_transformer(seed: int = 0) -> Any:
    """FLUX.1 Fill, tiny: 64 latent + 320 conditioning input channels (masked image latent, 8x8 mask)."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**_config(in_channels=384, out_channels=64))
    return make_sensitive_(seeded_init_(model, seed * 1000 + 20)).eval()


def tiny_kontext_transformer(seed: int = 0) -> Any:
    """FLUX.1 Kontext, tiny: dev's shapes with their own weights."""
    from diffusers import FluxTransformer2DModel

    return make_sensitive_(seeded_init_(FluxTransformer2DModel(**_config()), seed * 1000 + 21)).eval()


def tiny_siglip(seed: int = 0) -> Any:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    return seeded_init_(SiglipVisionModel(SiglipVisionConfig(**TINY_SIGLIP)), seed * 1000 + 22).eval()


def tiny_redux(seed: int = 0) -> Any:
    """The Redux embedder sized to the tiny SigLIP (input) and tiny T5 (output); its output scaled up so the
    image tokens weigh like text tokens."""
    import torch
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    model = seeded_init_(ReduxImageEncoder(redux_dim=TINY_SIGLIP["hidden_size"],
                                           txt_in_features=TINY_T5["d_model"]), seed * 1000 + 23)
    with torch.no_grad():
        model.redux_down.weight.mul_(3.0)
    return model.eval()


def siglip_processor_config() -> dict[str, Any]:
    size = TINY_SIGLIP["image_size"]
    return {"image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": size,
            "width": size}, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}


def tiny_lora(which: int = 1, seed: int = 0) -> list[tuple[str, tuple[str, ...], Any, list[Any]]]:
    """LoRA `which` (1 or 2) over the tiny dev transformer and tiny CLIP, as groups
    (part "transformer" | "text_encoder", module names, shared down [r, in], ups [[out, r], ...]);
    the delta of a module is its up @ down."""
    import torch

    groups, clip_targets = (_LORA1_GROUPS, _LORA1_CLIP) if which == 1 else (_LORA2_GROUPS, _LORA2_CLIP)
    modules = _module_shapes()
    gen = torch.Generator().manual_seed(seed * 1000 + 30 + which)
    out = []
    for part, group in [("transformer", g) for g in groups] + [("text_encoder", (n,)) for n in clip_targets]:
        # transformers 5 has no `text_model.` level in CLIPTextModel; files (and LoRAs) keep that prefix
        found = [modules[part][name.removeprefix("text_model.")] for name in group]
        down = torch.randn(LORA_RANK, found[0].in_features, generator=gen) / found[0].in_features ** 0.5
        ups = [torch.randn(m.out_features, LORA_RANK, generator=gen) * (0.5 / LORA_RANK ** 0.5) for m in found]
        out.append((part, group, down, ups))
    return out


def _module_shapes() -> dict[str, dict[str, Any]]:
    """Named modules of the tiny dev transformer and tiny CLIP, built on the meta device (shapes only)."""
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**_config())
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(make_clip_tokenizer()), **TINY_CLIP))
    return {"transformer": dict(transformer.named_modules()), "text_encoder": dict(clip.named_modules())}


def lora_deltas(which: int = 1, seed: int = 0) -> dict[str, tuple[Any, Any]]:
    """{"transformer.<module>" | "text_encoder.<module>": (down, up)}: LoRA `which` in diffusers names."""
    return {f"{part}.{name}": (down, up) for part, group, down, ups in tiny_lora(which, seed)
            for name, up in zip(group, ups)}


def lora_files(which: int = 1, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{layout: state dict} of LoRA `which` in each layout it is shipped in."""
    groups = tiny_lora(which, seed)
    files: dict[str, dict[str, Any]] = {}
    for layout, alpha in (LORA_LAYOUTS if which == 1 else LORA2_LAYOUTS).items():
        state: dict[str, Any] = {}
        if layout == "peft":
            for name, (down, up) in lora_deltas(which, seed).items():
                state[f"{name}.lora_A.weight"] = down
                state[f"{name}.lora_B.weight"] = up
            files[layout] = state
            continue
        scale = 1.0 if alpha is None else alpha / LORA_RANK
        names_a, names_b = ("lora_A", "lora_B") if layout == "comfy" else ("lora_down", "lora_up")
        for part, group, down, ups in groups:
            if part == "transformer":
                # BFL module and its fused up: q/k/v and linear1 rows joined, final modulation halves swapped
                ((bfl_key, up),) = diffusers_to_bfl({f"{n}.weight": u for n, u in zip(group, ups)}).items()
                module = bfl_key[: -len(".weight")]
                key = f"lora_unet_{module.replace('.', '_')}" if layout == "kohya" else f"diffusion_model.{module}"
            else:
                (module,), (up,) = group, ups
                key = f"lora_te1_{module.replace('.', '_')}" if layout == "kohya" else \
                    f"text_encoders.clip_l.transformer.{module}"
            state[f"{key}.{names_a}.weight"] = down
            state[f"{key}.{names_b}.weight"] = up / scale  # alphas are powers of two: exact
            if alpha is not None:
                state[f"{key}.alpha"] = _scalar(alpha)
        files[layout] = state
    return files


def _scalar(value: float) -> Any:
    import torch

    return torch.tensor(value, dtype=torch.float32)


def _save_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _plain_config(config: Any) -> dict[str, Any]:
    data = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()
            if not k.startswith("_") or k == "_class_name"}


def write_conditioning_zoo(models_dir: str | Path, seed: int = 0, metadata: dict[str, str] | None = None) -> list[Path]:
    """Write this module's part of the tiny zoo; returns the files written."""
    models_dir = Path(models_dir)
    meta = dict(metadata or {})
    written: list[Path] = []
    for variant, model, name in (("fill", tiny_fill_transformer(seed), "flux1-fill-tiny"),
                                 ("kontext", tiny_kontext_transformer(seed), "flux1-kontext-dev-tiny")):
        state = model.state_dict()
        written.append(save_safetensors(diffusers_to_bfl(state), models_dir / f"diffusion_models/{name}.safetensors",
                                        dict(meta, **{"fluxgraph.variant": variant})))
        folder = models_dir / f"diffusers/flux1-{variant}-tiny-transformer"
        written.append(_save_json({**_plain_config(model.config), "_class_name": "FluxTransformer2DModel"},
                                  folder / "config.json"))
        written.append(save_safetensors(state, folder / "diffusion_pytorch_model.safetensors"))
    siglip = tiny_siglip(seed)
    vision_state = {f"vision_model.{k}": v for k, v in siglip.state_dict().items()}
    written.append(save_safetensors(vision_state, models_dir / "clip_vision/sigclip-vision-tiny.safetensors", meta))
    folder = models_dir / "clip_vision/siglip-vision-tiny"
    config = _plain_config(siglip.config)
    config.update(architectures=["SiglipVisionModel"], model_type="siglip_vision_model")
    for key in ("transformers_version", "id2label", "label2id", "dtype"):
        config.pop(key, None)
    written.append(_save_json(config, folder / "config.json"))
    written.append(save_safetensors(vision_state, folder / "model.safetensors", {"format": "pt"}))
    written.append(_save_json(siglip_processor_config(), folder / "preprocessor_config.json"))
    redux = tiny_redux(seed)
    written.append(save_safetensors(redux.state_dict(), models_dir / "style_models/flux1-redux-tiny.safetensors", meta))
    folder = models_dir / "style_models/flux1-redux-tiny-embedder"
    written.append(_save_json({"_class_name": "ReduxImageEncoder", "redux_dim": TINY_SIGLIP["hidden_size"],
                               "txt_in_features": TINY_T5["d_model"]}, folder / "config.json"))
    written.append(save_safetensors(redux.state_dict(), folder / "diffusion_pytorch_model.safetensors"))
    for which, stem in ((1, "flux1-dev-tiny-lora"), (2, "flux1-dev-tiny-lora2")):
        for layout, state in lora_files(which, seed).items():
            written.append(save_safetensors(state, models_dir / f"loras/{stem}-{layout}.safetensors", meta))
    return written
