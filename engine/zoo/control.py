"""Tiny zoo, structural control part: FLUX.1 Depth and Canny transformers, a control LoRA, a union ControlNet,
a plain ControlNet and a tiny Depth Anything V2.

Written by `write_control_zoo` (called from `engine.zoo.writer.write_tiny_zoo`):

    diffusion_models/flux1-{depth,canny}-dev-tiny.safetensors   128-input-channel transformers, BFL keys
    diffusers/flux1-{depth,canny}-tiny-transformer/              the same as diffusers transformer folders
    loras/flux1-{depth,canny}-dev-tiny-lora.safetensors          control LoRAs for the tiny dev, BFL keys as BFL
                                                                 ships it: widens img_in to 128, q/k norm scales
    depth/depth-anything-v2-tiny/                                Depth Anything V2, transformers folder (config,
                                                                 weights, DPT preprocessor at 70 px)
    depth/depth_anything_v2_tiny.safetensors                     the same as a single file, the hub's key names
    controlnet/flux-tiny-controlnet-union.safetensors            InstantX-style union ControlNet (10 modes)
    controlnet/flux-tiny-controlnet.safetensors                  InstantX-style ControlNet
    controlnet/flux-tiny-controlnet-xlabs.safetensors            XLabs-layout ControlNet (pixel hint block)
    diffusers/flux-tiny-controlnet-{union,plain,xlabs}/          the three as diffusers folders (references)

The control columns of `img_in` (the control latent's 64 packed channels) are scaled up so that a changed
control image clearly moves the image (tests/parity/test_flux_control_parity.py checks >= 0.01).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.models.common.safetensors_io import save_safetensors
from engine.models.control.depth_anything import DEFAULT_PROCESSOR, HUB_RENAMES
from engine.models.flux1.keys import diffusers_to_bfl
from engine.zoo.conditioning import _config, _module_shapes, _plain_config, _save_json
from engine.zoo.flux1_tiny import make_sensitive_, seeded_init_

CONTROL_KINDS = ("depth", "canny")
CONTROL_INPUT_GAIN = 4.0  # control-latent columns of img_in, so the control image matters on random weights
CONTROL_LORA_RANK = 4
# Control LoRA targets (diffusers names; fused BFL modules list all their parts with one shared down matrix),
# the final modulation included (its halves are swapped between layouts), and the norm scales it replaces.
_CONTROL_LORA_GROUPS = (
    ("x_embedder",),
    ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v"),
    ("single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
     "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"),
    ("single_transformer_blocks.1.proj_out",), ("norm_out.linear",),
)
_CONTROL_LORA_NORMS = ("transformer_blocks.0.attn.norm_q.weight", "transformer_blocks.0.attn.norm_k.weight",
                       "transformer_blocks.1.attn.norm_added_k.weight",
                       "single_transformer_blocks.1.attn.norm_q.weight")


def tiny_control_transformer(kind: str = "depth", seed: int = 0) -> Any:
    """FLUX.1 Depth or Canny dev, tiny: 64 latent + 64 control-latent input channels."""
    import torch
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(**_config(in_channels=128, out_channels=64))
    model = make_sensitive_(seeded_init_(model, seed * 1000 + 40 + CONTROL_KINDS.index(kind)))
    with torch.no_grad():
        model.x_embedder.weight[:, 64:].mul_(CONTROL_INPUT_GAIN)
    return model.eval()


LoraGroups = list[tuple[tuple[str, ...], Any, list[Any]]]  # (modules, shared down, ups)


def tiny_control_lora(seed: int = 0, kind: str = "depth") -> tuple[LoraGroups, dict[str, Any]]:
    """The tiny control LoRA in diffusers names: ([(modules, shared down [r, in], ups [[out, r], ...])],
    {norm weight: replacement}). img_in's down is 128 wide: the delta of a module is its up @ down."""
    import torch

    modules = _module_shapes()["transformer"]
    gen = torch.Generator().manual_seed(seed * 1000 + 50 + CONTROL_KINDS.index(kind))
    groups = []
    for group in _CONTROL_LORA_GROUPS:
        found = [modules[name] for name in group]
        width = 2 * found[0].in_features if group == ("x_embedder",) else found[0].in_features
        down = torch.randn(CONTROL_LORA_RANK, width, generator=gen) / width ** 0.5
        gain = CONTROL_INPUT_GAIN if group == ("x_embedder",) else 1.0
        if group == ("x_embedder",):  # the control-latent half must weigh (sensitivity on random weights)
            down[:, width // 2:] *= 2 * CONTROL_INPUT_GAIN
        ups = [torch.randn(m.out_features, CONTROL_LORA_RANK, generator=gen) * (gain * 0.5 / CONTROL_LORA_RANK ** 0.5)
               for m in found]
        groups.append((group, down, ups))
    norms = {}
    for name in _CONTROL_LORA_NORMS:
        width = modules[name.removesuffix(".weight")].weight.shape[0]
        norms[name] = 1.0 + 0.5 * torch.randn(width, generator=gen)
    return groups, norms


def control_lora_file(seed: int = 0, kind: str = "depth") -> dict[str, Any]:
    """The control LoRA as BFL ships flux1-depth-dev-lora: bare BFL keys, lora_A / lora_B, norm `.scale`s."""
    groups, norms = tiny_control_lora(seed, kind)
    state: dict[str, Any] = {}
    for group, down, ups in groups:
        ((bfl_key, up),) = diffusers_to_bfl({f"{n}.weight": u for n, u in zip(group, ups)}).items()
        module = bfl_key[: -len(".weight")]
        state[f"{module}.lora_A.weight"] = down.contiguous()
        state[f"{module}.lora_B.weight"] = up.contiguous()
    state.update(diffusers_to_bfl(norms))
    return state


TINY_DEPTH_BACKBONE = dict(model_type="dinov2", hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                           mlp_ratio=2, patch_size=14, image_size=56, out_indices=[1, 2, 3, 4],
                           reshape_hidden_states=False, apply_layernorm=True, layerscale_value=1.0)
TINY_DEPTH = dict(patch_size=14, reassemble_hidden_size=128, neck_hidden_sizes=[16, 32, 48, 64], fusion_hidden_size=32,
                  head_hidden_size=16, depth_estimation_type="relative", max_depth=1)
TINY_DEPTH_RESOLUTION = 70  # the processor's size: 5 x 14 patches


def tiny_depth_anything(seed: int = 0) -> Any:
    """Depth Anything V2, tiny: a 4-layer 128-wide DINOv2 and a narrow DPT neck and head."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    config = DepthAnythingConfig(backbone_config=dict(TINY_DEPTH_BACKBONE), **TINY_DEPTH)
    return seeded_init_(DepthAnythingForDepthEstimation(config), seed * 1000 + 60).eval()


def _depth_processor_config() -> dict[str, Any]:
    return {"image_processor_type": "DPTImageProcessor", "do_resize": True, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "do_pad": False,
            "size": {"height": TINY_DEPTH_RESOLUTION, "width": TINY_DEPTH_RESOLUTION}, **DEFAULT_PROCESSOR}


def _write_depth(models_dir: Path, seed: int, meta: dict[str, str]) -> list[Path]:
    model = tiny_depth_anything(seed)
    folder = models_dir / "depth/depth-anything-v2-tiny"
    model.save_pretrained(str(folder))
    written = sorted(p for p in folder.rglob("*") if p.is_file())
    written.append(_save_json(_depth_processor_config(), folder / "preprocessor_config.json"))
    hub = {}
    for key, value in model.state_dict().items():
        for old, new in HUB_RENAMES:
            key = key.replace(new, old)
        hub[key] = value
    written.append(save_safetensors(hub, models_dir / "depth/depth_anything_v2_tiny.safetensors", meta))
    return written


CONTROLNET_KINDS = {"union": dict(num_layers=1, num_single_layers=2, num_mode=10),
                    "plain": dict(num_layers=1, num_single_layers=2),
                    "xlabs": dict(num_layers=2, num_single_layers=0, conditioning_embedding_channels=16, patch_size=2)}
CONTROLNET_FILES = {"union": "flux-tiny-controlnet-union", "plain": "flux-tiny-controlnet",
                    "xlabs": "flux-tiny-controlnet-xlabs"}
_CONTROLNET_GAINS = (("controlnet_blocks.", 3.0), ("controlnet_single_blocks.", 3.0), ("controlnet_x_embedder.", 3.0),
                     ("input_hint_block.conv_out.", 10.0))


def tiny_controlnet(kind: str = "union", seed: int = 0) -> Any:
    """A tiny FluxControlNetModel sized to the tiny dev transformer (see CONTROLNET_KINDS); its output
    projections and hint embedder scaled up so that the control image clearly moves the image."""
    from diffusers import FluxControlNetModel

    config = {k: v for k, v in _config(**CONTROLNET_KINDS[kind]).items() if k != "out_channels"}
    model = FluxControlNetModel(**config)
    seeded_init_(model, seed * 1000 + 70 + list(CONTROLNET_KINDS).index(kind))
    return make_sensitive_(make_sensitive_(model), _CONTROLNET_GAINS).eval()


def xlabs_file_state(model: Any) -> dict[str, Any]:
    """A FluxControlNetModel's weights in the XLabs layout (BFL blocks, pos_embed_input, input_hint_block.N)."""
    hint = {"conv_in": 0, **{f"blocks.{i}": 2 * i + 2 for i in range(6)}, "conv_out": 14}
    own, rest = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith("controlnet_x_embedder."):
            own["pos_embed_input." + key.split(".", 1)[1]] = value
        elif key.startswith("input_hint_block."):
            stem, leaf = key[len("input_hint_block."):].rsplit(".", 1)
            own[f"input_hint_block.{hint[stem]}.{leaf}"] = value
        elif key.startswith("controlnet_"):
            own[key] = value
        else:
            rest[key] = value
    return {**diffusers_to_bfl(rest), **own}


def _write_controlnets(models_dir: Path, seed: int, meta: dict[str, str]) -> list[Path]:
    written = []
    for kind, name in CONTROLNET_FILES.items():
        model = tiny_controlnet(kind, seed)
        state = xlabs_file_state(model) if kind == "xlabs" else model.state_dict()
        written.append(save_safetensors(state, models_dir / f"controlnet/{name}.safetensors", meta))
        folder = models_dir / f"diffusers/flux-tiny-controlnet-{kind}"
        written.append(_save_json({**_plain_config(model.config), "_class_name": "FluxControlNetModel"},
                                  folder / "config.json"))
        written.append(save_safetensors(model.state_dict(), folder / "diffusion_pytorch_model.safetensors"))
    return written


def write_control_zoo(models_dir: str | Path, seed: int = 0, metadata: dict[str, str] | None = None) -> list[Path]:
    """Write this module's part of the tiny zoo; returns the files written."""
    models_dir = Path(models_dir)
    meta = dict(metadata or {})
    written: list[Path] = []
    for kind in CONTROL_KINDS:
        model = tiny_control_transformer(kind, seed)
        state = model.state_dict()
        written.append(save_safetensors(diffusers_to_bfl(state),
                                        models_dir / f"diffusion_models/flux1-{kind}-dev-tiny.safetensors",
                                        dict(meta, **{"fluxgraph.variant": kind})))
        folder = models_dir / f"diffusers/flux1-{kind}-tiny-transformer"
        written.append(_save_json({**_plain_config(model.config), "_class_name": "FluxTransformer2DModel"},
                                  folder / "config.json"))
        written.append(save_safetensors(state, folder / "diffusion_pytorch_model.safetensors"))
    for kind in CONTROL_KINDS:
        written.append(save_safetensors(control_lora_file(seed, kind),
                                        models_dir / f"loras/flux1-{kind}-dev-tiny-lora.safetensors", meta))
    written += _write_depth(models_dir, seed, meta)
    written += _write_controlnets(models_dir, seed, meta)
    return written
