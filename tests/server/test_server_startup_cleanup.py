"""A save interrupted by kill -9 leaves `atomic_write`'s temporary file behind: the server removes such files
from input/, output/ and temp/ at start-up, and nothing else (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.server.app import STALE_PARTS_SWEEP, create_app
from tests.support.server import make_config, make_runtime

pytestmark = pytest.mark.asyncio
REPO = Path(__file__).resolve().parents[2]
LONG_AGO = 1_000_000_000  # 2001: a temporary file nobody has written to for years


def _interrupted_save(folder: Path, name: str) -> Path:
    """A process killed with SIGKILL in the middle of `atomic_write`: its temporary file stays behind."""
    script = ("import os, sys\nfrom engine.core.atomic_files import atomic_write\n"
              "with atomic_write(sys.argv[1]) as stream:\n"
              "    stream.write(b'half a png'); stream.flush(); os.kill(os.getpid(), 9)\n")
    result = subprocess.run([sys.executable, "-c", script, str(folder / name)], cwd=REPO)
    assert result.returncode == -9
    (left,) = [path for path in folder.iterdir() if path.name.startswith(f".{name}.")]
    os.utime(left, (LONG_AGO, LONG_AGO))
    return left


async def test_stale_parts_are_removed_at_start_up(aiohttp_client, tmp_path):
    for sub in ("input", "output/nested/deeper", "temp"):
        (tmp_path / sub).mkdir(parents=True)
    stale = [_interrupted_save(tmp_path / "output", "ComfyUI_00001_.png"),
             _interrupted_save(tmp_path / "output/nested/deeper", "a.png"),
             _interrupted_save(tmp_path / "input", "up.png"), _interrupted_save(tmp_path / "temp", "t.png")]
    kept = [tmp_path / "output" / ".notes.png.part", tmp_path / "output" / "x.png.0123456789ab.part",
            tmp_path / "output" / ".x.png.0123456789AB.part", tmp_path / "output" / "ComfyUI_00002_.png",
            tmp_path / "models" / ".m.safetensors.0123456789ab.part", tmp_path / ".b.png.0123456789ab.part"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not ours")
        os.utime(path, (LONG_AGO, LONG_AGO))
    fresh = tmp_path / "output" / ".being_written.png.0123456789ab.part"  # another process is writing it now
    fresh.write_bytes(b"in progress")
    outside = tmp_path / "elsewhere" / ".linked.png.0123456789ab.part"
    outside.parent.mkdir()
    outside.write_bytes(b"outside")
    os.utime(outside, (LONG_AGO, LONG_AGO))
    os.symlink(outside, tmp_path / "output" / outside.name)
    os.symlink(outside.parent, tmp_path / "output" / "linked_dir")
    assert all(path.is_file() for path in stale)

    client = await aiohttp_client(create_app(make_runtime(tmp_path), make_config(tmp_path)))
    await client.app[STALE_PARTS_SWEEP]["future"]  # it runs beside serving

    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == b"not ours" for path in kept)
    assert fresh.is_file() and outside.is_file() and (tmp_path / "output" / outside.name).is_symlink()
    assert (await client.get("/queue")).status == 200
