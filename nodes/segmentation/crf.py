"""Dense CRF (Krähenbühl & Koltun 2011) mean-field inference in torch, on the device of its inputs.

Energy: unary -log P(label) plus Potts pairwise terms with two Gaussian kernels over all pixel pairs:
- appearance (bilateral): w_a · exp(-|p_i - p_j|² / 2σ_xy² - |I_i - I_j|² / 2σ_rgb²)
- smoothness (spatial):   w_s · exp(-|p_i - p_j|² / 2σ_s²)

The smoothness message is a separable Gaussian blur (exact up to truncation at 4σ). The appearance message sums
over a regular subsample of the pixels (every `stride`-th row and column, each standing for stride² pixels):
exact when stride is 1, which the tests check against a brute-force N×N implementation; larger images use a
coarser subsample (the long-range bilateral kernel varies slowly in space, so the sum is well approximated).
No package was used: pydensecrf only builds from an unmaintained sdist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SAMPLE_BUDGET = 2048  # subsampled pixels the appearance message sums over
ROW_CHUNK = 8192  # pixels whose messages are computed at once (bounds memory to ROW_CHUNK × samples)
KERNEL_CACHE_ELEMENTS = 1 << 27  # kernel entries kept across iterations (512 MB of float32)


@dataclass(frozen=True)
class CRFParams:
    iterations: int = 5
    bilateral_sigma_xy: float = 80.0  # pixels
    bilateral_sigma_rgb: float = 13.0  # on the 0..255 colour scale
    bilateral_weight: float = 10.0
    smooth_sigma_xy: float = 3.0
    smooth_weight: float = 3.0


def soften(probs: Any, confidence: float) -> Any:
    """K×N probabilities -> confidence·P + (1-confidence)·(1-P)/(K-1); a hard 0/1 label becomes c / (1-c)/(K-1),
    so that the CRF may overrule it where colours disagree."""
    k = probs.shape[0]
    if k < 2:
        return probs
    return confidence * probs + (1 - confidence) * (1 - probs) / (k - 1)


def gaussian_blur(q: Any, sigma: float) -> Any:
    """K×H×W -> separable Gaussian blur, kernel exp(-d²/2σ²) (not normalised), truncated at 4σ, zero outside."""
    import torch

    radius = max(1, int(math.ceil(4 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=q.device, dtype=q.dtype)
    kernel = torch.exp(-(offsets ** 2) / (2 * sigma * sigma))
    x = q[:, None]
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, radius))
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return x[:, 0]


def bilateral_features(image: Any, sigma_xy: float, sigma_rgb: float) -> Any:
    """H×W×3 (0..1) -> N×5 features (y/σxy, x/σxy, rgb·255/σrgb)."""
    import torch

    h, w = image.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=torch.float32),
                            torch.arange(w, device=image.device, dtype=torch.float32), indexing="ij")
    position = torch.stack([ys, xs], dim=-1) / sigma_xy
    colour = image.float() * 255.0 / sigma_rgb
    return torch.cat([position, colour], dim=-1).reshape(h * w, 5)


class AppearanceKernel:
    """Σ_j over the subsample of stride²·k(f_i, f_j)·Q_j for every pixel i, minus each pixel's own term.

    The kernel rows depend only on the image, so they are computed once and kept when they fit in
    KERNEL_CACHE_ELEMENTS; larger images recompute them chunk by chunk at every iteration."""

    def __init__(self, features: Any, shape: tuple[int, int], stride: int) -> None:
        import torch

        h, w = shape
        self.grid = torch.arange(h * w, device=features.device).view(h, w)[::stride, ::stride].reshape(-1)
        self.weight = float(stride * stride)
        self.features = features
        self.f_s = features[self.grid]
        self.norm_s = (self.f_s * self.f_s).sum(dim=1)
        self.starts = list(range(0, h * w, ROW_CHUNK))
        fits = h * w * len(self.grid) <= KERNEL_CACHE_ELEMENTS
        self.cached = [self._rows(start) for start in self.starts] if fits else None

    def _rows(self, start: int) -> Any:
        # exp(-|f_i - f_j|²/2) = exp(f_i·f_j - |f_i|²/2 - |f_j|²/2), computed in place on one buffer
        f_i = self.features[start:start + ROW_CHUNK]
        rows = f_i @ self.f_s.T
        rows.sub_(0.5 * (f_i * f_i).sum(dim=1, keepdim=True)).sub_(0.5 * self.norm_s[None])
        return rows.clamp_max_(0).exp_()

    def message(self, q: Any) -> Any:
        import torch

        q_s = q[:, self.grid].T * self.weight  # S×K
        out = torch.empty_like(q)
        for k, start in enumerate(self.starts):
            rows = self.cached[k] if self.cached is not None else self._rows(start)
            out[:, start:start + ROW_CHUNK] = (rows @ q_s).T
        return out - q


def mean_field(probs: Any, image: Any, params: CRFParams = CRFParams(), stride: int | None = None) -> Any:
    """K×H×W label probabilities and an H×W×3 image (0..1) -> refined K×H×W probabilities."""
    import torch

    k, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image is {tuple(image.shape[:2])} but the labels are {(h, w)}")
    if stride is None:
        stride = max(1, math.ceil(math.sqrt(h * w / SAMPLE_BUDGET)))
    unary = torch.log(probs.float().clamp_min(1e-8)).reshape(k, h * w)
    features = bilateral_features(image, params.bilateral_sigma_xy, params.bilateral_sigma_rgb)
    appearance = AppearanceKernel(features, (h, w), stride)
    q = torch.softmax(unary, dim=0)
    for _ in range(params.iterations):
        smooth = gaussian_blur(q.view(k, h, w), params.smooth_sigma_xy).reshape(k, h * w) - q
        pairwise = params.bilateral_weight * appearance.message(q)
        pairwise = pairwise + params.smooth_weight * smooth
        # Potts: a neighbour's mass on label l lowers the energy of l (the constant part cancels in the softmax)
        q = torch.softmax(unary + pairwise, dim=0)
    return q.view(k, h, w)


def brute_force_mean_field(probs: Any, image: Any, params: CRFParams = CRFParams()) -> Any:
    """Reference: the same updates with full N×N kernel matrices (small images only)."""
    import torch

    k, h, w = probs.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)
    rgb = image.double().reshape(-1, 3) * 255.0
    d_pos = torch.cdist(pos, pos) ** 2
    d_rgb = torch.cdist(rgb, rgb) ** 2
    appearance = torch.exp(-d_pos / (2 * params.bilateral_sigma_xy ** 2)
                           - d_rgb / (2 * params.bilateral_sigma_rgb ** 2))
    smooth = torch.exp(-d_pos / (2 * params.smooth_sigma_xy ** 2))
    radius = max(1, int(math.ceil(4 * params.smooth_sigma_xy)))
    dy = (pos[:, None, 0] - pos[None, :, 0]).abs()
    dx = (pos[:, None, 1] - pos[None, :, 1]).abs()
    smooth = smooth * ((dy <= radius) & (dx <= radius))  # the blur's truncation
    appearance.fill_diagonal_(0)
    smooth.fill_diagonal_(0)
    unary = torch.log(probs.double().clamp_min(1e-8)).reshape(k, -1)
    q = torch.softmax(unary, dim=0)
    for _ in range(params.iterations):
        pairwise = params.bilateral_weight * q @ appearance.T + params.smooth_weight * q @ smooth.T
        q = torch.softmax(unary + pairwise, dim=0)
    return q.view(k, h, w)
