"""LoRA for FLUX.1 MODEL and CLIP handles: read a file, convert it for the handles' modules, add the patches.

The base weights are never reloaded: a LoRA becomes `LoraPatch`es on new handles (`FluxModel.patches`,
`FluxTextEncoders.patches`) that the sampler and the prompt encoder apply for their run and restore exactly
(engine/models/lora/patch.py). Changing a strength only changes the patches' strength; converted LoRAs are
cached per file version and model shape, so it costs no file read either.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from engine.models.lora.keys import ConvertedLora, convert_lora
from engine.models.common.file_kind import file_kind
from engine.models.common.safetensors_io import ModelFileError, open_safetensors

log = logging.getLogger("fluxgraph.lora")
_CACHE: "OrderedDict[tuple, tuple[ConvertedLora, tuple]]" = OrderedDict()  # value: (lora, weakrefs of models)
_CACHE_SIZE = 8
_LOCK = threading.Lock()


@dataclasses.dataclass
class LoraResult:
    model: Any
    clip: Any
    report: list[str]  # lines for the node's output log (unmatched keys), empty when all matched


def file_identity(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def load_lora(path: str | Path, models: dict[str, Any]) -> ConvertedLora:
    """The LoRA at `path` converted for `models` ({"transformer": ..., "clip": ..., "t5": ...}), cached."""
    path = Path(path)
    identity = file_identity(path)
    parts = ("transformer", "clip", "t5")
    key = (identity, *(id(models.get(p)) for p in parts))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and all((ref() if ref else None) is models.get(p) for p, ref in zip(parts, hit[1])):
            _CACHE.move_to_end(key)
            return hit[0]
    sf = open_safetensors(path)
    kind = file_kind(sf.keys())
    if kind is not None and kind[0] != "a LoRA":
        raise ModelFileError(path, f"expected a LoRA, but the file holds {kind[0]}; load it with {kind[1]}")
    converted = convert_lora(sf.load(), models, path, identity)
    refs = tuple(weakref.ref(models[p]) if models.get(p) is not None else None for p in parts)
    with _LOCK:
        _CACHE[key] = (converted, refs)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return converted


def apply_lora(path: str | Path, model: Any, clip: Any, strength_model: float, strength_clip: float) -> LoraResult:
    """LoraLoader / LoraLoaderModelOnly (clip None): new handles carrying the LoRA's patches."""
    path = Path(path)
    if strength_model == 0 and (clip is None or strength_clip == 0):
        return LoraResult(model, clip, [])
    if model is not None and getattr(model, "family", "flux1") not in ("flux1", "flux2"):
        raise ModelFileError(path, f"LoRAs for {model.family} models are not supported here (FLUX.1, FLUX.2)")
    models = {"transformer": getattr(model, "transformer", None)}
    if clip is not None:
        models.update(clip=getattr(clip, "clip", None), t5=getattr(clip, "t5", None))
    converted = load_lora(path, models)
    report = _report(path, converted, text_encoders=clip is not None)
    patches = converted.patches
    if model is not None and "transformer" in patches and strength_model != 0:
        model = model.with_patch(patches["transformer"].with_strength(strength_model))
    if clip is not None and strength_clip != 0:
        added = tuple(patches[p].with_strength(strength_clip) for p in ("clip", "t5") if p in patches)
        if added:
            clip = dataclasses.replace(clip, patches=tuple(getattr(clip, "patches", ())) + added)
    return LoraResult(model, clip, report)


def _report(path: Path, converted: ConvertedLora, text_encoders: bool) -> list[str]:
    lines = []
    skipped = [] if text_encoders else [n for n in converted.unmatched if _is_text_encoder_key(n)]
    unmatched = [n for n in converted.unmatched if n not in skipped]
    if unmatched:
        lines.append(f"LoRA {path.name}: {len(unmatched)} of {converted.total_modules} modules matched nothing "
                     f"and were not applied: {', '.join(unmatched[:10])}{' ...' if len(unmatched) > 10 else ''}")
    if skipped:
        lines.append(f"LoRA {path.name}: {len(skipped)} text-encoder modules skipped (model-only loader)")
    for line in lines:
        log.warning("%s", line)
    return lines


def _is_text_encoder_key(name: str) -> bool:
    return name.startswith(("lora_te", "text_encoder", "text_encoders.", "clip_l.", "t5xxl."))
