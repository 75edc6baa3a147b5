"""Atomic writes: the file appears whole or not at all, an error leaves the old one and no temporary file."""

from __future__ import annotations

import os

import pytest

from engine.core.atomic_files import atomic_write, write_bytes_atomic, write_text_atomic


def test_write_replaces_the_file_in_one_step(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as stream:
        stream.write(b"new ")
        assert target.read_bytes() == b"old"  # readers see the old file until the end
        stream.write(b"bytes")
    assert target.read_bytes() == b"new bytes"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("{}")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as stream:
            stream.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_text() == "{}"
    assert os.listdir(tmp_path) == ["a.json"]


def test_an_error_before_any_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.png"):
            raise ValueError("cannot encode")
    assert os.listdir(tmp_path) == []


def test_bytes_and_text_helpers(tmp_path):
    assert write_bytes_atomic(tmp_path / "b", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_text_atomic(tmp_path / "t.json", "é\n").read_bytes() == "é\n".encode()


def test_permissions_follow_the_umask_like_a_plain_open(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic = write_bytes_atomic(tmp_path / "atomic", b"x")
    assert atomic.stat().st_mode == plain.stat().st_mode


def test_a_reader_holding_the_old_file_keeps_its_bytes(tmp_path):
    target = write_bytes_atomic(tmp_path / "model.safetensors", b"version one")
    with open(target, "rb") as reader:
        write_bytes_atomic(target, b"version two")
        assert reader.read() == b"version one"
    assert target.read_bytes() == b"version two"


def test_missing_folder_is_an_error_not_a_stray_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(tmp_path / "missing" / "a.bin", b"x")
    assert os.listdir(tmp_path) == []
