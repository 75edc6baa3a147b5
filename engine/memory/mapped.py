"""Tensors that are views of a memory-mapped safetensors file (the "disk" tier of the memory manager).

Loading through a mapping costs no RAM: a tensor's pages are read from the file (or the page cache) when
something touches them, and `release_pages` hands them back, so a model larger than the budget can run with
only the blocks in use present in memory. The mapping is private copy-on-write: writing into such a tensor
never changes the file, but releasing its pages would discard what was written, so the memory manager only
releases weights it knows are unmodified (LoRA patches swap new tensors in, never write into these). Where
strict overcommit accounting refuses such a mapping the file is mapped read-only instead.

The table of live mappings below mirrors kernel state (which address ranges belong to which file). It is
the one piece of module-level state here: it lets any tensor be traced back to its file by data pointer,
which survives views, slices and chunks made by the key converters.

torch is imported inside the functions: `engine.memory.manager` imports this module at start-up.
"""

from __future__ import annotations

import mmap
import os
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

PAGE = mmap.PAGESIZE
# safetensors dtype name -> torch dtype attribute (looked up lazily; newer dtypes may be missing)
_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                 "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
                 "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                 "U16": "uint16", "U32": "uint32", "U64": "uint64"}


@dataclass(frozen=True)
class FileVersion:
    """What identifies the bytes of a file: a rewritten or replaced file gets a different version."""

    size: int
    inode: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> "FileVersion":
        st = os.stat(path)
        return cls(size=st.st_size, inode=st.st_ino, mtime_ns=st.st_mtime_ns)


class _Region:
    """A live mapping: its address range and file, with a weak reference to the mmap object."""

    def __init__(self, path: Path, version: FileVersion, mm: mmap.mmap, base: int) -> None:
        self.path = path
        self.version = version
        self.base = base
        self.length = len(mm)
        self._mm = weakref.ref(mm)

    def mmap(self) -> mmap.mmap | None:
        return self._mm()

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.length


_LOCK = threading.Lock()
_REGIONS: dict[int, _Region] = {}  # base address -> live region


def _frombuffer(mm: mmap.mmap, **kwargs: Any) -> Any:
    import torch

    with warnings.catch_warnings():  # a read-only mapping (see _map) is fine: weights are never written
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(mm, **kwargs)


def _address_of(mm: mmap.mmap) -> int:
    import torch

    return _frombuffer(mm, dtype=torch.uint8, count=1).data_ptr()


def _map(fd: int) -> mmap.mmap:
    """Copy-on-write, so that a stray in-place write changes our copy, never the file; read-only where the
    system's strict overcommit accounting refuses a private writable mapping of the whole file."""
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except OSError:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


class MappedFile:
    """One file mapped copy-on-write; `tensor(...)` makes zero-copy views into it."""

    def __init__(self, path: str | os.PathLike[str], data_start: int) -> None:
        self.path = Path(path)
        self.data_start = data_start
        self.mm, self.version = _live_or_new_mapping(self.path)

    def tensor(self, dtype: str, shape: tuple[int, ...], offsets: tuple[int, int]) -> Any:
        """The tensor stored at data `offsets` (relative to the data section) with safetensors `dtype`."""
        import torch

        torch_dtype = torch_dtype_of(dtype)
        start, stop = self.data_start + offsets[0], self.data_start + offsets[1]
        count = 1
        for dim in shape:
            count *= dim
        if count == 0:
            return torch.empty(shape, dtype=torch_dtype)
        itemsize = torch.empty((), dtype=torch_dtype).element_size()
        if stop - start != count * itemsize:
            raise ValueError(f"{self.path}: tensor of {dtype}{list(shape)} spans {stop - start} bytes")
        if start % itemsize:  # a misaligned tensor (after odd-sized ones) cannot be viewed: copy it
            raw = _frombuffer(self.mm, dtype=torch.uint8, count=stop - start, offset=start)
            return raw.clone().view(torch_dtype).reshape(shape)
        return _frombuffer(self.mm, dtype=torch_dtype, count=count, offset=start).reshape(shape)


