"""Load FLUX.1's text encoders (CLIP-L, T5-XXL) into transformers CLIPTextModel / T5EncoderModel.

Sources: single files as ComfyUI and BFL ship them (clip_l.safetensors with `text_model.*` keys,
t5xxl_*.safetensors with `encoder.block.*` / `shared.weight` keys, ComfyUI's scaled-fp8 T5 included, and T5
GGUF files with llama.cpp names; fp8 / GGUF Linear weights stay quantized: engine/models/quant/), the
same under `text_encoders.{clip_l,t5xxl}.transformer.` inside all-in-one checkpoints, and transformers
folders (`text_encoder/`, `text_encoder_2/` of a diffusers pipeline). A folder is built from its own
config.json (read as transformers' AutoConfig does, offline). For single files, configs are inferred from
shapes and replaced by the shipped clip_l / t5xxl configs when the sizes agree; CLIP's head count cannot be
seen in the weights there: heads are 64 wide, as in every released CLIP text tower.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from engine.models.common.build import (instantiate, load_folder_weights, model_subfolder, read_folder_config,
                                 weights_dtype)
from engine.models.common.configs import load_config
from engine.models.common.detect import detect_components
from engine.models.common.handles import FluxTextEncoders
from engine.models.common.safetensors_io import ModelFileError, open_safetensors
from engine.models.flux1.tokenizer_files import find_tokenizer
from engine.models.quant.gguf_file import is_gguf, llama_cpp_to_hf, open_gguf, text_encoder_kind

CLIP_IGNORED = ("text_projection.weight", "logit_scale", "embeddings.position_ids")
CLIP_HEAD_DIM = 64
_CLIP_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "max_position_embeddings")
_T5_SHAPE_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                    "relative_attention_num_buckets")


def _count(keys: Iterable[str], pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def clip_config(state: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """CLIPTextConfig kwargs for bare CLIP keys (`embeddings.*`, `encoder.layers.*`)."""
    try:
        vocab, hidden = state["embeddings.token_embedding.weight"].shape
        inferred = {
            "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": state["encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_hidden_layers": _count(state, r"^encoder\.layers\.(\d+)\."),
            "max_position_embeddings": state["embeddings.position_embedding.weight"].shape[0],
        }
    except KeyError as exc:
        raise ModelFileError(source, f"not a CLIP text encoder: tensor {exc.args[0]!r} is missing") from None
    shipped = load_config("clip_l")
    if all(shipped[f] == inferred[f] for f in _CLIP_SHAPE_FIELDS):
        return shipped
    if hidden % CLIP_HEAD_DIM:
        raise ModelFileError(source, f"CLIP width {hidden} is not a multiple of the {CLIP_HEAD_DIM}-wide heads")
    projection = state.get("text_projection.weight")
    return dict(shipped, **inferred, num_attention_heads=hidden // CLIP_HEAD_DIM,
                projection_dim=projection.shape[0] if projection is not None else hidden)


def folder_text_config(folder: Path, config: dict[str, Any]) -> Any:
    """The transformers config object of a text encoder folder's config.json, as AutoConfig builds it (no hub);
    a full CLIP model's config gives its text tower's."""
    from transformers import AutoConfig

    model_type = str(config.get("model_type", ""))
    fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    try:
        built = AutoConfig.for_model(model_type, **fields)
    except Exception as exc:  # noqa: BLE001 - config classes validate with their own error types (hub's too)
        raise ModelFileError(folder / "config.json", f"cannot read this text encoder config: {exc}") from None
    return built.text_config if model_type == "clip" else built


def build_clip(state: dict[str, Any], source: str | Path, dtype: Any = None, cfg: Any = None) -> Any:
    """CLIPTextModel from CLIP keys with or without the `text_model.` prefix; `cfg`: a folder's own
    CLIPTextConfig, None infers it from the shapes."""
    from transformers import CLIPTextConfig, CLIPTextModel

    state = {(k[len("text_model."):] if k.startswith("text_model.") else k): v for k, v in state.items()}
    if cfg is None:
        config = clip_config(state, source)
        cfg = CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    dtype = weights_dtype(state, dtype)
    return instantiate(lambda: CLIPTextModel(cfg), state, source, dtype=dtype, ignore_unexpected=CLIP_IGNORED)


def t5_config(state: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """T5Config kwargs for T5 encoder keys."""
    try:
        vocab, d_model = state["shared.weight"].shape
        buckets, heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
        inner = state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
        gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
        d_ff = state["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"].shape[0]
    except KeyError as exc:
        raise ModelFileError(source, f"not a T5 encoder: tensor {exc.args[0]!r} is missing") from None
    inferred = {"vocab_size": vocab, "d_model": d_model, "d_kv": inner // heads, "d_ff": d_ff,
                "num_layers": _count(state, r"^encoder\.block\.(\d+)\."), "num_heads": heads,
                "relative_attention_num_buckets": buckets}
    shipped = load_config("t5xxl")
    if all(shipped[f] == inferred[f] for f in _T5_SHAPE_FIELDS) and gated:
        return shipped
    activation = {"feed_forward_proj": "gated-gelu"} if gated else {"feed_forward_proj": "relu",
                                                                      "is_gated_act": False, "dense_act_fn": "relu"}
    return dict(shipped, **inferred, num_decoder_layers=inferred["num_layers"], **activation)


def build_t5(state: dict[str, Any], source: str | Path, dtype: Any = None, cfg: Any = None) -> Any:
    """T5EncoderModel (UMT5EncoderModel for a umt5 `cfg`) from T5 keys; `shared.weight` and
    `encoder.embed_tokens.weight` are one tied table. `cfg`: a folder's own config, None infers it."""
    from transformers import T5Config, T5EncoderModel, UMT5EncoderModel

    state = dict(state)
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    state.pop("encoder.embed_tokens.weight", None)
    if cfg is None:
        config = t5_config(state, source)
        cfg = T5Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    model_cls = UMT5EncoderModel if cfg.model_type == "umt5" else T5EncoderModel
    dtype = weights_dtype(state, dtype)

    def tie_embeddings(model: Any) -> None:
        model.encoder.embed_tokens.weight = model.shared.weight

    return instantiate(lambda: model_cls(cfg), state, source, dtype=dtype,
                       allow_missing=("encoder.embed_tokens.weight",), after_load=tie_embeddings)


