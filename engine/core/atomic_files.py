"""Write a file so that readers never see half of it: the bytes go to a temporary file in the same folder,
are flushed and fsynced, then `os.replace` puts it in place in one step. On an error the temporary file is
removed and the old file (if any) is left untouched.

The rename also means a reader that holds the old file open (a memory-mapped model, a streamed /view answer)
keeps reading the old bytes instead of seeing them change under it.

A process killed mid-write (kill -9, power loss) leaves its temporary `.<name>.<12 hex>.part` behind;
`remove_stale_parts` sweeps those (the server does at start-up, for input/, output/ and temp/).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

_TEMP_SUFFIX = ".part"
_TEMP_HEX_CHARS = 12  # secrets.token_hex(6)
TEMP_NAME = re.compile(rf"^\..+\.[0-9a-f]{{{_TEMP_HEX_CHARS}}}{re.escape(_TEMP_SUFFIX)}\Z", re.DOTALL)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file to write; on a clean exit it becomes `path` (whose folder must exist).

        with atomic_write(folder / "a.png") as stream:
            picture.save(stream, format="PNG")
    """
    path = Path(path)
    # A random name in the same folder (os.replace cannot cross file systems); mode 0o666 lets the umask give the
    # permissions a plain open() would (mkstemp's 0o600 would not).
    temp = path.with_name(f".{path.name}.{secrets.token_hex(_TEMP_HEX_CHARS // 2)}{_TEMP_SUFFIX}")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_write(path) as stream:
        stream.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))


def remove_stale_parts(roots: Iterable[str | os.PathLike[str]], min_age_s: float = 60.0) -> list[Path]:
    """Delete the temporary files `atomic_write` left behind under `roots` (recursively, symlinks not followed).

    Only regular files named like this module's temporary files and untouched for `min_age_s` seconds go, so a
    write still running in another process (its file's mtime moves with every block) keeps its file.
    """
    removed: list[Path] = []
    cutoff = time.time() - min_age_s
    for root in roots:
        for dirpath, _dirnames, filenames in os.walk(root):
            for filename in filenames:
                if not TEMP_NAME.match(filename):
                    continue
                path = Path(dirpath, filename)
                try:
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode) and info.st_mtime <= cutoff:
                        path.unlink()
                        removed.append(path)
                except OSError:  # gone meanwhile, or not ours to delete: leave it
                    continue
    return removed
