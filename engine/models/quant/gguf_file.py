"""Read a .gguf model file (the `gguf` package's GGUFReader for the header) into a state dict of our keys.

Tensor bytes are not copied: each becomes a zero-copy view of the memory-mapped file (engine.memory.mapped,
the same mapping the safetensors loader uses), quantized ones wrapped as GGUFWeight (raw blocks, ggml type,
logical shape), F32 / F16 / BF16 ones as plain tensors. GGUF lists dimensions innermost first; shapes here
are torch's order. A `comfy.gguf.orig_shape.<name>` entry (written by the GGUF conversion tools for tensors
they reshaped) gives the real shape.

Names: diffusion transformers are stored with their original (BFL / ComfyUI or diffusers) keys and are used
as they are; text encoders use llama.cpp's names, converted here (`llama_cpp_to_hf`): T5 (`enc.blk.N.*`),
Qwen3 and llama-architecture models such as Mistral (`blk.N.*`; llama.cpp permutes llama's q/k rows for its
rope, undone here). The model type comes from the metadata `general.architecture`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.memory.mapped import MappedFile
from engine.models.common.safetensors_io import ModelFileError
from engine.models.quant.gguf_dequant import FLOAT_QTYPES, QTYPES, qtype_name, row_bytes
from engine.models.quant.tensors import GGUFWeight

GGUF_MAGIC = b"GGUF"
_FLOAT_NAMES = {0: "F32", 1: "F16", 30: "BF16"}
ORIG_SHAPE = "comfy.gguf.orig_shape."


@dataclass(frozen=True)
class GGUFTensorInfo:
    qtype: int
    shape: tuple[int, ...]  # torch order
    offset: int  # absolute, in the file
    nbytes: int


@dataclass
class GGUFFile:
    path: Path
    architecture: str
    tensors: dict[str, GGUFTensorInfo]
    metadata: dict[str, Any] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: t.shape for k, t in self.tensors.items()}

    def load(self) -> dict[str, Any]:
        """Every tensor: plain tensors for F32/F16/BF16, GGUFWeight for block types (views of the file)."""
        mapped = MappedFile(self.path, 0)
        out: dict[str, Any] = {}
        for name, info in self.tensors.items():
            span = (info.offset, info.offset + info.nbytes)
            if info.qtype in FLOAT_QTYPES:
                out[name] = mapped.tensor(_FLOAT_NAMES[info.qtype], info.shape, span)
            else:
                rows = info.shape[:-1] or (1,)
                raw = mapped.tensor("U8", (*rows, row_bytes(info.qtype, info.shape[-1])), span)
                out[name] = GGUFWeight(raw, info.qtype, info.shape)
        return out


def is_gguf(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def open_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """The table of contents of a .gguf file (no tensor data read); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found" if not path.exists() else "is a folder, expected a .gguf file")
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelFileError(path, "not a GGUF file (it does not start with 'GGUF')")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise ModelFileError(path, f"corrupt or truncated GGUF file: {exc}") from None
    metadata = {name: _value(f) for name, f in reader.fields.items() if not name.startswith("tokenizer.")}
    tensors: dict[str, GGUFTensorInfo] = {}
    for tensor in reader.tensors:
        qtype = int(tensor.tensor_type)
        if qtype not in QTYPES:
            raise ModelFileError(path, f"tensor {tensor.name!r} is {qtype_name(qtype)}, which is not supported "
                                       f"(supported: {', '.join(n for n, _, _ in QTYPES.values())})")
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        orig = metadata.get(ORIG_SHAPE + tensor.name)
        if isinstance(orig, list) and _count(orig) == _count(shape) and orig[-1] == shape[-1]:
            shape = tuple(int(d) for d in orig)
        tensors[tensor.name] = GGUFTensorInfo(qtype, shape, int(tensor.data_offset), int(tensor.n_bytes))
    architecture = str(metadata.get("general.architecture", ""))
    return GGUFFile(path=path, architecture=architecture, tensors=tensors, metadata=metadata)


def _count(shape: Any) -> int:
    total = 1
    for dim in shape:
        total *= int(dim)
    return total


def _value(f: Any) -> Any:
    try:
        value = f.contents()
    except (ValueError, IndexError, TypeError):
        return None
    return value.tolist() if hasattr(value, "tolist") else value


# ----- llama.cpp tensor names -> Hugging Face names (text encoders)
_T5 = {"attn_q": "layer.0.SelfAttention.q", "attn_k": "layer.0.SelfAttention.k", "attn_v": "layer.0.SelfAttention.v",
       "attn_o": "layer.0.SelfAttention.o", "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
       "attn_norm": "layer.0.layer_norm", "ffn_gate": "layer.1.DenseReluDense.wi_0",
       "ffn_up": "layer.1.DenseReluDense.wi_1", "ffn_down": "layer.1.DenseReluDense.wo",
       "ffn_norm": "layer.1.layer_norm"}
_DECODER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
            "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_BLOCK = re.compile(r"^(enc\.)?blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")
