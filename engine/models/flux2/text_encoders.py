"""FLUX.2's text encoders: Qwen3 (klein) and Mistral Small (dev), from single files and transformers folders.

FLUX.2 conditions on the hidden states of several layers of a decoder-only language model, stacked along
the feature axis: klein takes layers (9, 18, 27) of Qwen3, dev layers (10, 20, 30) of Mistral Small 3.x
(indices into transformers' `hidden_states`, 0 being the embeddings). Only the language model is needed:
lm_head, Mistral's vision tower and projector are not loaded, and neither are the layers after the last one
used (they cannot influence earlier layers of a causal model), which saves a fifth of the encoder's memory
and time. transformers 5 replaces the last entry of `hidden_states` with the final-normalised state, so an
encoder must have more layers than the highest index taken; one that has not is refused (the meaning of
that index would silently change).

Sizes come from the shapes. What they cannot show is each family's convention: Qwen3 rope theta 1e6, RMS
eps 1e-6 (head width from its q/k norms); Mistral Small rope theta 1e9, RMS eps 1e-5, 8 key/value heads
(head width = k_proj rows / 8). A folder's own config.json is used as it is.
Tokenizers are found offline (`engine.models.flux2.tokenizer_files`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from engine.models.common.build import (instantiate, load_folder_weights, model_subfolder, read_folder_config,
                                 weights_dtype)
from engine.models.common.family import LM_PREFIXES, require_family_part
from engine.models.flux2.tokenizer_files import find_flux2_tokenizer
from engine.models.quant.gguf_file import is_gguf, llama_cpp_to_hf, open_gguf
from engine.models.common.safetensors_io import ModelFileError, open_safetensors

HIDDEN_LAYERS = {"qwen3": (9, 18, 27), "mistral": (10, 20, 30)}
MAX_SEQUENCE_LENGTH = 512
_CONVENTIONS = {
    "qwen3": dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                  max_position_embeddings=40960, hidden_act="silu"),
    "mistral": dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0}, rms_norm_eps=1e-5,
                    max_position_embeddings=131072, hidden_act="silu", sliding_window=None),
}
MISTRAL_KV_HEADS = 8
_LAYER = re.compile(r"^layers\.(\d+)\.")


@dataclass(frozen=True)
class Flux2TextEncoder:
    """The CLIP handle of FLUX.2: one language model, its tokenizer and the layers FLUX.2 reads."""

    model: Any  # transformers Qwen3Model / MistralModel (no LM head)
    tokenizer: Any
    architecture: str  # "qwen3" (klein) | "mistral" (dev)
    layers: tuple[int, ...]
    max_length: int = MAX_SEQUENCE_LENGTH
    kind: str = "flux2"
    extra: tuple[tuple[str, Any], ...] = ()
    source: str = ""

    @property
    def width(self) -> int:
        """The conditioning width it produces (what the transformer's joint_attention_dim must be)."""
        return len(self.layers) * int(self.model.config.hidden_size)


def language_model_state(state: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """The base-model tensors (`embed_tokens`, `layers.*`, `norm`) of a causal-LM state dict, prefix removed."""
    for prefix in LM_PREFIXES:
        if prefix + "embed_tokens.weight" in state and prefix + "layers.0.self_attn.q_proj.weight" in state:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
                    and k[len(prefix):].startswith(("embed_tokens.", "layers.", "norm."))}
    raise ModelFileError(source, "no language-model tensors (embed_tokens, layers.N.self_attn) found")


def infer_lm_config(state: dict[str, Any], architecture: str, source: str | Path) -> dict[str, Any]:
    """Qwen3Config / MistralConfig kwargs from base-model shapes (conventions in the module docstring)."""
    try:
        vocab, hidden = state["embed_tokens.weight"].shape
        q_out = state["layers.0.self_attn.q_proj.weight"].shape[0]
        k_out = state["layers.0.self_attn.k_proj.weight"].shape[0]
        intermediate = state["layers.0.mlp.gate_proj.weight"].shape[0]
        if architecture == "qwen3":
            head_dim = state["layers.0.self_attn.q_norm.weight"].shape[0]
        else:
            head_dim = k_out // MISTRAL_KV_HEADS
    except KeyError as exc:
        raise ModelFileError(source, f"not a {architecture} language model: tensor {exc.args[0]!r} is missing") \
            from None
    if q_out % head_dim or k_out % head_dim:
        raise ModelFileError(source, f"attention widths {q_out}/{k_out} are not multiples of the head width "
                                     f"{head_dim}")
    layers = {int(m.group(1)) for k in state if (m := _LAYER.match(k))}
    config = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=max(layers) + 1, num_attention_heads=q_out // head_dim,
                  num_key_value_heads=k_out // head_dim, head_dim=head_dim,
                  attention_bias="layers.0.self_attn.q_proj.bias" in state, **_CONVENTIONS[architecture])
    if architecture == "mistral":
        config.pop("attention_bias")
    return config


