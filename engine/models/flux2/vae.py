"""The FLUX.2 VAE: diffusers' AutoencoderKLFlux2, loaded from BFL / ComfyUI files, diffusers-keyed files and
folders, and wrapped so that the graph sees FLUX.2's latent space directly.

FLUX.2's autoencoder has 32 latent channels at 1/8 of the image; the transformer works on 2x2 patches of it
(128 channels at 1/16), normalised by a batch-norm's running statistics stored with the VAE (`bn.*`). The
transformer handle does not carry those statistics, so `Flux2Autoencoder` does the patchify + normalise on
encode and the inverse on decode: a FLUX.2 LATENT's `samples` are [B, 128, H/16, W/16] in model space (what
EmptyFlux2LatentImage makes and ReferenceLatent passes on), and the sampler maps nothing.

Key layout and config from shapes (single files): engine/models/flux2/vae_keys.py; a folder is built from
its own config.json.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from torch import nn  # noqa: TID253 - Flux2Autoencoder is an nn.Module; this module loads only with a FLUX.2 VAE

from engine.models.common.build import instantiate, load_folder_weights, model_subfolder, read_folder_config
from engine.models.common.family import require_family_part
from engine.models.common.handles import FluxVAE
from engine.models.common.safetensors_io import ModelFileError, open_safetensors
from engine.models.common.vae_keys import VaeKeyError
from engine.models.flux2.vae_keys import bfl_flux2_vae_to_diffusers, infer_flux2_vae_config


def load_flux2_vae(path: str | Path, dtype: Any = None) -> FluxVAE:
    """The VAE handle (family "flux2") for a FLUX.2 VAE file or diffusers folder."""
    path = Path(path)
    if path.is_dir():
        folder = model_subfolder(path, "vae")
        config = read_folder_config(folder)
        cls = config.get("_class_name")
        if cls != "AutoencoderKLFlux2":
            raise ModelFileError(folder, f"holds a {cls}, expected the FLUX.2 VAE (AutoencoderKLFlux2)")
        return build_flux2_vae(load_folder_weights(folder), folder, dtype, config=config)
    part = require_family_part(path, ("flux2-vae",), "the FLUX.2 VAE")
    sf = open_safetensors(path)
    wanted = tuple(part.prefix + name for name in ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "bn."))
    state = sf.load(part.prefix, keys=[k for k in sf.keys() if k.startswith(wanted)])
    if part.layout == "bfl":
        try:
            state = bfl_flux2_vae_to_diffusers(state)
        except VaeKeyError as exc:
            raise ModelFileError(path, f"unknown FLUX.2 autoencoder tensor {exc.args[0]!r}") from None
    return build_flux2_vae(state, path, dtype)


def build_flux2_vae(state: dict[str, Any], source: str | Path, dtype: Any = None,
                    config: dict[str, Any] | None = None) -> FluxVAE:
    """The FLUX.2 VAE handle; `config`: a folder's own config.json (used as it is), None infers it from shapes."""
    import torch
    from diffusers import AutoencoderKLFlux2

    state = dict(state)
    state.setdefault("bn.num_batches_tracked", torch.zeros((), dtype=torch.long))
    if config is None:
        try:
            config = infer_flux2_vae_config({k: tuple(v.shape) for k, v in state.items()})
        except VaeKeyError as exc:
            raise ModelFileError(source, f"not the FLUX.2 VAE: tensor {exc.args[0]!r} is missing") from None
        except (ValueError, KeyError) as exc:
            raise ModelFileError(source, f"not the FLUX.2 VAE: {exc}") from None
    vae = instantiate(lambda: AutoencoderKLFlux2.from_config(dict(config)), state, source, dtype=dtype)
    vae.bn.running_mean = vae.bn.running_mean.float()  # statistics stay float32 whatever the weights' dtype
    vae.bn.running_var = vae.bn.running_var.float()
    return FluxVAE(vae=Flux2Autoencoder(vae), scaling_factor=1.0, shift_factor=0.0, source=str(source))


class _Encoded:
    """What `encode` returns: `.latent_dist.mode()` as diffusers' AutoencoderKLOutput (deterministic)."""

    def __init__(self, latents: Any) -> None:
        self._latents = latents
        self.latent_dist = self

    def mode(self) -> Any:
        return self._latents


class Flux2Autoencoder(nn.Module):
    """AutoencoderKLFlux2 seen in FLUX.2's model space: encode -> normalised 2x2 patches, decode <- them."""

    spatial_scale = 16

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        side = int(inner.config.patch_size[0])
        self.patch = side
        self.spatial_scale = side * 2 ** (len(inner.config.block_out_channels) - 1)
        self.config = SimpleNamespace(latent_channels=int(inner.config.latent_channels) * side * side,
                                      vae_latent_channels=int(inner.config.latent_channels))

    def _stats(self, like: Any) -> tuple[Any, Any]:
        import torch

        bn = self.inner.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.inner.config.batch_norm_eps).to(like.device,
                                                                                                 like.dtype)
        return mean, std

    def patchify(self, latents: Any) -> Any:
        b, c, h, w = latents.shape
        p = self.patch
        x = latents.view(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * p * p, h // p, w // p)

    def unpatchify(self, latents: Any) -> Any:
        b, c, h, w = latents.shape
        p = self.patch
        x = latents.reshape(b, c // (p * p), p, p, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // (p * p), h * p, w * p)

    def encode(self, pixels: Any) -> _Encoded:
        """Pixels in -1..1 [B, 3, H, W] -> normalised patchified latents [B, 128, H/16, W/16]."""
        raw = self.inner.encode(pixels).latent_dist.mode()
        latents = self.patchify(raw)
        mean, std = self._stats(latents)
        return _Encoded((latents - mean) / std)

    def decode(self, latents: Any, return_dict: bool = False) -> tuple[Any]:
        mean, std = self._stats(latents)
        raw = self.unpatchify(latents * std + mean)
        return (self.inner.decode(raw, return_dict=False)[0],)
