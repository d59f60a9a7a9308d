"""The command line: ``python -m cxrkit COMMAND ...`` (or ``cxrkit COMMAND``).

Each command is a thin wrapper over a library function, so a notebook, a script
and the shell all run the same code. Expected failures (any
:class:`cxrkit.errors.CxrkitError`: bad input files, a missing decoder, a malformed
submission; or a missing file) print one clear line and exit with status 2
instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cxrkit._atomic import write_csv_atomic
from cxrkit.annotations import fuse_boxes, load_annotations, load_meta
from cxrkit.errors import CxrkitError, OverwriteError
from cxrkit.metrics import vinbigdata_map
from cxrkit.preprocess import meta_from_dicoms, preprocess_dicoms
from cxrkit.sample import generate_sample
from cxrkit.submission import parse_submission, read_submission

# cxrkit.train (and through it torch) is imported inside the commands that train or
# predict: the other commands, and every bad-input message, stay free of torch.


def _cmd_sample(args: argparse.Namespace) -> int:
    out = generate_sample(
        args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, variant=args.variant
    )
    print(f"sample written to {out}")
    return 0


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file (also through a symlink, ``..`` or a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _cmd_fuse(args: argparse.Namespace) -> int:
    for role, given in (("annotation table", args.train_csv), ("meta table", args.meta)):
        if given is not None and _same_file(args.out_csv, given):
            raise OverwriteError(
                f"the output {args.out_csv} is the input {role} {given}: "
                "fusing would replace it; choose another output file"
            )

    meta = load_meta(args.meta) if args.meta else meta_from_dicoms(args.dicoms)
    # the path, not a loaded table: messages then name the file and its CSV lines
    fused = fuse_boxes(args.train_csv, meta, iou_thr=args.iou)
    write_csv_atomic(fused, args.out_csv)
    n_images = fused["image_id"].nunique()
    print(f"fused {args.train_csv} into {len(fused)} rows over {n_images} images -> {args.out_csv}")
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    report = preprocess_dicoms(
        args.src, args.out, size=args.size, workers=args.workers, keep_aspect=args.keep_aspect
    )
    print(report.summary())
    return 1 if report.failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from cxrkit.train import train_from_folder

    result = train_from_folder(
        data_dir=args.data_dir,
        annotations_csv=args.annotations_csv,
        out_dir=args.out,
        model_name=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        weights=args.weights,
        resume=args.resume,
        lr=args.lr,
        valid_fraction=args.valid_fraction,
        seed=args.seed,
        num_workers=args.workers,
        max_minutes=args.max_minutes,
        size=args.size,
        anchors=args.anchors,
    )
    print(result)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cxrkit.train import predict_to_submission

    path = predict_to_submission(
        checkpoint=args.checkpoint,
        data_dir=args.data_dir,
        out_csv=args.out,
        split=args.split,
        tta=args.tta,
        batch_size=args.batch_size,
    )
    print(f"submission written to {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    submission = read_submission(args.submission_csv)
    truth = load_annotations(args.truth_csv)
    result = vinbigdata_map(parse_submission(submission), truth, iou_thr=args.iou)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.to_frame().to_string())
        print(f"mAP@{args.iou:g}: {result.map:.4f}")
    return 0


def _size_or_auto(text: str) -> int | str:
    """``--size``: a number of pixels, or "auto" (chosen from the training boxes)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels or auto, got {text!r}"
        ) from None


def _add_fitting_options(sample: argparse.ArgumentParser, train: argparse.ArgumentParser) -> None:
    """Issue 13's options in one place: the sample variant, fitted anchors, ``--size auto``."""
    sample.add_argument(
        "--variant",
        choices=("default", "small_thin"),
        default="default",
        help="small_thin: small nodules and thin pleural bands (other box statistics)",
    )
    train.add_argument(
        "--anchors",
        choices=("stock", "auto"),
        default="stock",
        help="cxr_small anchors: stock, or auto = fitted to the training boxes "
        "(then --size defaults to auto)",
    )
    size = next(a for a in train._actions if "--size" in a.option_strings)
    size.type = _size_or_auto  # --size also takes "auto": chosen from the boxes, printed
    size.help = f"{size.help or 'training image size'}; auto: chosen from the training boxes"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed so tests and docs can inspect it."""
    parser = argparse.ArgumentParser(prog="python -m cxrkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="write a small synthetic dataset in the VinBigData layout")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=50)
    p.set_defaults(func=_cmd_sample)
    sample_parser = p

    p = sub.add_parser("fuse", help="fuse the radiologists' boxes with weighted boxes fusion")
    p.add_argument("train_csv", type=Path)
    p.add_argument("out_csv", type=Path)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--meta", type=Path, help="CSV with image_id,dim0,dim1 (rows, columns)")
    source.add_argument("--dicoms", type=Path, help="folder of .dicom files to read sizes from")
    p.add_argument("--iou", type=float, default=0.4)
    p.set_defaults(func=_cmd_fuse)

    p = sub.add_parser("preprocess", help="convert DICOMs to resized 8-bit PNGs + meta tables")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=512)
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    p.add_argument(
        "--keep-aspect", action="store_true", help="longest side = size instead of square"
    )
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("train", help="train a Faster R-CNN on a preprocessed folder")
    p.add_argument("data_dir", type=Path)
    p.add_argument("annotations_csv", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="cxr_small")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--weights", default=None, help='"DEFAULT" (COCO), a local .pth file, or none')
    p.add_argument("--resume", action="store_true")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--valid-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
    p.add_argument(
        "--size", type=int, default=None, help="training image size (default: per model)"
    )
    p.set_defaults(func=_cmd_train)
    _add_fitting_options(sample_parser, p)

    p = sub.add_parser("predict", help="predict a split and write a submission CSV")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--tta", action="store_true", help="average with a horizontal flip")
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="score a submission with the competition metric")
    p.add_argument("submission_csv", type=Path)
    p.add_argument("truth_csv", type=Path, help="truth in train.csv columns (e.g. test_labels.csv)")
    p.add_argument("--iou", type=float, default=0.4)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CxrkitError, FileNotFoundError) as exc:  # bad input, not a bug: one line
        print(f"cxrkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
