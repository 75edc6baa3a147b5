"""ControlNets on FLUX.1: ControlNetApplyAdvanced's maths and the transformer input hook that runs them.

ControlNetApplyAdvanced appends a `ControlApplication` (ControlNet, control image, strength, start/end percent)
to the `control_nets` option of every positive and negative entry: several applied nodes stack. A latent-input
ControlNet (InstantX / Shakker, union included) gets the image's VAE latent (posterior mode, encoded once, at
the image's size); a pixel-input one (XLabs) the image itself. On each step where a control's percent range
holds the current sigma (ComfyUI's rule), the hook runs its ControlNet on the step's packed latent tokens, the
entry's text and the timestep, as diffusers' FluxControlNetPipeline does, scales its residuals by the
strength, spreads them over the transformer's blocks (diffusers' interval rule, or XLabs' repeat) and sums
the residuals of all active controls into the transformer's `controlnet_block_samples` /
`controlnet_single_block_samples`. A control image of another size is resized to the sampled one (latent:
centre crop + bilinear; pixels: bilinear). Every ControlNet is placed by the memory manager for the run.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from engine.sampling.conditioning import FluxCond, fit_batch, map_options
from engine.sampling.control import fit_control_latent
from engine.sampling.fill import crop_to_vae_grid
from engine.sampling.latents import FLUX1_LATENT, pack_latents
from engine.sampling.reference import REFERENCE_LATENTS
from engine.sampling.vae import encode

CONTROL_NETS = "control_nets"  # CONDITIONING option: tuple of ControlApplication, in application order
_UNION_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class ControlApplication:
    controlnet: Any  # engine.models.control.controlnet.ControlNet
    hint: torch.Tensor  # raw VAE latent [B, 16, h, w] (latent input) or pixels [B, H, W, 3] in 0..1 (XLabs)
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0


@torch.no_grad()
def apply_controlnet(positive: list, negative: list, controlnet: Any, image: torch.Tensor, strength: float,
                     start_percent: float, end_percent: float, vae: Any, memory: Any,
                     what: str = "ControlNetApplyAdvanced") -> tuple[list, list]:
    """ControlNetApplyAdvanced: both conditionings with the control appended (unchanged at strength 0).
    `what` names the node in messages (ControlNetApply, the old node, passes one conditioning and [])."""
    if strength == 0:
        return positive, negative
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"{what}: image must be an IMAGE [batch, height, width, channels]")
    if start_percent > end_percent:
        raise ValueError(f"{what}: start_percent {start_percent} is after end_percent {end_percent}")
    pixels = image[..., :3].float()
    if controlnet.takes_latents:
        if vae is None:
            raise ValueError(f"{what}: this ControlNet ({controlnet.layout}) reads the control image's latent; "
                             "connect the vae input (the model's VAE)")
        pixels, _ = crop_to_vae_grid(pixels, torch.zeros(pixels.shape[0], 1, pixels.shape[1], pixels.shape[2]))
        hint = encode(vae, pixels, memory)
    else:
        hint = pixels.cpu()
    control = ControlApplication(controlnet, hint, float(strength), float(start_percent), float(end_percent))
    return _with_control(positive, control), _with_control(negative, control)


def _with_control(conditioning: list, control: ControlApplication) -> list:
    out = []
    for tensor, options in conditioning:
        out.extend(map_options([[tensor, options]], **{CONTROL_NETS: (*options.get(CONTROL_NETS, ()), control)}))
    return out


def controls_of(conditionings: list[list | None]) -> list[ControlApplication]:
    """Every distinct ControlApplication of the given conditionings."""
    found: dict[int, ControlApplication] = {}
    for conditioning in conditionings:
        for _, options in conditioning or ():
            for control in options.get(CONTROL_NETS, ()):
                found.setdefault(id(control), control)
    return list(found.values())


def check_control_use(model: Any, conditionings: list[list | None]) -> None:
    """Refuse, before sampling, what the ControlNet hook cannot do (rather than ignore it or fail mid-run)."""
    if not controls_of(conditionings):
        return
    if getattr(model, "family", "flux1") != "flux1":
        raise ValueError(f"ControlNets are FLUX.1 models, and this sampler's model is {model.variant!r} "
                         f"({model.family}): remove ControlNetApplyAdvanced or sample with a FLUX.1 model")
    for conditioning in conditionings:
        if any(options.get(REFERENCE_LATENTS) for _, options in conditioning or ()):
            raise ValueError("ControlNets with Kontext reference images (ReferenceLatent) are not supported: "
                             "use one or the other in a sampling run")


@contextlib.contextmanager
def use_control_nets(memory: Any, positive: list | None, negative: list | None, model: Any) -> Iterator[None]:
    """Hold every ControlNet of the conditionings on the device for a sampling run (the memory manager),
    after checking that `model` can take them."""
    check_control_use(model, [positive, negative])
    with contextlib.ExitStack() as stack:
        modules = {id(c.controlnet.model): c.controlnet.model for c in controls_of([positive, negative])}
        for module in modules.values():
            stack.enter_context(memory.use(module))
        yield


class ControlNetInputs:
    """Transformer input hook: the summed residuals of each entry's active ControlNets (module docstring)."""

    def __init__(self, transformer: Any, schedule: Any) -> None:
        self.double_blocks = len(transformer.transformer_blocks)
        self.single_blocks = len(transformer.single_transformer_blocks)
        self.schedule = schedule
        self._hints: dict[tuple, torch.Tensor] = {}

    def __call__(self, cond: FluxCond, kwargs: dict, tokens: torch.Tensor) -> None:
        controls = (cond.extra or {}).get(CONTROL_NETS, ())
        active = [c for c in controls if self._active(c, kwargs["timestep"])]
        if not active:
            return
        doubles: list[Any] = [None] * self.double_blocks
        singles: list[Any] = [None] * self.single_blocks
        for control in active:
            block_samples, single_samples = self._run(control, cond, kwargs, tokens)
            repeat = not control.controlnet.takes_latents  # XLabs: its few blocks repeat over the depth
            _accumulate(doubles, block_samples, repeat)
            _accumulate(singles, single_samples, False)
        kwargs["controlnet_block_samples"] = _filled(doubles, tokens)
        kwargs["controlnet_single_block_samples"] = _filled(singles, tokens)
        kwargs["controlnet_blocks_repeat"] = False

    def _active(self, control: ControlApplication, timestep: torch.Tensor) -> bool:
        if control.start_percent <= 0.0 and control.end_percent >= 1.0:
            return True  # no range: no need to read the step's sigma from the device
        sigma = float(timestep.reshape(-1)[0])
        return (self.schedule.percent_to_sigma(control.end_percent) <= sigma
                <= self.schedule.percent_to_sigma(control.start_percent))

    def _run(self, control: ControlApplication, cond: FluxCond, kwargs: dict,
             tokens: torch.Tensor) -> tuple[Any, Any]:
        net = control.controlnet
        module = net.model
        dtype = next(module.parameters()).dtype
        img_ids = kwargs["img_ids"][: tokens.shape[1]]
        hint = self._hint(control, img_ids, tokens, dtype)
        guidance = kwargs.get("guidance")
        if module.config.guidance_embeds and guidance is None:
            guidance = torch.full([tokens.shape[0]], cond.guidance, device=tokens.device, dtype=torch.float32)
        elif not module.config.guidance_embeds:
            guidance = None
        mode = None
        if net.union and net.union_type is not None:
            mode = torch.full([tokens.shape[0], 1], int(net.union_type), device=tokens.device, dtype=torch.long)
        call = dict(hidden_states=tokens.to(dtype), controlnet_cond=hint, controlnet_mode=mode,
                    conditioning_scale=control.strength,
                    encoder_hidden_states=kwargs["encoder_hidden_states"].to(dtype),
                    pooled_projections=kwargs["pooled_projections"].to(dtype), timestep=kwargs["timestep"].to(dtype),
                    img_ids=img_ids.to(dtype), txt_ids=kwargs["txt_ids"].to(dtype), guidance=guidance,
                    return_dict=False)
        if net.union and mode is None:  # "auto": no mode token, as ComfyUI runs a union model without a type
            with _UNION_LOCK, _union_off(module):
                return module(**call)
        return module(**call)

    def _hint(self, control: ControlApplication, img_ids: torch.Tensor, tokens: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor:
        rows, cols = int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1
        key = (id(control), rows, cols, tokens.shape[0], tokens.device, dtype)
        if key not in self._hints:
            batch = tokens.shape[0]
            if control.controlnet.takes_latents:
                latent = fit_control_latent(fit_batch(control.hint.float().cpu(), batch, "control image latent"),
                                            rows * 2, cols * 2)
                hint = pack_latents(FLUX1_LATENT.process_in(latent))
            else:
                pixels = fit_batch(control.hint.float().cpu(), batch, "control image").movedim(-1, 1)
                size = (rows * 16, cols * 16)
                if tuple(pixels.shape[-2:]) != size:
                    pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
                hint = pixels * 2.0 - 1.0
            self._hints[key] = hint.to(tokens.device, dtype)
        return self._hints[key]


@contextlib.contextmanager
def _union_off(module: Any) -> Iterator[None]:
    module.union = False
    try:
        yield
    finally:
        module.union = True


def _accumulate(target: list, samples: Any, repeat: bool) -> None:
    """Add a ControlNet's residuals to the per-block sums: block i gets sample i // interval (or i % n)."""
    if not samples or not target:
        return
    count = len(samples)
    interval = math.ceil(len(target) / count)
    for index in range(len(target)):
        sample = samples[index % count] if repeat else samples[index // interval]
        target[index] = sample if target[index] is None else target[index] + sample


def _filled(samples: list, tokens: torch.Tensor) -> list | None:
    """Per-block residuals, zeros for the blocks no ControlNet reaches; None when none reaches any."""
    present = next((s for s in samples if s is not None), None)
    if present is None:
        return None
    return [torch.zeros_like(present) if s is None else s for s in samples]
