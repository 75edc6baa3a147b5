"""Live sampling previews: each step's x0 estimate -> a small RGB picture, by ComfyUI's preview methods.

The sampler hands a `LatentPreview` (a reference to the step's x0 estimate, model space, and the latent
family) with its progress report; nothing is computed unless the run wants previews. The backend that runs
the prompt renders it with the run's method (`--preview-method`, or the prompt's own
`extra_data.preview_method`):

- `latent2rgb`: a fixed linear map of the latent channels to RGB (+ bias), at latent resolution (1/8 of the
  image for FLUX.1; FLUX.2's 128 channels are first unpacked to 32 channels at 1/8 as well);
- `taesd`: the tiny TAESD-style decoder `taef1*` / `taef2*` from models/vae_approx (engine.models.common.
  vae_approx), fed the model-space latent as ComfyUI feeds its TAESD previewer; a latent whose picture would
  exceed the preview size is first area-downscaled to it, so a 1024x1024 step decodes only 512x512 pixels;
- `auto`: taesd when the family's decoder is present, latent2rgb otherwise (also what `taesd` falls back
  to, with a warning, when the decoder is missing, as ComfyUI does);
- `none`: no previews at all (the backend passes no preview callback).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")

# FLUX.1 (16 channels, model space: (raw - 0.1159) * 0.3611). Published constants (a least-squares fit of
# the VAE decoder's response): ComfyUI's comfy/latent_formats.py `Flux.latent_rgb_factors` and _bias, also
# shipped by InvokeAI (Apache-2.0) as FLUX_LATENT_RGB_FACTORS / FLUX_LATENT_RGB_BIAS. Rows: channels; R, G, B.
FLUX1_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
)
FLUX1_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
# FLUX.2 (32 channels, after unpacking the 128-channel 2x2 patches of the normalised latent). Published
# constants: ComfyUI's comfy/latent_formats.py `Flux2.latent_rgb_factors`, reproduced as
# FLUX2_LATENT_RGB_FACTORS by public FLUX.2 front-ends; the bias is the one those projects pair with it.
FLUX2_RGB_FACTORS = (
    (0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644), (0.2144, 0.3009, 0.3652),
    (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160), (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109),
    (-0.3527, -0.2712, -0.1666), (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
    (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080), (-0.0939, -0.0008, 0.0186),
    (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127), (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065),
    (0.0128, 0.0101, 0.0142), (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
    (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025), (0.0220, 0.0169, -0.0048),
    (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609), (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614),
)
FLUX2_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
_FACTORS = {"flux1": (FLUX1_RGB_FACTORS, FLUX1_RGB_BIAS), "flux2": (FLUX2_RGB_FACTORS, FLUX2_RGB_BIAS)}
FLUX2_PATCH = 2


def unpack_flux2(latent: torch.Tensor) -> torch.Tensor:
    """[B, 128, h, w] -> [B, 32, 2h, 2w]: channel c*4 + 2*dy + dx is pixel (dy, dx) of channel c (the VAE's
    patchify order, engine.models.flux2.vae)."""
    b, c, h, w = latent.shape
    p = FLUX2_PATCH
    x = latent.reshape(b, c // (p * p), p, p, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // (p * p), h * p, w * p)


def decoder_latent(x0: torch.Tensor, family: str) -> torch.Tensor:
    """The first batch item in the space the previewers read (FLUX.2 unpacked), float32."""
    latent = x0[:1].float()
    return unpack_flux2(latent) if family == "flux2" else latent


def latent2rgb(x0: torch.Tensor, family: str) -> torch.Tensor:
    """[h, w, 3] uint8 on x0's device, by the family's linear factors."""
    factors, bias = _FACTORS[family]
    latent = decoder_latent(x0, family)[0]
    weight = torch.tensor(factors, dtype=latent.dtype, device=latent.device)
    if latent.shape[0] != weight.shape[0]:
        raise ValueError(f"a {family} preview needs {weight.shape[0]} latent channels, got {latent.shape[0]}")
    rgb = torch.einsum("chw,cr->hwr", latent, weight) + torch.tensor(bias, dtype=latent.dtype, device=latent.device)
    return _to_uint8(rgb)


def taesd_decode(x0: torch.Tensor, family: str, decoder: Any, max_size: int) -> torch.Tensor:
    """[H, W, 3] uint8 from a TAESD-style decoder, the latent first fitted to `max_size` pixels."""
    latent = decoder_latent(x0, family)
    scale = 2 ** (len(decoder.config.decoder_block_out_channels) - 1)
    longest = max(latent.shape[-2:]) * scale
    if max_size > 0 and longest > max_size:
        factor = max_size / longest
        size = (max(1, math.floor(latent.shape[-2] * factor)), max(1, math.floor(latent.shape[-1] * factor)))
        latent = F.interpolate(latent, size=size, mode="area")
    device = next(decoder.parameters()).device
    image = decoder.decode(latent.to(device), return_dict=False)[0][0]  # -1..1, [3, H, W]
    return _to_uint8(image.permute(1, 2, 0))


def _to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).to(torch.uint8)


def resolve_method(method: str, folders: Any, family: str) -> str:
    """`auto` / `taesd` -> the method that will run: taesd only when the family's decoder is present."""
    if method not in ("auto", "taesd"):
        return method
    from engine.models.common.vae_approx import find_tiny_decoder  # noqa: PLC0415 - loads diffusers lazily

    if find_tiny_decoder(folders, family) is not None:
        return "taesd"
    if method == "taesd":
        log.warning("taesd previews asked for, but models/vae_approx holds no %s decoder: using latent2rgb",
                    "taef2" if family == "flux2" else "taef1")
    return "latent2rgb"


@dataclass(frozen=True)
class LatentPreview:
    """What a sampler reports with each step: the x0 estimate (model space) and its latent family."""

    x0: torch.Tensor
    family: str = "flux1"

    def render(self, method: str = "auto", folders: Any = None, max_size: int = 512) -> Any:
        """A PIL image by `method` (none -> None)."""
        from PIL import Image  # noqa: PLC0415 - PIL loads with the first preview

        if method == "none":
            return None
        with torch.inference_mode():
            if resolve_method(method, folders, self.family) == "taesd":
                from engine.models.common.vae_approx import find_tiny_decoder, load_tiny_decoder  # noqa: PLC0415 - diffusers loads with the first taesd preview

                decoder = load_tiny_decoder(find_tiny_decoder(folders, self.family), self.x0.device)
                pixels = taesd_decode(self.x0, self.family, decoder, max_size)
            else:
                pixels = latent2rgb(self.x0, self.family)
        return Image.fromarray(pixels.cpu().numpy(), "RGB")
