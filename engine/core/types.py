"""Value types that flow on edges, with ComfyUI's names, and the rule for which types may connect."""

from __future__ import annotations

INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
COMBO = "COMBO"
ANY = "*"
# ComfyUI V3 "match type" sockets (e.g. the Switch node): any type, the node checks that its sockets agree.
MATCH_TYPE = "COMFY_MATCHTYPE_V3"

PRIMITIVES = frozenset({INT, FLOAT, STRING, BOOLEAN})

MODEL = "MODEL"
CLIP = "CLIP"
VAE = "VAE"
CONDITIONING = "CONDITIONING"
LATENT = "LATENT"
IMAGE = "IMAGE"
MASK = "MASK"
CLIP_VISION = "CLIP_VISION"
CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
STYLE_MODEL = "STYLE_MODEL"
CONTROL_NET = "CONTROL_NET"
NOISE = "NOISE"
GUIDER = "GUIDER"
SAMPLER = "SAMPLER"
SIGMAS = "SIGMAS"
SEGMENTER = "SEGMENTER"
SEGMENTATION = "SEGMENTATION"
FLUX_LORA_DATASET = "FLUX_LORA_DATASET"  # LoadFluxLoraDataset -> TrainFluxLora

# Every type name a node may declare on a socket (a node declaring another name is refused at registration,
# which catches typos such as "LATENTS"). Combos are lists of options, declared as COMBO.
KNOWN_TYPES = frozenset({
    INT, FLOAT, STRING, BOOLEAN, COMBO, ANY, MATCH_TYPE, MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE, MASK,
    CLIP_VISION, CLIP_VISION_OUTPUT, STYLE_MODEL, CONTROL_NET, NOISE, GUIDER, SAMPLER, SIGMAS, SEGMENTER, SEGMENTATION,
    FLUX_LORA_DATASET,
})


def _type_set(type_name: str) -> frozenset[str]:
    return frozenset(part.strip() for part in type_name.split(","))


def unknown_type_names(type_name: str) -> list[str]:
    """The parts of a (comma-union) type name that are not known types; empty when it is fine."""
    return [part for part in type_name.split(",") if part.strip() not in KNOWN_TYPES]


def types_compatible(output_type: object, input_type: object) -> bool:
    """ComfyUI's rule: equal, either side "*", or comma-separated unions that overlap.

    A combo output (a list of options) feeds a combo input (a list, or "COMBO").
    """
    if isinstance(output_type, (list, tuple)) or isinstance(input_type, (list, tuple)):
        out_is_combo = isinstance(output_type, (list, tuple)) or output_type in (COMBO, ANY)
        in_is_combo = isinstance(input_type, (list, tuple)) or input_type in (COMBO, ANY)
        return out_is_combo and in_is_combo
    if output_type in (ANY, MATCH_TYPE) or input_type in (ANY, MATCH_TYPE):
        return True
    if output_type == input_type:
        return True
    if not isinstance(output_type, str) or not isinstance(input_type, str):
        return False
    return bool(_type_set(output_type) & _type_set(input_type))
