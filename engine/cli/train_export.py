"""`fluxgraph train segmenter` and `fluxgraph export segmenter`: the training routine and the exporter of the
TrainSegmenter / ExportSegmenter nodes, from a shell.

    fluxgraph train segmenter --data DIR [--base NAME] [--epochs N] [--output NAME] [--resume] ...
    fluxgraph export segmenter NAME --format onnx|torchscript|pt2 [--dtype fp32|fp16|int8] [--size HxW ...]

Training shows a tqdm bar over optimizer steps (loss, learning rate) and prints a summary line per epoch
(loss, val mIoU, best); the first Ctrl-C saves last/ at the current step and stops (resume with --resume),
a second stops at once. Nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from engine.cli.train_lora import add_train_lora_command
from engine.cli.errors import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, CliError
from engine.cli.stop_request import StopRequest
from engine.core.folders import FolderPaths, contained_path
from engine.models.segmentation.export import ExportError, ExportRequest, export_segmenter, parse_sizes
from engine.models.segmentation.exported import ExportedModelError
from engine.models.segmentation.mask2former import SegmenterLoadError, list_segmenters, load_segmenter
from engine.training.segmentation.checkpoint import STATE_FILE, CheckpointError
from engine.training.segmentation.config import TrainConfig, TrainConfigError

TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 8, "learning_rate": 1e-4}


def add_train_export_commands(commands: Any) -> None:
    """Register `train` and `export` on the main parser's subcommands."""
    train = commands.add_parser("train", help="fine-tune a model on a dataset (train segmenter|lora --help)")
    train_kinds = train.add_subparsers(dest="kind", metavar="KIND", required=True)
    _add_train_segmenter(train_kinds.add_parser("segmenter", help="fine-tune a Mask2Former segmenter"))
    add_train_lora_command(train_kinds)
    export = commands.add_parser("export", help="export a model for deployment (export segmenter --help)")
    export_kinds = export.add_subparsers(dest="kind", metavar="KIND", required=True)
    _add_export_segmenter(export_kinds.add_parser("segmenter", help="export a Mask2Former to ONNX / TorchScript / "
                                                                    "pt2"))


def _add_folder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-dir", help="folder holding models/ (default: current)")
    parser.add_argument("--models-dir", help="models folder (default: BASE/models)")


