"""`--extra-model-paths-config FILE` (several allowed) on `fluxgraph run/validate` and `fluxgraph serve`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from engine import cli
from engine.server import add_serve_arguments, build_config, build_runtime
from tests.support.flux import zoo_base

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "flux_dev_txt2img.json"


@pytest.fixture
def split_zoo(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A base folder whose models/ holds only the VAE (found through BASE/extra_model_paths.yaml) and two YAML
    files elsewhere naming the diffusion model and the text encoder folders."""
    zoo = zoo_base() / "models"
    base = tmp_path / "base"
    (base / "models").mkdir(parents=True)
    shutil.copytree(zoo / "tokenizers", base / "models" / "tokenizers")
    (base / "extra_model_paths.yaml").write_text(f"own:\n  vae: {zoo / 'vae'}\n")
    unet_yaml = tmp_path / "conf" / "unet.yaml"
    unet_yaml.parent.mkdir()
    unet_yaml.write_text(f"shared:\n  base_path: {zoo}\n  diffusion_models: diffusion_models\n")
    clip_yaml = tmp_path / "clip.yaml"
    clip_yaml.write_text(f"other:\n  base_path: {zoo}\n  clip: text_encoders\n")
    return base, unet_yaml, clip_yaml


def test_validate_reads_every_extra_model_paths_config(split_zoo, capsys) -> None:
    base, unet_yaml, clip_yaml = split_zoo
    command = ["validate", str(WORKFLOW), "--base-dir", str(base), "--json"]
    assert cli.main(command) == cli.EXIT_INVALID  # without the flags: the models are not found
    missing = json.loads(capsys.readouterr().out)["node_errors"]
    assert {"10", "11"} <= set(missing) and "12" not in missing  # the VAE comes from BASE/extra_model_paths.yaml
    flags = ["--extra-model-paths-config", str(unet_yaml), "--extra-model-paths-config", str(clip_yaml)]
    assert cli.main(command + flags) == cli.EXIT_OK, capsys.readouterr()
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_a_missing_or_broken_config_is_a_usage_error(split_zoo, tmp_path, capsys) -> None:
    base, unet_yaml, _ = split_zoo
    for path, message in [(tmp_path / "nope.yaml", "nope.yaml: cannot read"), (unet_yaml, "invalid YAML")]:
        if path == unet_yaml:
            path.write_text("a: [unclosed\n")
        code = cli.main(["run", str(WORKFLOW), "--base-dir", str(base), "--extra-model-paths-config", str(path)])
        assert code == cli.EXIT_USAGE
        assert message in capsys.readouterr().err


def test_serve_takes_several_configs_as_comfyui_does(split_zoo, tmp_path) -> None:
    base, unet_yaml, clip_yaml = split_zoo
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--base-dir", str(base), "--extra-model-paths-config", str(unet_yaml), str(clip_yaml),
                              "--extra-model-paths-config", str(unet_yaml)])
    config = build_config(args)
    assert config.extra_model_paths == [str(unet_yaml), str(clip_yaml), str(unet_yaml)]
    runtime = build_runtime(args.base_dir, config.memory, config.extra_model_paths)
    folders = runtime.folders
    assert "flux1-dev-tiny.safetensors" in folders.list_models("diffusion_models")
    assert "clip_l-tiny.safetensors" in folders.list_models("text_encoders")
    assert "ae-tiny.safetensors" in folders.list_models("vae")
    assert build_config(parser.parse_args([])).extra_model_paths == []
    with pytest.raises(SystemExit, match="missing.yaml: cannot read"):
        build_runtime(str(base), None, [str(tmp_path / "missing.yaml")])
