"""Open safetensors files safely: validate the header ourselves, read shapes without loading, load by prefix.

Only safetensors is accepted: pickle-based formats (.ckpt, .pt, .bin, .pth, .pkl) can run code when loaded,
so they are refused with a message saying how to convert. Every error names the file.

The header is parsed here (8-byte little-endian length, JSON table of tensors) rather than left to the
safetensors library so that a truncated download or a file that is not safetensors at all gets a specific
message instead of a generic deserialisation error.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.core.atomic_files import atomic_write
from engine.core.safetensors_header import HeaderError, read_header
from engine.memory.mapped import MappedFile

PICKLE_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl"})
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E8M0": 1}


class ModelFileError(ValueError):
    """A model file or folder that cannot be used; the message names it and says what was expected."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype name: F32, BF16, F8_E4M3, ...
    shape: tuple[int, ...]
    offsets: tuple[int, int]


@dataclass
class SafetensorsFile:
    """The validated table of contents of one .safetensors file; tensors are read on demand."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0  # byte offset of the data section (8 + header length); 0: unknown

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key].shape

    def shapes(self, prefix: str = "", strip: bool = True) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors under `prefix` (keys with the prefix removed when `strip`)."""
        return {(k[len(prefix):] if strip else k): t.shape for k, t in self.tensors.items() if k.startswith(prefix)}

    def dtypes(self, prefix: str = "") -> set[str]:
        return {t.dtype for k, t in self.tensors.items() if k.startswith(prefix)}

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.tensors)

    def load(self, prefix: str = "", strip: bool = True, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """Tensors under `prefix` as a state dict on CPU: zero-copy views of the memory-mapped file.

        Nothing is read until a tensor is used, and no RAM is taken for weights the memory manager keeps
        on disk (engine.memory.mapped); converting or copying one is the first real read."""
        wanted = [k for k in (keys if keys is not None else self.tensors) if k.startswith(prefix)]
        out: dict[str, Any] = {}
        try:
            mapped = MappedFile(self.path, self.data_start or self._data_start())
            for key in wanted:
                info = self.tensors[key]
                out[key[len(prefix):] if strip else key] = mapped.tensor(info.dtype, info.shape, info.offsets)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelFileError(self.path, f"could not read tensors: {exc}") from exc
        return out

    def _data_start(self) -> int:
        with open(self.path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
        return 8 + header_len


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        raise ModelFileError(path, f"'{path.suffix}' files are pickle-based and can run code when loaded; "
                                   "only .safetensors/.sft files are loaded. Convert it to safetensors first.")


def open_safetensors(path: str | os.PathLike[str]) -> SafetensorsFile:
    """Validate `path` as a safetensors file and return its table of contents (no tensor data read)."""
    path = Path(path)
    refuse_pickle(path)
    if not path.exists():
        raise ModelFileError(path, "file not found")
    if not path.is_file():
        raise ModelFileError(path, "is a folder, expected a .safetensors file")
    try:
        parsed = read_header(path)
    except HeaderError as exc:
        if exc.truncated:
            raise ModelFileError(path, f"truncated: {exc.problem}") from None
        raise ModelFileError(path, _not_safetensors_hint(exc.head, exc.problem)) from None
    header, size, header_len = dict(parsed.table), parsed.file_size, parsed.length
    metadata = header.pop("__metadata__", None) or {}
    tensors = _parse_table(path, header)
    data_len = size - 8 - header_len
    end = max((t.offsets[1] for t in tensors.values()), default=0)
    if end > data_len:
        raise ModelFileError(path, f"truncated: tensors need {end} data bytes but the file holds {data_len} "
                                   "(incomplete download or copy?)")
    return SafetensorsFile(path=path, tensors=tensors, metadata={str(k): str(v) for k, v in metadata.items()},
                           data_start=8 + header_len)


def _parse_table(path: Path, header: dict[str, Any]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (start, stop) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(path, f"corrupt safetensors header: bad entry for tensor {name!r}") from None
        expected = DTYPE_BYTES.get(dtype)
        count = 1
        for dim in shape:
            count *= dim
        if expected is not None and stop - start != count * expected:
            raise ModelFileError(path, f"corrupt safetensors header: tensor {name!r} {dtype}{list(shape)} needs "
                                       f"{count * expected} bytes, header gives {stop - start}")
        tensors[name] = TensorInfo(dtype=dtype, shape=shape, offsets=(int(start), int(stop)))
    return tensors


def _not_safetensors_hint(head: bytes, why: str) -> str:
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return f"not a safetensors file ({why}); it looks like a pickle/zip checkpoint, which is not loaded"
    if head[:4] == b"GGUF":
        return f"not a safetensors file ({why}); it is a GGUF file: load it with UnetLoaderGGUF / CLIPLoaderGGUF"
    if head.lstrip()[:1] in (b"{", b"<", b"v"):
        return f"not a safetensors file ({why}); it looks like text (a git-lfs pointer or an HTML error page?)"
    return f"not a safetensors file ({why})"


def key_prefixes(keys: Iterable[str], depth: int = 1) -> dict[str, int]:
    """How many keys fall under each dotted prefix of `depth` parts ("model.diffusion_model." at depth 2)."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        prefix = ".".join(parts[:depth]) + "." if len(parts) > depth else ""
        counts[prefix] = counts.get(prefix, 0) + 1
    return counts


_TORCH_TO_SAFETENSORS = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
                         "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32",
                         "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike[str],
                     metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` to `path` in the safetensors format, byte-for-byte reproducibly.

    Written here rather than with safetensors.save_file, whose header puts metadata entries in hash order
    (so the same model could give different bytes). Keys and metadata are sorted; data is 8-byte aligned.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs: list[Any] = []
    offset = 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        name = str(tensor.dtype).removeprefix("torch.")
        if name not in _TORCH_TO_SAFETENSORS:
            raise TypeError(f"cannot write tensor {key!r} of dtype {tensor.dtype} to safetensors")
        raw = tensor.reshape(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
        header[key] = {"dtype": _TORCH_TO_SAFETENSORS[name], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + raw.numel()]}
        blobs.append(raw)
        offset += raw.numel()
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    # A new file renamed over the old one: models loaded from the old file keep reading its (memory-mapped)
    # bytes instead of seeing them change or vanish under them.
    with atomic_write(path) as fh:
        fh.write(struct.pack("<Q", len(encoded)))
        fh.write(encoded)
        for raw in blobs:
            fh.write(raw.numpy().tobytes())
    return path
