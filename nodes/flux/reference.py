"""Reference images for edit models: ReferenceLatent and FluxKontextMultiReferenceLatentMethod.

They only write CONDITIONING options (keys documented in engine/sampling/reference.py and docs/flux.md);
the sampler turns each reference into extra image tokens with their own position ids.
"""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Socket, node
from engine.core.types import CONDITIONING, LATENT

# Literal copy of engine.sampling.reference.METHOD_CHOICES so that declaring the node imports no torch.
_METHOD_CHOICES = ("offset", "index", "uxo/uno", "index_timestep_zero")


@node("ReferenceLatent", category="advanced/conditioning/edit_models",
      inputs=[Socket("conditioning", CONDITIONING), Socket("latent", LATENT, optional=True)],
      outputs=[CONDITIONING],
      description="Adds an encoded image as a reference for edit models (FLUX Kontext, FLUX.2); chain "
                  "several to give several references. Without a latent the conditioning passes unchanged.")
def reference_latent(ctx: Any, conditioning: list, latent: dict | None = None):
    if latent is None:
        return (conditioning,)
    from engine.sampling.reference import add_reference_latent  # noqa: PLC0415 - reference loads torch on first use

    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("ReferenceLatent: latent must be a LATENT (a dict with 'samples'), e.g. from VAEEncode")
    return (add_reference_latent(conditioning, latent["samples"]),)


@node("FluxKontextMultiReferenceLatentMethod", category="advanced/conditioning/flux",
      display_name="Edit Model Reference Method", experimental=True,
      inputs=[Socket("conditioning", CONDITIONING),
              Combo("reference_latents_method", _METHOD_CHOICES, v3_combo=True, extra={"multiselect": False})],
      outputs=[CONDITIONING],
      description="Chooses how several reference latents get their position ids (offset, index, uxo/uno).")
def flux_kontext_multi_reference_latent_method(ctx: Any, conditioning: list, reference_latents_method: str):
    from engine.sampling.reference import set_reference_method  # noqa: PLC0415 - reference loads torch on first use

    return (set_reference_method(conditioning, reference_latents_method),)


NODES = [reference_latent, flux_kontext_multi_reference_latent_method]
