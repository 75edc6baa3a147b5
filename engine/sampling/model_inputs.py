"""Extra transformer inputs from CONDITIONING: installs the input hooks a sampling run needs.

Order matters: the Fill (or Depth/Canny control-latent) channels widen the sampled image tokens first;
reference tokens (Kontext) come after the sampled ones; the Redux attention bias is built last, over the
final token layout.
"""

from __future__ import annotations

from typing import Any

from engine.sampling.control import control_latent_hook
from engine.sampling.control_nets import ControlNetInputs
from engine.sampling.fill import fill_hook
from engine.sampling.redux import ReduxAttentionBias
from engine.sampling.reference import ReferenceInputs


def add_model_inputs(denoiser: Any) -> None:
    """Attach the Fill, reference-latent and Redux attention-bias hooks to a FluxDenoiser."""
    model = getattr(denoiser, "model", None)
    if getattr(model, "family", "flux1") != "flux1" or not hasattr(denoiser, "input_hooks"):
        return  # FLUX.2 reads reference latents in its own denoiser
    fill = control_latent_hook(denoiser.transformer) or fill_hook(denoiser.transformer)  # Depth/Canny, or Fill
    if fill is not None:
        denoiser.input_hooks.append(fill)
    denoiser.input_hooks.append(ControlNetInputs(denoiser.transformer, denoiser.schedule))  # before references
    denoiser.input_hooks.append(ReferenceInputs())
    denoiser.input_hooks.append(ReduxAttentionBias())
