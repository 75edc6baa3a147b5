"""Which model family a file or folder belongs to, from tensor names and shapes (no tensor data is read).

Used by the loaders to dispatch (a FLUX.2 file to the FLUX.2 loader) and by validation to refuse a FLUX.1
file where FLUX.2 is expected and the reverse, with a message naming the file and what it holds.

FLUX.2 parts:
- transformer: BFL keys with the shared modulations (`single_stream_modulation.lin.weight`), bare or under
  `model.diffusion_model.` / `diffusion_model.`; diffusers keys (`single_stream_modulation.linear.weight`);
- text encoder: a decoder-only language model, transformers keys `layers.N.self_attn.q_proj.weight` +
  `embed_tokens.weight` under "", `model.`, `language_model.model.` or `model.language_model.`; Qwen3
  (klein) has per-head q/k norms (`self_attn.q_norm.weight`), Mistral (dev) has none;
- VAE: the autoencoder with a batch-norm over its patchified latents (`bn.running_mean`), 32 latent channels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from engine.models.common.detect import detect_components
from engine.models.common.safetensors_io import ModelFileError, SafetensorsFile, open_safetensors
from engine.models.quant.gguf_file import is_gguf, open_gguf, text_encoder_kind, transformer_part

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
LM_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "")
_LM_MARKER = "layers.0.self_attn.q_proj.weight"
_QWEN3_MARKER = "layers.0.self_attn.q_norm.weight"
FLUX2_VAE_MARKER = "bn.running_mean"

DESCRIPTIONS = {
    "flux2-transformer": "a FLUX.2 diffusion transformer",
    "qwen3": "a Qwen3 text encoder (FLUX.2 klein)",
    "mistral": "a Mistral text encoder (FLUX.2 dev)",
    "flux2-vae": "the FLUX.2 VAE",
    "transformer": "a FLUX.1 diffusion transformer",
    "clip_l": "a FLUX.1 CLIP-L text encoder",
    "t5xxl": "a FLUX.1 T5-XXL text encoder",
    "vae": "a FLUX.1 VAE",
}
FLUX2_KINDS = ("flux2-transformer", "qwen3", "mistral", "flux2-vae")


@dataclass(frozen=True)
class Part:
    kind: str  # a DESCRIPTIONS key
    prefix: str  # key prefix inside the file
    layout: str  # "bfl" | "diffusers" | "transformers"

    @property
    def family(self) -> str:
        return "flux2" if self.kind in FLUX2_KINDS else "flux1"

    def describe(self) -> str:
        return DESCRIPTIONS[self.kind]


def flux2_parts(sf: SafetensorsFile) -> dict[str, Part]:
    """The FLUX.2 parts found in a safetensors file (by marker keys under the known prefixes)."""
    keys = set(sf.tensors)
    found: dict[str, Part] = {}
    for prefix in TRANSFORMER_PREFIXES:
        if prefix + "single_stream_modulation.lin.weight" in keys:
            found["flux2-transformer"] = Part("flux2-transformer", prefix, "bfl")
            break
        if prefix + "single_stream_modulation.linear.weight" in keys:
            found["flux2-transformer"] = Part("flux2-transformer", prefix, "diffusers")
            break
    for prefix in LM_PREFIXES:
        if prefix + _LM_MARKER in keys and prefix + "embed_tokens.weight" in keys:
            kind = "qwen3" if prefix + _QWEN3_MARKER in keys else "mistral"
            found[kind] = Part(kind, prefix, "transformers")
            break
    for prefix in ("vae.", ""):
        if prefix + FLUX2_VAE_MARKER in keys and (prefix + "encoder.conv_in.weight") in keys:
            layout = "diffusers" if prefix + "encoder.down_blocks.0.resnets.0.conv1.weight" in keys else "bfl"
            found["flux2-vae"] = Part("flux2-vae", prefix, layout)
            break
    return found


def gguf_parts(path: str | Path) -> dict[str, Part]:
    """The part a GGUF file holds: a FLUX.1 / FLUX.2 transformer (by its keys) or a text encoder (by its
    `general.architecture`)."""
    gf = open_gguf(path)
    found = transformer_part(gf)
    if found is not None:
        kind = "flux2-transformer" if found[0] == "flux2" else "transformer"
        return {kind: Part(kind, found[1], found[2])}
    kind = text_encoder_kind(gf)
    return {kind: Part(kind, "", "llama.cpp")} if kind else {}


def file_parts(path: str | Path) -> dict[str, Part]:
    """Every FLUX.1 and FLUX.2 part of a safetensors (or GGUF) file; FLUX.2 wins where the markers overlap (a
    FLUX.2 transformer also has `double_blocks`, its VAE also has LDM keys)."""
    if is_gguf(path):
        return gguf_parts(path)
    sf = open_safetensors(path)
    parts = flux2_parts(sf)
    flux1 = detect_components(sf).components
    if "flux2-transformer" not in parts and "transformer" in flux1:
        comp = flux1["transformer"]
        parts["transformer"] = Part("transformer", comp.prefix, comp.layout)
    for kind in ("clip_l", "t5xxl"):
        if kind in flux1:
            parts[kind] = Part(kind, flux1[kind].prefix, flux1[kind].layout)
    if "flux2-vae" not in parts and "vae" in flux1:
        parts["vae"] = Part("vae", flux1["vae"].prefix, flux1["vae"].layout)
    return parts


def folder_parts(path: str | Path) -> dict[str, Part]:
    """The parts of a diffusers pipeline folder or a single model's folder, from its config files."""
    folder = Path(path)
    found: dict[str, Part] = {}
    configs = [(folder / "config.json", "")] + [(folder / sub / "config.json", sub) for sub in
                                                  ("transformer", "text_encoder", "text_encoder_2", "vae")]
    for config_path, sub in configs:
        if not config_path.is_file():
            continue
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise ModelFileError(config_path, "invalid JSON in this model config") from None
        kind = _kind_of_config(config)
        if kind is not None:
            found.setdefault(kind, Part(kind, sub, "diffusers"))
    return found


