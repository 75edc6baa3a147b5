import os

import pytest

from engine.core.folders import FolderPaths, UnsafePathError, contained_path, split_annotation


def test_contained_path_refuses_escapes(tmp_path):
    root = tmp_path / "input"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("x")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    for bad in ["../secret.txt", "/etc/passwd", "a/../../secret.txt", "link.txt", "x\x00y", "C:\\\\x"]:
        with pytest.raises(UnsafePathError):
            contained_path(root, bad)
    assert contained_path(root, "sub/a.png") == (root / "sub" / "a.png").resolve()


def test_resolve_file_with_annotation_and_subfolder(tmp_path):
    folders = FolderPaths(tmp_path)
    assert split_annotation("a.png [output]") == ("a.png", "output")
    assert folders.resolve_file("a.png [temp]") == (tmp_path / "temp" / "a.png").resolve()
    assert folders.resolve_file("a.png", "output", "sub") == (tmp_path / "output" / "sub" / "a.png").resolve()
    with pytest.raises(UnsafePathError):
        folders.resolve_file("a.png", "output", "../input")
    with pytest.raises(UnsafePathError):
        folders.resolve_file("a.png", "models")


def test_model_listing_and_priority_of_default_extra_paths(tmp_path):
    folders = FolderPaths(tmp_path)
    (tmp_path / "models" / "unet" / "sub").mkdir(parents=True)
    (tmp_path / "models" / "unet" / "sub" / "a.safetensors").write_bytes(b"1")
    (tmp_path / "models" / "diffusion_models").mkdir(parents=True)
    (tmp_path / "models" / "diffusion_models" / "b.sft").write_bytes(b"1")
    (tmp_path / "models" / "diffusion_models" / "notes.txt").write_text("x")
    assert folders.list_models("diffusion_models") == ["b.sft", "sub/a.safetensors"]
    assert folders.list_models("unet") == ["b.sft", "sub/a.safetensors"]
    shared = tmp_path / "shared_models"
    shared.mkdir()
    (shared / "b.sft").write_bytes(b"2")
    folders.add_model_dir("diffusion_models", shared)
    assert folders.model_path("diffusion_models", "b.sft") == tmp_path / "models" / "diffusion_models" / "b.sft"
    folders.add_model_dir("diffusion_models", shared, first=True)
    assert folders.model_path("diffusion_models", "b.sft") == shared / "b.sft"
    with pytest.raises(FileNotFoundError, match="not found in folder 'diffusion_models'"):
        folders.model_path("diffusion_models", "missing.safetensors")
    with pytest.raises(UnsafePathError):
        folders.model_path("diffusion_models", "../../etc/passwd")
