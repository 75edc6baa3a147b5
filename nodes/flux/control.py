"""Structural control nodes: InstructPixToPixConditioning (the control image of FLUX.1 Depth/Canny, full
models or control LoRAs), SetFirstSigma, and the ControlNet nodes ControlNetLoader, ControlNetApplyAdvanced,
SetUnionControlNetType (and the old ControlNetApply). The maths lives in engine/sampling/control.py and
engine/sampling/control_nets.py, ControlNet loading in engine/models/control/controlnet.py."""

from __future__ import annotations

from typing import Any

from engine.core.schema import Combo, Float, Output, Socket, node
from engine.core.types import CONDITIONING, CONTROL_NET, IMAGE, LATENT, SIGMAS, VAE

from .common import memory
from .loaders import _folders, _lister

# ComfyUI's SetUnionControlNetType names and numbers (comfy/cldm/control_types.py): the number is the union
# model's control mode, whatever the model calls that mode (docs/flux.md lists InstantX's own modes).
UNION_TYPES = ("openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
               "segment", "tile", "repaint")


@node("InstructPixToPixConditioning", category="conditioning/instructpix2pix",
      inputs=[Socket("positive", CONDITIONING), Socket("negative", CONDITIONING), Socket("vae", VAE),
              Socket("pixels", IMAGE)],
      outputs=[Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent")],
      description="Encodes the control image (a depth map or edges) for FLUX.1 Depth/Canny, full models or "
                  "control LoRAs: the model reads its latent on every step. The latent output is empty.")
def instruct_pix_to_pix_conditioning(ctx: Any, positive: list, negative: list, vae: Any, pixels: Any):
    from engine.sampling.control import instruct_pix_to_pix_conditioning as condition  # noqa: PLC0415 - loads torch

    return condition(positive, negative, vae, pixels, memory(ctx))


@node("SetFirstSigma", category="sampling/custom_sampling/sigmas",
      inputs=[Socket("sigmas", SIGMAS), Float("sigma", 136.0, min=0.0, max=20000.0, step=0.001, round=False)],
      outputs=[SIGMAS], description="Replaces the first sigma of a schedule.")
def set_first_sigma(ctx: Any, sigmas: Any, sigma: float):
    from engine.sampling.control import set_first_sigma as set_first  # noqa: PLC0415 - loads torch

    return (set_first(sigmas, float(sigma)),)


@node("ControlNetLoader", category="loaders", display_name="Load ControlNet Model",
      inputs=[Combo("control_net_name", _lister("controlnet"))], outputs=[CONTROL_NET],
      description="Loads a FLUX.1 ControlNet (InstantX / Shakker-Labs, union included, or XLabs) from "
                  "models/controlnet.")
def controlnet_loader(ctx: Any, control_net_name: str):
    from engine.models.control.controlnet import load_controlnet  # noqa: PLC0415 - loads torch

    return (load_controlnet(_folders(ctx).model_path("controlnet", control_net_name)),)


@node("ControlNetApplyAdvanced", category="conditioning/controlnet", display_name="Apply ControlNet",
      inputs=[Socket("positive", CONDITIONING), Socket("negative", CONDITIONING), Socket("control_net", CONTROL_NET),
              Socket("image", IMAGE), Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
              Float("start_percent", 0.0, min=0.0, max=1.0, step=0.001),
              Float("end_percent", 1.0, min=0.0, max=1.0, step=0.001), Socket("vae", VAE, optional=True)],
      outputs=[Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative")],
      description="Guides sampling with a ControlNet and its control image (chain several to stack them). "
                  "InstantX-style ControlNets read the image's latent: connect the vae.")
def controlnet_apply_advanced(ctx: Any, positive: list, negative: list, control_net: Any, image: Any,
                              strength: float, start_percent: float, end_percent: float, vae: Any = None):
    from engine.sampling.control_nets import apply_controlnet  # noqa: PLC0415 - loads torch

    _check_controlnet("ControlNetApplyAdvanced", control_net)
    return apply_controlnet(positive, negative, control_net, image, float(strength), float(start_percent),
                            float(end_percent), vae, memory(ctx))


@node("ControlNetApply", category="conditioning/controlnet", display_name="Apply ControlNet (OLD)",
      inputs=[Socket("conditioning", CONDITIONING), Socket("control_net", CONTROL_NET), Socket("image", IMAGE),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01)],
      outputs=[CONDITIONING], deprecated=True,
      description="ComfyUI's old Apply ControlNet, kept so saved workflows load: one conditioning, the whole "
                  "schedule, no vae (ControlNets that read latents need ControlNetApplyAdvanced).")
def controlnet_apply(ctx: Any, conditioning: list, control_net: Any, image: Any, strength: float):
    from engine.sampling.control_nets import apply_controlnet  # noqa: PLC0415 - loads torch

    _check_controlnet("ControlNetApply", control_net)
    positive, _ = apply_controlnet(conditioning, [], control_net, image, float(strength), 0.0, 1.0, None,
                                   memory(ctx), what="ControlNetApply")
    return (positive,)


def _check_controlnet(what: str, control_net: Any) -> None:
    if not hasattr(control_net, "takes_latents"):
        raise TypeError(f"{what}: control_net is not a FLUX ControlNet (got {type(control_net).__name__})")


@node("SetUnionControlNetType", category="conditioning/controlnet",
      inputs=[Socket("control_net", CONTROL_NET), Combo("type", ("auto", *UNION_TYPES))], outputs=[CONTROL_NET],
      description="Chooses the control mode of a union ControlNet (auto: none, the model infers it).")
def set_union_controlnet_type(ctx: Any, control_net: Any, type: str):
    if not getattr(control_net, "union", False):
        return (control_net,)  # ComfyUI sets it on any ControlNet; only union models read it
    return (control_net.with_union_type(None if type == "auto" else UNION_TYPES.index(type)),)


NODES = [instruct_pix_to_pix_conditioning, set_first_sigma, controlnet_loader, controlnet_apply_advanced,
         controlnet_apply, set_union_controlnet_type]
