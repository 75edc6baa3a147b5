"""`fluxgraph train segmenter` and `fluxgraph export segmenter`: bar and epoch lines, exit statuses, Ctrl-C then
--resume, refusals with their reasons."""

from __future__ import annotations

import pytest

from engine.cli import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, main, train_export
from engine.training.segmentation.synthetic import write_synthetic_dataset
from tests.support.segmentation import single_thread, workspace

TRAIN = ["train", "segmenter", "--base", "tiny-mask2former-swin-ade", "--epochs", "2", "--batch-size", "2",
         "--crop-size", "64", "--num-points", "256"]


def run(*argv: str) -> int:
    with single_thread():
        return main([*argv, "--base-dir", str(workspace())])


def test_train_prints_a_bar_and_a_line_per_epoch_then_where_the_model_is(capsys):
    code = run(*TRAIN, "--data", str(workspace() / "input" / "small"), "--output", "cli-run")
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    assert "training on 4 images (2 val), 4 classes (new class head), 4 steps on cpu" in err
    assert "epoch 1/2: loss " in err and "epoch 2/2: loss " in err and "val mIoU" in err
    assert "step/s" in err or "s/step" in err  # the tqdm bar
    assert "(load it as cli-run/best)" in out or "(load it as cli-run/last)" in out


def test_ctrl_c_saves_the_step_and_resume_finishes_the_run(capsys, monkeypatch):
    calls = {"count": 0}

    def second_step_interrupts(self) -> None:
        calls["count"] += 1
        if calls["count"] == 2:  # Ctrl-C while the first epoch is evaluated (step 1 was the first check)
            raise KeyboardInterrupt

    monkeypatch.setattr(train_export.StopRequest, "check", second_step_interrupts)
    data = str(workspace() / "input" / "small")
    assert run(*TRAIN, "--data", data, "--output", "cli-paused") == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted; last/ holds the last finished step" in err and "--output cli-paused --resume" in err
    monkeypatch.undo()
    assert run(*TRAIN, "--data", data, "--output", "cli-paused") == EXIT_USAGE
    assert "already holds a training run; add --resume" in capsys.readouterr().err
    assert run(*TRAIN, "--data", data, "--output", "cli-paused", "--resume") == EXIT_OK
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "steps on cpu" in err


def test_a_broken_dataset_exits_3_listing_its_problems(tmp_path, capsys):
    data = write_synthetic_dataset(tmp_path / "broken", train=2, val=1, size=32)
    (data / "annotations" / "val" / "val_0000.png").unlink()
    assert run(*TRAIN, "--data", str(data), "--output", "never") == EXIT_INVALID
    err = capsys.readouterr().err
    assert "images/val/val_0000.jpg has no annotation annotations/val/val_0000.png" in err
    assert not (workspace() / "models" / "segmentation" / "never" / "last").exists()


def test_bad_training_settings_and_unknown_base_exit_2(capsys):
    data = str(workspace() / "input" / "small")
    assert run(*TRAIN, "--data", data, "--output", "x", "--crop-size", "100") == EXIT_USAGE
    assert "crop_size must be a multiple of 32" in capsys.readouterr().err
    assert run("train", "segmenter", "--data", data, "--base", "nope") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "model 'nope' not found" in err and "available: " in err and "tiny-mask2former-swin-ade" in err


def test_export_writes_a_verified_file_per_size(capsys):
    code = run("export", "segmenter", "tiny-mask2former-swin-ade", "--format", "torchscript", "--size", "96x96",
               "--output", "cli-export")
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    assert "cli-export-96x96-fp32.pt (logits within" in out and "labels 100.00% equal" in out
    assert (workspace() / "models" / "segmentation" / "cli-export-96x96-fp32.pt").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--format", "pt2", "--dtype", "int8"], "int8 is made by ONNX Runtime dynamic quantization: use format onnx"),
    (["--format", "onnx", "--size", "100x96"], "size 100x96: height and width must be positive multiples of 32"),
    (["--format", "onnx", "--size", "big"], "size 'big' is not HEIGHTxWIDTH"),
])
def test_export_refusals_exit_2_with_the_reason(argv, message, capsys):
    assert run("export", "segmenter", "tiny-mask2former-swin-ade", *argv) == EXIT_USAGE
    assert message in capsys.readouterr().err
