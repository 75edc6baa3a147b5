"""Write a file so that readers never see half of it: the bytes go to a temporary file in the same folder,
are flushed and fsynced, then `os.replace` puts it in place in one step. On an error the temporary file is
removed and the old file (if any) is left untouched.

The rename also means a reader that holds the old file open (a memory-mapped model, a streamed /view answer)
keeps reading the old bytes instead of seeing them change under it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator

_TEMP_SUFFIX = ".part"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file to write; on a clean exit it becomes `path` (whose folder must exist).

        with atomic_write(folder / "a.png") as stream:
            picture.save(stream, format="PNG")
    """
    path = Path(path)
    # A random name in the same folder (os.replace cannot cross file systems); mode 0o666 lets the umask give the
    # permissions a plain open() would (mkstemp's 0o600 would not).
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
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
