"""FLUX.2 VAE weights: BFL / ComfyUI key layout <-> diffusers AutoencoderKLFlux2, and its config from shapes.

BFL layout: the FLUX.1 LDM keys (`encoder.down.*`, `decoder.up.*`, converted by common/vae_keys.py) plus
`encoder.quant_conv.*`, `decoder.post_quant_conv.*` (top-level `quant_conv.*` in diffusers) and `bn.*`.
GroupNorm groups (32) and the batch-norm eps (1e-4) cannot be seen in the weights: FLUX.2's values.
No torch here: the tiny zoo writes the BFL layout with it, and loading imports torch only when it builds.
"""

from __future__ import annotations

from typing import Any

from engine.models.common.vae_keys import VaeKeyError, bfl_vae_to_diffusers, diffusers_vae_to_bfl, infer_vae_config

BATCH_NORM_EPS = 1e-4
_MOVED = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv."}


def bfl_flux2_vae_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """BFL FLUX.2 autoencoder keys -> AutoencoderKLFlux2 keys."""
    out, rest = _move_prefixes(state, _MOVED, ("bn.", "quant_conv.", "post_quant_conv."))
    out.update(bfl_vae_to_diffusers(rest))
    return out


def diffusers_to_bfl_flux2_vae(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `bfl_flux2_vae_to_diffusers` (writes the tiny zoo's BFL-layout file)."""
    out, rest = _move_prefixes(state, {new: old for old, new in _MOVED.items()}, ("bn.",))
    out.update(diffusers_vae_to_bfl(rest))
    return out


def _move_prefixes(state: dict[str, Any], moves: dict[str, str], kept: tuple[str, ...]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the keys FLUX.2 adds: prefixes renamed by `moves`, those starting with `kept` as they are; the rest, for
    the FLUX.1 converter)."""
    out: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in state.items():
        moved = next((new + key[len(old):] for old, new in moves.items() if key.startswith(old)), None)
        if moved is not None:
            out[moved] = value
        elif key.startswith(kept):
            out[key] = value
        else:
            rest[key] = value
    return out, rest


def infer_flux2_vae_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """An AutoencoderKLFlux2 config from diffusers-keyed shapes."""
    base = infer_vae_config(shapes)
    latent = base["latent_channels"]
    bn = shapes.get("bn.running_mean")
    if bn is None:
        raise VaeKeyError("bn.running_mean")
    if bn[0] % latent or int(round((bn[0] // latent) ** 0.5)) ** 2 != bn[0] // latent:
        raise ValueError(f"batch-norm width {bn[0]} is not a square patch of the {latent} latent channels")
    side = int(round((bn[0] // latent) ** 0.5))
    levels = len(base["block_out_channels"])
    decoder = [shapes[f"decoder.up_blocks.{levels - 1 - i}.resnets.0.conv2.weight"][0] for i in range(levels)]
    config = {k: v for k, v in base.items() if k != "_class_name"}
    config.update(_class_name="AutoencoderKLFlux2", batch_norm_eps=BATCH_NORM_EPS, patch_size=[side, side],
                  decoder_block_out_channels=None if decoder == base["block_out_channels"] else decoder)
    return config