def keep_needed_layers(state: dict[str, Any], config: dict[str, Any], layers: tuple[int, ...],
                       source: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Drop the layers after the last one FLUX.2 reads (see the module docstring); refuse too-shallow models."""
    available = int(config["num_hidden_layers"])
    needed = max(layers) + 1
    if available < needed:
        raise ModelFileError(source, f"the text encoder has {available} layers; FLUX.2 reads the hidden states of "
                                     f"layers {list(layers)}, so it needs at least {needed} (the last layer's state "
                                     "is replaced by the final-normalised one)")
    kept = {k: v for k, v in state.items() if not (m := _LAYER.match(k)) or int(m.group(1)) < needed}
    return kept, dict(config, num_hidden_layers=needed)


def build_language_model(state: dict[str, Any], architecture: str, source: str | Path, dtype: Any = None,
                         config: dict[str, Any] | None = None) -> Any:
    """Qwen3Model / MistralModel with the layers FLUX.2 reads, from base-model keys."""
    from transformers import MistralConfig, MistralModel, Qwen3Config, Qwen3Model

    config = config or infer_lm_config(state, architecture, source)
    state, config = keep_needed_layers(state, config, HIDDEN_LAYERS[architecture], source)
    dtype = weights_dtype(state, dtype)
    config_cls, model_cls = (Qwen3Config, Qwen3Model) if architecture == "qwen3" else (MistralConfig, MistralModel)
    init = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version",
                                                         "dtype", "torch_dtype")}
    try:
        cfg = config_cls(**init)
    except Exception as exc:  # noqa: BLE001 - config classes validate with their own error types (hub's too)
        raise ModelFileError(source, f"cannot build the text encoder from its config: {exc}") from None

    def rebuild_rotary(model: Any) -> None:  # its frequency buffers are not in files: recompute them
        model.rotary_emb = type(model.rotary_emb)(config=cfg)

    return instantiate(lambda: model_cls(cfg), state, source, dtype=dtype, after_load=rebuild_rotary)


def load_flux2_text_encoder(path: str | Path, tokenizer_roots: Iterable[Path] = (), dtype: Any = None
                            ) -> Flux2TextEncoder:
    """CLIPLoader type flux2: a Qwen3 / Mistral single file, a transformers folder or a FLUX.2 pipeline folder."""
    path = Path(path)
    preferred: list[Path] = []
    if path.is_dir():
        model, architecture, preferred = _load_folder(path, dtype)
    else:
        part = require_family_part(path, ("qwen3", "mistral"), "a FLUX.2 text encoder (Qwen3 for klein, Mistral "
                                                               "for dev)")
        if is_gguf(path):  # llama.cpp names; quantized Linear weights stay GGUF blocks
            gf = open_gguf(path)
            state = llama_cpp_to_hf(gf, gf.load())
        else:
            state = language_model_state(open_safetensors(path).load(part.prefix), path)
        architecture = part.kind
        model = build_language_model(state, architecture, path, dtype)
    tokenizer = find_flux2_tokenizer(architecture, int(model.config.vocab_size), path, list(tokenizer_roots),
                                     preferred)
    return Flux2TextEncoder(model=model, tokenizer=tokenizer, architecture=architecture,
                            layers=HIDDEN_LAYERS[architecture], source=str(path))


def _load_folder(path: Path, dtype: Any) -> tuple[Any, str, list[Path]]:
    folder = model_subfolder(path, "text_encoder")
    config = read_folder_config(folder)
    model_type = str(config.get("model_type", ""))
    if model_type.startswith("qwen3"):
        architecture, text_config = "qwen3", config
    elif model_type in ("mistral3", "mistral"):
        architecture, text_config = "mistral", config.get("text_config", config)
    else:
        raise ModelFileError(folder, f"expected a FLUX.2 text encoder (Qwen3 or Mistral), config.json says "
                                     f"model_type {model_type!r}")
    state = language_model_state(load_folder_weights(folder), folder)
    # nested sub-configs and per-layer lists do not apply to the truncated base model
    text_config = {k: v for k, v in text_config.items()
                   if (not isinstance(v, dict) or k == "rope_parameters") and k != "layer_types"}
    model = build_language_model(state, architecture, folder, dtype, config=text_config)
    tokenizer_dirs = [folder.parent / "tokenizer"] if folder != path or folder.name == "text_encoder" else []
    return model, architecture, tokenizer_dirs + [folder]
