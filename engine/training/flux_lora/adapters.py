"""peft LoRA adapters on a FLUX transformer for training, and the LoRA file they become.

The adapters are injected into the loaded transformer itself (no copy of a 12B model) and removed afterwards
with diffusers' `unload_lora`, which puts the original linear modules back: the MODEL handle that the
executor caches is left as it was (the base weights are never written). Initialisation is peft's "gaussian"
(A ~ N(0, 1/r), B = 0), as diffusers' training scripts use, drawn from a generator seeded by the run's seed.

Files are written in diffusers' layout (`transformer.<module>.lora_A.weight` / `.lora_B.weight`), which
diffusers' `load_lora_weights`, ComfyUI and our LoraLoader all read. alpha / rank is folded into lora_B so
that every loader applies the same scale whether or not it reads an alpha.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

try:
    from peft import LoraConfig
except ImportError as exc:  # peft is the `train` extra
    raise ImportError("FLUX LoRA training needs peft: pip install 'fluxgraph[train]' (or pip install peft)") from exc

ADAPTER_NAME = "fluxgraph_train"
BLOCK_PREFIXES = ("transformer_blocks.", "single_transformer_blocks.")
FILE_PREFIX = "transformer."


def target_modules(transformer: Any, suffixes: tuple[str, ...]) -> list[str]:
    """Full names of the blocks' nn.Linear modules whose name ends with one of `suffixes` ("" = all)."""
    names = []
    for name, module in transformer.named_modules():
        if not isinstance(module, nn.Linear) or not name.startswith(BLOCK_PREFIXES):
            continue
        if any(suffix == "" or name == suffix or name.endswith("." + suffix) for suffix in suffixes):
            names.append(name)
    if not names:
        raise ValueError(f"target modules {', '.join(suffixes)} match no linear layer of this transformer's blocks "
                         "(presets: attention, attention+mlp, all-linear)")
    return names


def add_lora(transformer: Any, names: list[str], rank: int, alpha: float, seed: int) -> list[nn.Parameter]:
    """Inject trainable LoRA adapters (float32) into `transformer`; returns them in a fixed order."""
    if getattr(transformer, "peft_config", None):
        raise ValueError("this transformer already carries peft adapters; load the base model again to train")
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=names)
    devices = [transformer.device] if transformer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    params = []
    for name, param in transformer.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            param.data = param.data.float()
            param.requires_grad_(True)
            params.append(param)
        else:
            param.requires_grad_(False)
    return params


def remove_lora(transformer: Any) -> None:
    """Back to the original modules (no-op when nothing was injected)."""
    if getattr(transformer, "peft_config", None):
        transformer.unload_lora()


def _modules(transformer: Any) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
    found = {}
    for name, module in transformer.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(lora_a, nn.ModuleDict) and ADAPTER_NAME in lora_a:
            found[name] = (lora_a[ADAPTER_NAME].weight, lora_b[ADAPTER_NAME].weight)
    return found


def adapter_state(transformer: Any) -> dict[str, torch.Tensor]:
    """The trainable tensors as they are (no scale folded), for the training state."""
    state = {}
    for name, (down, up) in _modules(transformer).items():
        state[f"{name}.lora_A"] = down.detach().cpu().clone()
        state[f"{name}.lora_B"] = up.detach().cpu().clone()
    return state


@torch.no_grad()
def load_adapter_state(transformer: Any, state: dict[str, torch.Tensor]) -> None:
    modules = _modules(transformer)
    expected = {f"{name}.lora_{side}" for name in modules for side in "AB"}
    if set(state) != expected:
        raise ValueError("the checkpoint's LoRA modules differ from this run's targets "
                         f"({len(set(state) ^ expected)} differ); resume with the same model and target_modules")
    for name, (down, up) in modules.items():
        down.copy_(state[f"{name}.lora_A"])
        up.copy_(state[f"{name}.lora_B"])


def lora_file_tensors(transformer: Any, rank: int, alpha: float, dtype: torch.dtype = torch.float32
                      ) -> dict[str, torch.Tensor]:
    """The LoRA in diffusers' file layout, alpha / rank folded into lora_B."""
    scale = float(alpha) / int(rank)
    tensors = {}
    for name, (down, up) in _modules(transformer).items():
        tensors[f"{FILE_PREFIX}{name}.lora_A.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{FILE_PREFIX}{name}.lora_B.weight"] = (up.detach().float() * scale).to("cpu", dtype).contiguous()
    return tensors
