"""What the ControlNet hook cannot do is refused before sampling, by name, instead of being ignored (a FLUX.1
ControlNet on a FLUX.2 model changed nothing) or failing mid-run with a tensor-shape error (Kontext)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.sampling.control_nets import CONTROL_NETS, check_control_use
from engine.sampling.reference import REFERENCE_LATENTS

FLUX1 = SimpleNamespace(family="flux1", variant="dev")
FLUX2 = SimpleNamespace(family="flux2", variant="flux2-klein-4b")
CONTROL = object()  # a ControlApplication stand-in: the check only asks whether there is one


def entry(**options) -> list:
    return [[torch.zeros(1, 4, 8), options]]


def test_plain_and_controlled_flux1_conditioning_passes():
    check_control_use(FLUX1, [entry(), entry()])
    check_control_use(FLUX1, [entry(**{CONTROL_NETS: (CONTROL,)}), entry(**{CONTROL_NETS: (CONTROL,)})])
    check_control_use(FLUX2, [entry(**{REFERENCE_LATENTS: [torch.zeros(1, 128, 4, 4)]}), None])  # no ControlNet


def test_a_controlnet_on_a_flux2_model_is_refused():
    with pytest.raises(ValueError, match="ControlNets are FLUX.1 models.*flux2-klein-4b"):
        check_control_use(FLUX2, [entry(**{CONTROL_NETS: (CONTROL,)}), None])


def test_a_controlnet_with_kontext_references_is_refused():
    positive = entry(**{CONTROL_NETS: (CONTROL,), REFERENCE_LATENTS: [torch.zeros(1, 16, 4, 4)]})
    with pytest.raises(ValueError, match="Kontext reference images"):
        check_control_use(FLUX1, [positive, entry()])