def load_text_encoder_file(path: str | Path, dtype: Any = None) -> dict[str, Any]:
    """{"clip_l": CLIPTextModel, "t5xxl": T5EncoderModel} for the encoders found in a single file."""
    path = Path(path)
    if is_gguf(path):
        return {"t5xxl": _gguf_t5(path, dtype)}
    sf = open_safetensors(path)
    contents = detect_components(sf)
    found = {k: c for k, c in contents.components.items() if k in ("clip_l", "t5xxl")}
    if not found:
        raise ModelFileError(path, f"expected a CLIP-L or T5-XXL text encoder, but the file holds "
                                   f"{contents.describe()}")
    models = {}
    for kind, comp in found.items():
        state = sf.load(comp.prefix)
        if kind == "clip_l":
            state = {k: v for k, v in state.items() if k.startswith(("text_model.", "embeddings.", "encoder.",
                                                                     "final_layer_norm.")) or k in CLIP_IGNORED}
            models[kind] = build_clip(state, path, dtype)
        else:
            state = {k: v for k, v in state.items() if k.startswith(("encoder.", "shared.")) or k == "scaled_fp8"}
            models[kind] = build_t5(state, path, dtype)
    return models


def _gguf_t5(path: Path, dtype: Any) -> Any:
    """A T5 encoder from a llama.cpp-named GGUF file (CLIPLoaderGGUF / DualCLIPLoaderGGUF): quantized
    Linear weights stay GGUF blocks; the embedding table is dequantized."""
    gf = open_gguf(path)
    if text_encoder_kind(gf) != "t5xxl":
        raise ModelFileError(path, f"expected a T5-XXL text encoder (GGUF architecture 't5encoder'), but the "
                                   f"file's architecture is {gf.architecture!r}")
    return build_t5(llama_cpp_to_hf(gf, gf.load()), path, dtype)


