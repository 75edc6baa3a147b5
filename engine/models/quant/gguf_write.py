"""Write GGUF files as the community conversion tools do (the tiny zoo's variants, tests, benchmarks).

Diffusion transformers keep their own tensor names (BFL keys); T5 encoders get llama.cpp's names (the
inverse of `gguf_file.llama_cpp_to_hf`). Each tensor's type follows `gguf_quantize.choose_qtype`: vectors
F32, matrices the wanted type where their rows split into its blocks (Q8_0, else F16 otherwise). The file is
written next to its final name and renamed over it, so a model loaded from the old file keeps its bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.models.quant.gguf_file import _T5
from engine.models.quant.gguf_quantize import F16, F32, choose_qtype, quantize
from engine.models.quant.tensors import GGUFWeight

_T5_NAMES = {hf: ll for ll, hf in _T5.items()}


def save_gguf(tensors: dict[str, Any], path: str | os.PathLike[str], architecture: str, qtype: int,
              metadata: dict[str, Any] | None = None) -> Path:
    """`tensors` (torch, any float dtype) quantized to ggml type `qtype` (see the module docstring); GGUFWeight
    values are written with their own blocks and type."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(str(partial), architecture)
    for key, value in sorted((metadata or {}).items()):
        if isinstance(value, int):  # e.g. llama.attention.head_count
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, str(value))
    writer.add_file_type(int(qtype))
    for name in sorted(tensors):
        if isinstance(tensors[name], GGUFWeight):  # already quantized: its blocks as they are
            stored = tensors[name]
            raw = stored.raw.cpu().contiguous().numpy()
            writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType(stored.qtype))
            continue
        array = tensors[name].detach().to("cpu").float().numpy()
        chosen = choose_qtype(name, array.shape, qtype)
        if chosen == F32:
            writer.add_tensor(name, array.astype(np.float32))
        elif chosen == F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(array, chosen), raw_dtype=gguf.GGMLQuantizationType(chosen))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, path)
    return path


def t5_to_llama_cpp(state: dict[str, Any]) -> dict[str, Any]:
    """T5 encoder keys (`shared.weight`, `encoder.block.N...`) -> llama.cpp's `t5encoder` names."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == "shared.weight":
            out["token_embd.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["enc.output_norm.weight"] = value
        elif key.startswith("encoder.block."):
            _, _, index, rest = key.split(".", 3)
            stem, _, param = rest.rpartition(".")
            out[f"enc.blk.{index}.{_T5_NAMES[stem]}.{param}"] = value
        elif key != "encoder.embed_tokens.weight":
            raise KeyError(f"no llama.cpp name for T5 tensor {key!r}")
    return out