T5_ARCHITECTURES = ("t5", "t5encoder")
DECODER_ARCHITECTURES = ("qwen3", "llama", "mistral", "mistral3")


def llama_cpp_to_hf(gf: GGUFFile, state: dict[str, Any]) -> dict[str, Any]:
    """The state of a llama.cpp-named text encoder under transformers' names: T5 encoder keys
    (`encoder.block.N...`, `shared.weight`) or decoder base-model keys (`layers.N...`, `embed_tokens`)."""
    arch = gf.architecture
    t5 = arch in T5_ARCHITECTURES
    if not t5 and arch not in DECODER_ARCHITECTURES:
        raise ModelFileError(gf.path, f"GGUF architecture {arch!r} is not a text encoder this loader knows "
                                      f"(T5: {list(T5_ARCHITECTURES)}, Qwen3 / Mistral: {list(DECODER_ARCHITECTURES)})")
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key in ("token_embd.weight",):
            out["shared.weight" if t5 else "embed_tokens.weight"] = value
        elif key in ("enc.output_norm.weight", "output_norm.weight"):
            out["encoder.final_layer_norm.weight" if t5 else "norm.weight"] = value
        elif key == "output.weight" or key.startswith("dec."):
            continue  # the LM head / T5's decoder: not used by a text encoder
        elif (match := _BLOCK.match(key)) is not None:
            _, index, stem, param = match.groups()
            table = _T5 if t5 else _DECODER
            if stem not in table:
                raise ModelFileError(gf.path, f"unknown tensor {key!r} for a GGUF {arch} text encoder")
            if t5:
                out[f"encoder.block.{index}.{table[stem]}.{param}"] = value
            else:
                out[f"layers.{index}.{table[stem]}.{param}"] = _unpermute(gf, stem, value)
        else:
            raise ModelFileError(gf.path, f"unknown tensor {key!r} for a GGUF {arch} text encoder")
    return out


def _unpermute(gf: GGUFFile, stem: str, value: Any) -> Any:
    """llama.cpp stores a llama model's q / k rows interleaved for its rope; back to Hugging Face's order."""
    if gf.architecture != "llama" or stem not in ("attn_q", "attn_k"):
        return value
    heads = gf.metadata.get("llama.attention.head_count")
    if stem == "attn_k":
        heads = gf.metadata.get("llama.attention.head_count_kv") or heads
    if not heads:
        raise ModelFileError(gf.path, "llama GGUF without llama.attention.head_count metadata")
    return _permute_rows(value, int(heads))


def _permute_rows(value: Any, heads: int) -> Any:
    import torch

    rows = value.shape[0]  # llama.cpp's row r' = (head, j, t) held Hugging Face's row (head, t, j)
    order = torch.arange(rows).reshape(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)
    if isinstance(value, GGUFWeight):
        return GGUFWeight(value.raw[order].contiguous(), value.qtype, value.logical_shape)
    return value[order].contiguous()


# ----- diffusion transformers: which FLUX family, under which prefix, in which key layout
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
_MARKERS = (("flux2", "bfl", "single_stream_modulation.lin.weight"),
            ("flux2", "diffusers", "single_stream_modulation.linear.weight"),
            ("flux1", "bfl", "double_blocks.0.img_attn.qkv.weight"),
            ("flux1", "diffusers", "transformer_blocks.0.attn.to_q.weight"))


def transformer_part(gf: GGUFFile) -> tuple[str, str, str] | None:
    """(family "flux1" | "flux2", key prefix, layout "bfl" | "diffusers") of a GGUF transformer, or None."""
    keys = set(gf.tensors)
    for family, layout, marker in _MARKERS:
        for prefix in _PREFIXES:
            if prefix + marker in keys:
                return family, prefix, layout
    return None


def transformer_state(gf: GGUFFile, family: str) -> tuple[dict[str, Any], str]:
    """(tensors under the transformer's prefix, prefix removed; layout) of a `family` GGUF transformer."""
    found = transformer_part(gf)
    if found is None or found[0] != family:
        what = f"a {'FLUX.2' if found[0] == 'flux2' else 'FLUX.1'} transformer" if found else \
            f"no FLUX transformer (GGUF architecture {gf.architecture!r})"
        raise ModelFileError(gf.path, f"expected a {'FLUX.2' if family == 'flux2' else 'FLUX.1'} diffusion "
                                      f"transformer, but the file holds {what}")
    _, prefix, layout = found
    return {k[len(prefix):]: v for k, v in gf.load().items() if k.startswith(prefix)}, layout


def text_metadata(gf: GGUFFile) -> dict[str, str]:
    """The string metadata (what variant detection reads from safetensors headers)."""
    return {k: v for k, v in gf.metadata.items() if isinstance(v, str)}


def text_encoder_kind(gf: GGUFFile) -> str | None:
    """"t5xxl", "qwen3" or "mistral" for a GGUF text encoder, from `general.architecture`."""
    if gf.architecture in T5_ARCHITECTURES:
        return "t5xxl"
    if gf.architecture == "qwen3":
        return "qwen3"
    if gf.architecture in ("llama", "mistral", "mistral3"):
        return "mistral"
    return None
