"""engine/core/file_digest.py: content hashes and folder fingerprints."""

from __future__ import annotations

import hashlib
import os

from engine.core.file_digest import CHUNK, file_sha256, folder_fingerprint


def test_file_sha256_reads_in_blocks_and_equals_hashlib(tmp_path):
    path = tmp_path / "big.bin"
    data = os.urandom(CHUNK * 2 + 123)  # crosses block boundaries
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_folder_fingerprint_follows_names_sizes_and_times_not_unrelated_folders(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.png").write_bytes(b"a")
    (data / "sub" / "a.txt").write_text("caption")
    first = folder_fingerprint(data)
    assert folder_fingerprint(data) == first
    (data / "b.png").write_bytes(b"b")
    added = folder_fingerprint(data)
    assert added != first
    (data / "sub" / "a.txt").write_text("a longer caption")
    assert folder_fingerprint(data) != added
    assert folder_fingerprint(tmp_path / "gone") == f"missing:{tmp_path / 'gone'}"
