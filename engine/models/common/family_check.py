"""Graph-level check that the models a sampler uses belong to one family (FLUX.1 or FLUX.2), before running.

A node's own validate_inputs hook sees only its own inputs, so UNETLoader and VAELoader cannot know that the
rest of the graph expects FLUX.2 (CLIPLoader's type says it for text encoders). This pass looks at the whole
API prompt: for every sampler, guider and VAEDecode/VAEEncode, the loaders upstream of it (UNETLoader,
CheckpointLoaderSimple, CLIPLoader, DualCLIPLoader, VAELoader) must agree. A loader of the other family than
the diffusion model it is used with gets an error naming its file and what it holds, in ComfyUI's
node_errors shape (`custom_validation_failed`), before anything is loaded. Only safetensors headers are read.

`family_errors(prompt, folders)` returns {node_id: message}; validation merges them into node_errors.
"""

from __future__ import annotations

from typing import Any

from engine.models.common.family import describe_parts, model_parts
from engine.models.common.safetensors_io import ModelFileError

_LOADER_FILES = {"UNETLoader": ("unet_name", "diffusion_models"),
                 "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"), "VAELoader": ("vae_name", "vae")}
_CONSUMERS = ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced", "CFGGuider", "BasicGuider", "VAEDecode",
              "VAEDecodeTiled", "VAEEncode")
_MODEL_LOADERS = ("UNETLoader", "CheckpointLoaderSimple")


def _upstream(prompt: dict[str, Any], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        for value in (prompt[node_id].get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                stack.append(str(value[0]))
    return seen


def _loader_family(node: dict[str, Any], folders: Any) -> tuple[str, str] | None:
    """(family, what it holds) of a loader node, or None when it cannot be told (missing file, link)."""
    class_type = node.get("class_type")
    inputs = node.get("inputs") or {}
    if class_type == "CLIPLoader":
        kind = inputs.get("type")
        return ({"flux": ("flux1", "CLIPLoader type 'flux' (FLUX.1 text encoders)"),
                 "flux2": ("flux2", "CLIPLoader type 'flux2' (a FLUX.2 text encoder)")}.get(kind)
                if isinstance(kind, str) else None)
    if class_type == "DualCLIPLoader":
        return ("flux1", "DualCLIPLoader (FLUX.1 text encoders)")
    if class_type not in _LOADER_FILES or folders is None:
        return None
    input_name, key = _LOADER_FILES[class_type]
    name = inputs.get(input_name)
    if not isinstance(name, str):
        return None
    try:
        path = folders.model_path(key, name)
        parts = model_parts(path)
    except (FileNotFoundError, ModelFileError, OSError, ValueError):
        return None  # reported by the loader's own validation
    families = {p.family for p in parts.values()}
    if len(families) != 1:
        return None
    return families.pop(), f"{path} ({describe_parts(parts)})"


def _name(family: str) -> str:
    return "FLUX.2" if family == "flux2" else "FLUX.1"


def family_errors(prompt: dict[str, Any], folders: Any) -> dict[str, str]:
    """Loaders of the wrong family for the sampler / decoder they feed (module docstring). When every other
    loader agrees against the diffusion model, the model is the odd one out and gets the error."""
    cache: dict[str, tuple[str, str] | None] = {}
    errors: dict[str, str] = {}
    for consumer_id, consumer in prompt.items():
        if not isinstance(consumer, dict) or consumer.get("class_type") not in _CONSUMERS:
            continue
        known: dict[str, tuple[str, str]] = {}  # loader node -> (family, what it holds)
        for node_id in sorted(_upstream(prompt, str(consumer_id))):
            if prompt[node_id].get("class_type") in (*_LOADER_FILES, "CLIPLoader", "DualCLIPLoader"):
                if node_id not in cache:
                    cache[node_id] = _loader_family(prompt[node_id], folders)
                if cache[node_id] is not None:
                    known[node_id] = cache[node_id]  # type: ignore[assignment]
        models = [n for n in known if prompt[n]["class_type"] in _MODEL_LOADERS]
        if not models or len({family for family, _ in known.values()}) < 2:
            continue
        model_family, model_holds = known[models[0]]
        others = {n: v for n, v in known.items() if n not in models}
        other_families = {family for family, _ in others.values()}
        if len(other_families) == 1 and model_family not in other_families:
            wanted = _name(other_families.pop())
            used = ", ".join(holds for _, holds in others.values())
            errors.setdefault(models[0], f"{model_holds} is {_name(model_family)}, but the graph's other models are "
                                         f"{wanted}: {used}; load a {wanted} diffusion model")
            continue
        for node_id, (family, holds) in others.items():
            if family != model_family:
                errors.setdefault(node_id, f"{holds} is {_name(family)}, but the diffusion model it is used with "
                                           f"is {_name(model_family)}: {model_holds}; load the "
                                           f"{_name(model_family)} counterpart")
    return errors