def _kind_of_config(config: dict) -> str | None:
    cls = str(config.get("_class_name") or "")
    archs = " ".join(config.get("architectures") or [])
    model_type = str(config.get("model_type") or "")
    if cls == "Flux2Transformer2DModel":
        return "flux2-transformer"
    if cls == "FluxTransformer2DModel":
        return "transformer"
    if cls == "AutoencoderKLFlux2":
        return "flux2-vae"
    if cls == "AutoencoderKL":
        return "vae"
    if model_type.startswith("qwen3") or "Qwen3" in archs:
        return "qwen3"
    if model_type in ("mistral", "mistral3") or "Mistral" in archs:
        return "mistral"
    if model_type.startswith("clip"):
        return "clip_l"
    if model_type in ("t5", "umt5"):
        return "t5xxl"
    return None


def model_parts(path: str | Path) -> dict[str, Part]:
    path = Path(path)
    return folder_parts(path) if path.is_dir() else file_parts(path)


def describe_parts(parts: dict[str, Part]) -> str:
    if not parts:
        return "no FLUX.1 or FLUX.2 component recognised"
    return ", ".join(p.describe() for p in parts.values())


def require_family_part(path: str | Path, kinds: tuple[str, ...], expected: str) -> Part:
    """The first part of `path` among `kinds`, or a ModelFileError that names the file, what it holds and
    what was `expected` (e.g. "a FLUX.2 diffusion transformer")."""
    parts = model_parts(path)
    for kind in kinds:
        if kind in parts:
            return parts[kind]
    family = {p.family for p in parts.values()}
    hint = ""
    if family == {"flux1"}:
        hint = "; it belongs to FLUX.1, this input wants FLUX.2"
    elif family == {"flux2"}:
        hint = "; it belongs to FLUX.2, this input wants FLUX.1"
    raise ModelFileError(path, f"expected {expected}, but it holds {describe_parts(parts)}{hint}")


def model_choice_problem(folders: object, key: str, input_name: str, name: object, kinds: tuple[str, ...],
                         expected: str, extensions: Iterable[str] | None = None) -> str | None:
    """For a loader's validate_inputs hook: why the model `name` (folder key `key`) cannot be used where
    `expected` is wanted, or None. Being the hook's input, the name's presence is checked here too."""
    if folders is None or not isinstance(name, str):
        return None
    more = {} if extensions is None else {"extensions": extensions}  # e.g. the GGUF loaders' .gguf files
    listing = folders.list_models(key, include_dirs=True, pipelines=True, **more)  # type: ignore[attr-defined]
    if name not in listing:
        gguf = name.lower().endswith(".gguf") and ".gguf" not in (extensions or ())
        return (f"{input_name}: '{name}' is not among the {len(listing)} models this input offers from the {key} "
                "folder" + ("; .gguf files load with CLIPLoaderGGUF / DualCLIPLoaderGGUF" if gguf else ""))
    path = folders.model_path(key, name)  # type: ignore[attr-defined]
    try:
        parts = model_parts(path)
    except ModelFileError:
        return None  # an unreadable file gets its own message when it is loaded
    if any(kind in parts for kind in kinds):
        return None
    families = {part.family for part in parts.values()}
    which = " (a FLUX.2 model)" if families == {"flux2"} else " (a FLUX.1 model)" if families == {"flux1"} else ""
    return f"{input_name}: {path} holds {describe_parts(parts)}{which}; expected {expected}"