def encoders_handle(models: dict[str, Any], tokenizer_roots: Iterable[Path], source: str,
                    preferred: dict[str, Path] | None = None) -> FluxTextEncoders:
    """Pair each encoder with a tokenizer that fits its vocabulary (see tokenizer_files)."""
    preferred = preferred or {}
    roots = list(tokenizer_roots)
    clip, t5 = models.get("clip_l"), models.get("t5xxl")
    clip_tok = t5_tok = None
    if clip is not None:
        clip_tok = find_tokenizer("clip_l", clip.config.vocab_size, source, roots,
                                  [preferred["clip_l"]] if "clip_l" in preferred else [])
    if t5 is not None:
        t5_tok = find_tokenizer("t5xxl", t5.config.vocab_size, source, roots,
                                [preferred["t5xxl"]] if "t5xxl" in preferred else [])
    return FluxTextEncoders(clip=clip, clip_tokenizer=clip_tok, t5=t5, t5_tokenizer=t5_tok, source=source)


def load_text_encoder_folder(folder: str | Path, dtype: Any = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """Encoders of a folder and where their tokenizers may be: a diffusers pipeline folder (both encoders,
    `tokenizer/`, `tokenizer_2/`) or one transformers model folder (its own files; for a pipeline's
    `text_encoder*/` subfolder, the sibling `tokenizer*/`)."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        models = dict(_folder_encoder(model_subfolder(folder, sub, False), dtype, kind)
                      for sub, kind in (("text_encoder", "clip_l"), ("text_encoder_2", "t5xxl")))
        return models, {"clip_l": folder / "tokenizer", "t5xxl": folder / "tokenizer_2"}
    kind, model = _folder_encoder(folder, dtype)
    sibling = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}.get(folder.name)
    return {kind: model}, {kind: folder.parent / sibling if sibling else folder}


def _folder_encoder(folder: Path, dtype: Any, expected: str | None = None) -> tuple[str, Any]:
    """(kind, model) of one transformers text encoder folder, built from its config.json."""
    config = read_folder_config(folder)
    model_type = str(config.get("model_type", ""))
    kind = "clip_l" if model_type.startswith("clip") else "t5xxl" if model_type in ("t5", "umt5") else None
    if kind is None or expected not in (None, kind):
        wanted = {"clip_l": "a CLIP", "t5xxl": "a T5"}.get(expected or "", "a CLIP or T5")
        raise ModelFileError(folder, f"expected {wanted} text encoder folder, config.json says model_type "
                                     f"{model_type!r}")
    cfg = folder_text_config(folder, config)
    build = build_clip if kind == "clip_l" else build_t5
    return kind, build(load_folder_weights(folder), folder, dtype, cfg)


def load_flux_text_encoders(paths: Sequence[str | Path], tokenizer_roots: Iterable[Path] = (),
                            dtype: Any = None) -> FluxTextEncoders:
    """The CLIP handle for FLUX from one or two files or folders, in any order (DualCLIPLoader passes either
    first)."""
    models: dict[str, Any] = {}
    preferred: dict[str, Path] = {}
    for path in paths:
        if Path(path).is_dir():
            found, tokenizer_dirs = load_text_encoder_folder(path, dtype)
            preferred.update(tokenizer_dirs)
        else:
            found = load_text_encoder_file(path, dtype)
        for kind, model in found.items():
            if kind in models:
                raise ModelFileError(path, f"both files hold a {kind} text encoder; FLUX needs one clip_l and "
                                           "one t5xxl")
            models[kind] = model
    return encoders_handle(models, tokenizer_roots, " + ".join(str(p) for p in paths), preferred)


def load_text_encoders_folder(folder: str | Path, dtype: Any = None,
                              tokenizer_roots: Iterable[Path] = ()) -> FluxTextEncoders:
    """The encoders of a diffusers FLUX pipeline folder (or one encoder's folder), with their tokenizers."""
    models, preferred = load_text_encoder_folder(folder, dtype)
    return encoders_handle(models, tokenizer_roots, str(folder), preferred)