def _add_train_segmenter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder: images/{train,val}, annotations/{train,val}"
                                                      " (PNG label maps, 255 ignored), optional classes.json")
    parser.add_argument("--base", help="base segmenter under models/segmentation/ (or a path); default: the only "
                                       "one installed")
    parser.add_argument("--output", help="run folder under models/segmentation/ (default: DATA's name + "
                                         "'-finetuned'); best/ and last/ are written there")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last/")
    parser.add_argument("--epochs", type=int, default=TRAIN_DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    parser.add_argument("--grad-accumulation", type=int, default=1, help="batches per optimizer step")
    parser.add_argument("--lr", type=float, default=TRAIN_DEFAULTS["learning_rate"], help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--backbone-lr-multiplier", type=float, default=0.1)
    parser.add_argument("--schedule", choices=["poly", "cosine"], default="poly")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--max-grad-norm", type=float, default=0.01, help="gradient clipping (0: off)")
    parser.add_argument("--freeze-backbone", action="store_true")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    parser.add_argument("--crop-size", type=int, default=0, help="square crop (0: the base model's short side)")
    parser.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument("--reduce-labels", action="store_true",
                        help="ADE20K's raw label files: 0 = unlabelled, 1..N = classes")
    parser.add_argument("--num-points", type=int, default=0, help="loss points per mask (0: the base config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=0, help="also save last/ every N steps")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps")
    parser.add_argument("--evaluate-first", action="store_true", help="measure val mIoU before training too")
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    _add_folder_arguments(parser)
    parser.set_defaults(handler=cmd_train_segmenter)


def _add_export_segmenter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="segmenter under models/segmentation/ (folder or .safetensors; or a path)")
    parser.add_argument("--format", choices=["onnx", "torchscript", "pt2"], required=True)
    parser.add_argument("--dtype", choices=["fp32", "fp16", "int8"], nargs="+", default=["fp32"],
                        help="one file per dtype (ONNX exports the graph once for all); int8: ONNX Runtime dynamic "
                             "quantization (onnx only)")
    parser.add_argument("--size", nargs="+", default=None, metavar="HxW",
                        help="input sizes, one file each (default: the model's short side, square)")
    parser.add_argument("--output", help="file name stem (default: NAME with '/' as '-'); files go to "
                                         "models/segmentation/ unless --output-dir")
    parser.add_argument("--output-dir", help="folder for the files (default: models/segmentation/)")
    parser.add_argument("--onnx-exporter", choices=["torchscript", "dynamo"], default="torchscript")
    parser.add_argument("--device", default="", help="torch formats: device to trace on (default: CUDA if any)")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with the PyTorch model")
    _add_folder_arguments(parser)
    parser.set_defaults(handler=cmd_export_segmenter)


def _folders(args: argparse.Namespace) -> Any:
    return FolderPaths(Path(args.base_dir or Path.cwd()), models_dir=args.models_dir)


def _segmenter_path(folders: Any, name: str | None) -> Path:
    if name and Path(name).exists():
        return Path(name)
    available = list_segmenters(folders)
    if not name:
        if len(available) == 1:
            return folders.model_path("segmentation", available[0])
        raise CliError("--base is required when models/segmentation/ holds "
                       f"{'no segmenter' if not available else 'several: ' + ', '.join(available)}")
    try:
        return folders.model_path("segmentation", name)
    except FileNotFoundError as exc:
        raise CliError(f"{exc}; available: {', '.join(available) or 'none'}") from exc


def _known_errors() -> tuple[type[BaseException], ...]:
    return SegmenterLoadError, ExportError, ExportedModelError, CheckpointError, TrainConfigError


# ----- train

def _epoch_line(summary: dict[str, Any]) -> str:
    loss = "-" if summary["train_loss"] is None else f"{summary['train_loss']:.4f}"
    best = "-" if summary.get("best_miou") is None else f"{summary['best_miou']:.4f}"
    return (f"epoch {summary['epoch']}/{summary['epochs']}: loss {loss}, val mIoU {summary['val_miou']:.4f} "
            f"(best {best}), pixel accuracy {summary['val_pixel_accuracy']:.4f}, step {summary['step']}, "
            f"{summary['seconds']:.1f} s")


def cmd_train_segmenter(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.training.segmentation.dataset import DatasetError  # noqa: PLC0415 - dataset loads numpy on first use
    from engine.training.segmentation.trainer import TrainEvents, train  # noqa: PLC0415 - trainer loads torch on first use

    folders = _folders(args)
    data = Path(args.data)
    output = args.output or f"{data.resolve().name}-finetuned"
    run_dir = contained_path(folders.models_dir / "segmentation", output)
    if not args.resume and (run_dir / "last" / STATE_FILE).is_file():
        raise CliError(f"{run_dir} already holds a training run; add --resume to continue it or choose another "
                       "--output")
    base = "" if args.resume else str(_segmenter_path(folders, args.base))
    config = TrainConfig(
        data_dir=str(data), output_dir=str(run_dir), base_model=base, epochs=args.epochs, batch_size=args.batch_size,
        grad_accumulation=args.grad_accumulation, learning_rate=args.lr, weight_decay=args.weight_decay,
        backbone_lr_multiplier=args.backbone_lr_multiplier, schedule=args.schedule, warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm, freeze_backbone=args.freeze_backbone, precision=args.precision,
        crop_size=args.crop_size, scale_min=args.scale_range[0], scale_max=args.scale_range[1],
        flip=not args.no_flip, reduce_labels=args.reduce_labels, num_points=args.num_points, seed=args.seed,
        save_every=args.save_every, max_steps=args.max_steps, evaluate_first=args.evaluate_first,
        device=args.device, resume=str(run_dir) if args.resume else "")
    stop = StopRequest()
    bar: Any = None

    def on_start(info: dict[str, Any]) -> None:
        nonlocal bar
        print(f"training on {info['train_images']} images ({info['val_images']} val), {len(info['classes'])} "
              f"classes{' (new class head)' if info['head_replaced'] else ''}, {info['steps']} steps on "
              f"{info['device']}", file=sys.stderr)
        bar = tqdm(total=info["steps"], initial=info["start_step"], unit="step", file=sys.stderr,
                   dynamic_ncols=True)

    def on_step(report: Any) -> None:
        bar.update(report.step - bar.n)
        bar.set_postfix(epoch=f"{report.epoch}/{report.epochs}", loss=f"{report.loss:.4f}",
                        lr=f"{report.learning_rate:.2e}")
        stop.check()

    def on_epoch(summary: dict[str, Any]) -> None:
        if bar is not None:
            bar.write(_epoch_line(summary), file=sys.stderr)  # above the bar, which stays at the bottom
        else:
            print(_epoch_line(summary), file=sys.stderr)

    stop.install()
    try:
        result = train(config, TrainEvents(on_start=on_start, on_step=on_step, on_epoch=on_epoch,
                                           check_interrupt=stop.check))
    except DatasetError as exc:
        raise CliError(str(exc), EXIT_INVALID) from exc
    except _known_errors() as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(f"interrupted; last/ holds the last finished step. Continue with: fluxgraph train segmenter "
              f"--data {args.data} --output {output} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        stop.restore()
    if bar is not None:
        bar.close()
    best = result.best_dir if (result.best_dir / "config.json").is_file() else result.last_dir
    print(f"best val mIoU {result.best_miou:.4f}: {best} (load it as "
          f"{best.relative_to(folders.models_dir / 'segmentation').as_posix()})")
    return EXIT_OK


# ----- export

def cmd_export_segmenter(args: argparse.Namespace) -> int:
    folders = _folders(args)
    try:
        source = _segmenter_path(folders, args.name)
        segmenter = load_segmenter(source)
        short = segmenter.preprocessing.shortest_edge
        sizes = parse_sizes(args.size) if args.size else ((short, short),)
        request = ExportRequest(format=args.format, dtypes=tuple(dict.fromkeys(args.dtype)), sizes=sizes,
                                exporter=args.onnx_exporter,
                                device=args.device, verify=not args.no_verify).check(
                                    segmenter.preprocessing.size_divisor)
        stem = args.output or (source.stem if Path(args.name).is_absolute()
                               else args.name.strip("/").replace("/", "-").removesuffix(source.suffix))
        out_dir = Path(args.output_dir) if args.output_dir else folders.models_dir / "segmentation"
        for size in request.sizes:
            print(f"exporting {size[0]}x{size[1]} ({args.format} {' '.join(request.dtypes)}) ...", file=sys.stderr,
                  flush=True)
            for record in export_segmenter(segmenter, out_dir, stem, dataclasses.replace(request, sizes=(size,))):
                check = "" if record.max_relative_error is None else (
                    f" (logits within {record.max_relative_error:.2e} of PyTorch, labels "
                    f"{100 * record.label_agreement:.2f}% equal)")
                print(f"saved: {record.path}{check}")
    except _known_errors() as exc:
        raise CliError(str(exc)) from exc
    return EXIT_OK