def torch_dtype_of(name: str) -> Any:
    import torch

    attribute = _TORCH_DTYPES.get(name)
    dtype = getattr(torch, attribute, None) if attribute else None
    if dtype is None:
        raise TypeError(f"safetensors dtype {name} is not supported by this torch build")
    return dtype


def _live_or_new_mapping(path: Path) -> tuple[mmap.mmap, FileVersion]:
    """Reuse a live mapping of the same file version (a checkpoint read part by part maps once)."""
    resolved = path.resolve()
    version = FileVersion.of(resolved)
    with _LOCK:
        for region in _REGIONS.values():
            mm = region.mmap()
            if mm is not None and region.path == resolved and region.version == version:
                return mm, version
    fd = os.open(resolved, os.O_RDONLY)
    try:
        mm = _map(fd)
    finally:
        os.close(fd)
    base = _address_of(mm)
    region = _Region(resolved, version, mm, base)
    with _LOCK:
        _REGIONS[base] = region
    weakref.finalize(mm, _forget, base)
    return mm, version


def _forget(base: int) -> None:
    with _LOCK:
        _REGIONS.pop(base, None)


def region_of(tensor: Any) -> _Region | None:
    """The live mapping a tensor's storage lies in, or None for ordinary (owned) memory."""
    if getattr(tensor, "device", None) is None or tensor.device.type != "cpu":
        return None
    address = tensor.untyped_storage().data_ptr()
    with _LOCK:
        for region in _REGIONS.values():
            if region.contains(address):
                return region
    return None


def is_mapped(tensor: Any) -> bool:
    return region_of(tensor) is not None


def mapped_file_of(tensor: Any) -> Path | None:
    region = region_of(tensor)
    return region.path if region is not None else None


def changed_files(tensors: Iterable[Any]) -> list[str]:
    """Files behind `tensors` that were modified in place since they were mapped (reading those pages
    could give other weights, or a bus error if the file shrank)."""
    seen: dict[int, _Region] = {}
    for tensor in tensors:
        region = region_of(tensor)
        if region is not None:
            seen.setdefault(region.base, region)
    problems = []
    for region in seen.values():
        try:
            now = FileVersion.of(region.path)
        except OSError:
            continue  # deleted or renamed away: the mapping keeps the old inode's pages, still valid
        if now.inode == region.version.inode and now != region.version:
            problems.append(str(region.path))
    return problems


def _advise(tensors: Iterable[Any], option: int) -> int:
    """madvise over the pages of each mapped tensor; returns the bytes covered."""
    covered = 0
    for tensor in tensors:
        region = region_of(tensor)
        mm = region.mmap() if region is not None else None
        if mm is None or not hasattr(mm, "madvise"):
            continue
        start = tensor.data_ptr() - region.base
        stop = start + tensor.numel() * tensor.element_size()
        first = (start // PAGE) * PAGE
        last = min(-(-stop // PAGE) * PAGE, region.length)
        if last > first:
            try:
                mm.madvise(option, first, last - first)
            except OSError:
                continue
            covered += stop - start
    return covered


def release_pages(tensors: Iterable[Any]) -> int:
    """Drop the pages of mapped tensors from this process's memory (re-read from the file when touched)."""
    return _advise(tensors, mmap.MADV_DONTNEED) if hasattr(mmap, "MADV_DONTNEED") else 0


def prefetch_pages(tensors: Iterable[Any]) -> int:
    """Ask the kernel to start reading these tensors' pages now (asynchronous read-ahead)."""
    return _advise(tensors, mmap.MADV_WILLNEED) if hasattr(mmap, "MADV_WILLNEED") else 0


def mapped_resident_bytes(path: str | os.PathLike[str]) -> int:
    """Resident bytes of this process's mappings of `path` (Linux /proc/self/smaps; 0 elsewhere)."""
    target = str(Path(path).resolve())
    total, inside = 0, False
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split()
                if not head:
                    continue
                if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                    inside = len(head) >= 6 and head[-1] == target
                elif inside and head[0] == "Rss:":
                    total += int(head[1]) * 1024
    except OSError:
        return 0
    return total
