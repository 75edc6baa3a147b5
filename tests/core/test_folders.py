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


def test_links_placed_in_a_models_folder_are_followed_but_request_names_cannot_climb(tmp_path):
    folders = FolderPaths(tmp_path / "base")
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "flux.safetensors").write_bytes(b"1")
    (shared / "sub" / "t5.safetensors").write_bytes(b"2")
    hub = tmp_path / "hub" / "models--org--name"
    (hub / "blobs").mkdir(parents=True)
    (hub / "blobs" / "9f8e7d").write_bytes(b"3")
    (hub / "snapshots" / "abc123").mkdir(parents=True)
    os.symlink("../../blobs/9f8e7d", hub / "snapshots" / "abc123" / "ae.safetensors")
    unet = folders.models_dir / "diffusion_models"
    unet.mkdir(parents=True)
    os.symlink(shared / "flux.safetensors", unet / "flux.safetensors")
    os.symlink(shared / "sub", unet / "linked")  # a linked folder
    os.symlink(hub / "snapshots" / "abc123" / "ae.safetensors", unet / "ae.safetensors")
    os.symlink(tmp_path / "nowhere.safetensors", unet / "dangling.safetensors")
    os.symlink(unet, unet / "loop")  # a link back up: listed once, the walk ends

    assert folders.list_models("diffusion_models") == ["ae.safetensors", "flux.safetensors",
                                                       "linked/t5.safetensors"]
    for name in folders.list_models("diffusion_models"):  # what is listed is what loads
        assert folders.model_path("diffusion_models", name).read_bytes() in (b"1", b"2", b"3")
    # the path keeps the name it was listed under (not the blob's), so name-based hints still read it
    assert folders.model_path("diffusion_models", "ae.safetensors") == unet / "ae.safetensors"
    for bad in ["../../shared/flux.safetensors", str(shared / "flux.safetensors"), "linked/../../x",
                "a\x00b", "C:\\flux.safetensors", "\\\\server\\flux.safetensors"]:
        with pytest.raises(UnsafePathError):
            folders.model_path("diffusion_models", bad)
    with pytest.raises(FileNotFoundError):
        folders.model_path("diffusion_models", "dangling.safetensors")


def test_input_output_and_temp_still_refuse_links_that_leave_them(tmp_path):
    folders = FolderPaths(tmp_path / "base")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.png").write_bytes(b"x")
    for file_type in ("input", "output", "temp"):
        root = folders.directory(file_type)
        root.mkdir(parents=True)
        os.symlink(secret / "key.png", root / "key.png")
        os.symlink(secret, root / "sub")
        with pytest.raises(UnsafePathError, match="escapes its folder"):
            folders.resolve_file("key.png", file_type)
        with pytest.raises(UnsafePathError, match="escapes its folder"):
            folders.resolve_file("key.png", file_type, "sub")
        with pytest.raises(UnsafePathError):
            folders.resolve_file("../secret/key.png", file_type)
