"""The command line: python -m cxrkit COMMAND ... (or cxrkit COMMAND).

Each command is a thin wrapper over a library function, so a notebook, a script
and the shell all run the same code. Arguments are checked before any work
starts. Expected failures (any :class:`cxrkit.errors.CxrkitError`: bad input
files, a missing decoder, a malformed submission; a missing file; a full disk or
a read-only folder) print one clear line and exit with status 2 instead of a
traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from cxrkit import doctor
from cxrkit.config import (
    PREDICT_NMS_IOU,
    ClassifierConfig,
    TrainConfig,
    add_config_options,
    class_id_list,
    iou_threshold,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    resolve_classifier,
    resolve_with_reasons,
    typed_settings,
)
from cxrkit.errors import CxrkitError, OverwriteError
from cxrkit.profiles import PROFILE_NAMES, choose_profile

# Only light modules load here (the standard library underneath). Each command
# imports what it needs: the DICOM code (pydicom, OpenCV), pandas and torch load only
# for the commands that use them, so the help, every bad-input message and the
# doctor (which must run where pydicom or torch is broken) need none of them.

# The classifier's bands (cxrkit.postprocess.apply_classifier) when --classifier is given.
BAND_DEFAULTS = {"low": 0.1, "high": 0.9}

DESCRIPTION = "Chest X-ray abnormality detection (VinBigData): data, training, submissions."


def _cmd_sample(args: argparse.Namespace) -> int:
    from cxrkit.paths import write_sample

    out = write_sample(
        args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
        variant=args.variant, findings=args.findings,
    )  # fmt: skip
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
    from cxrkit._atomic import check_writable, write_csv_atomic
    from cxrkit.annotations import fuse_boxes, load_meta
    from cxrkit.preprocess import meta_from_dicoms

    for role, given in (("annotation table", args.train_csv), ("meta table", args.meta)):
        if given is not None and _same_file(args.out_csv, given):
            raise OverwriteError(
                f"the output {args.out_csv} is the input {role} {given}: "
                "fusing would replace it; choose another output file"
            )
    check_writable(args.out_csv)  # before the DICOM headers are read
    meta = load_meta(args.meta) if args.meta else meta_from_dicoms(args.dicoms)
    # the path, not a loaded table: messages then name the file and its CSV lines
    fused = fuse_boxes(args.train_csv, meta, iou_thr=args.iou)
    write_csv_atomic(fused, args.out_csv)
    n_images = fused["image_id"].nunique()
    n_rows = fused.attrs["source_rows"]
    print(f"fused {n_rows} rows into {len(fused)} rows over {n_images} images -> {args.out_csv}")
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from cxrkit.preprocess import preprocess_dicoms

    report = preprocess_dicoms(
        args.src, args.out, size=args.size, workers=args.workers, keep_aspect=args.keep_aspect
    )
    print(report.summary())
    return 1 if report.failed else 0


def _cmd_train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    resolve_with_reasons(config)  # settings that cannot go together: refused before torch loads
    from cxrkit.train import train_from_folder

    result = train_from_folder(
        data_dir=args.data_dir,
        annotations_csv=args.annotations_csv,
        out_dir=args.out,
        config=config,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    print(result)
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    config = resolve_classifier(ClassifierConfig(**typed_settings(args, ClassifierConfig)))
    from cxrkit.classifier import train_classifier  # after the settings are checked

    result = train_classifier(
        data_dir=args.data_dir,
        annotations_csv=args.annotations_csv,
        out_dir=args.out,
        config=config,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    print(result)
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from cxrkit._atomic import check_writable
    from cxrkit.classifier import classify

    check_writable(args.out)  # before any image is classified
    table = classify(
        args.checkpoints, args.data_dir, args.out, split=args.split, batch_size=args.batch_size
    )
    print(f"p_abnormal of {len(table)} images written to {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cxrkit.predict import predict_ensemble

    path = predict_ensemble(
        args.checkpoints,
        args.data_dir,
        args.out,
        split=args.split,
        tta=args.tta,
        batch_size=args.batch_size,
        classifiers=args.classifier or (),
        low=BAND_DEFAULTS["low"] if args.low is None else args.low,
        high=BAND_DEFAULTS["high"] if args.high is None else args.high,
        mode=args.mode or "bands",
        iou_thr=0.55 if args.wbf_iou is None else args.wbf_iou,
        skip_box_thr=args.wbf_skip or 0.0,
        weights=args.wbf_weights,
        nms_iou=PREDICT_NMS_IOU if args.nms is None else args.nms,
        fusion=args.fusion,
    )
    print(f"submission written to {path}")
    return 0


def _cmd_tune_fusion(args: argparse.Namespace) -> int:
    from cxrkit.predict import tune_fusion_from_runs

    models = [[Path(part) for part in str(run).split(",") if part] for run in args.runs]
    choice = tune_fusion_from_runs(models, args.out, n_boot=args.n_boot)
    print(choice)
    best = choice.best_single
    if choice.map <= choice.single_maps[best]:
        print(
            f"NO GAIN: out of fold no fusion scored above {best} alone "
            f"({choice.single_maps[best]:.4f}); predict with {best} alone, or train the "
            "weaker model longer"
        )
    checkpoints = " ".join(f"{runs[0]}/best.pt" for runs in models)
    print(f"fusion settings written to {args.out}; use them with:")
    print(f"  python -m cxrkit predict {checkpoints} DATA --out SUB.csv --fusion {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cxrkit.annotations import check_boxes_inside, load_annotations, load_meta
    from cxrkit.metrics import vinbigdata_map
    from cxrkit.submission import parse_submission, validate_submission

    truth = load_annotations(args.truth_csv)
    meta = None
    if args.meta is not None:
        meta = load_meta(args.meta)
        check_boxes_inside(args.truth_csv, meta)
    # a row for every truth image and no other; with a meta table, boxes inside their image
    submission = validate_submission(
        args.submission_csv, image_ids=truth["image_id"].unique(), meta=meta
    )
    result = vinbigdata_map(parse_submission(submission), truth, iou_thr=args.iou)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.to_frame().to_string())
        print(f"mAP@{args.iou:g}: {result.map:.4f}")
    return 0


# --------------------------------------------------------------- argument checks
# Each is an argparse ``type=``: a bad value is refused in one line before any work.


def _check_predict_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--low <= --high and one --wbf-weights per checkpoint, before any work."""
    if getattr(args, "command", None) != "predict":
        return
    low = BAND_DEFAULTS["low"] if args.low is None else args.low
    high = BAND_DEFAULTS["high"] if args.high is None else args.high
    if low > high:
        parser.error(f"--low {low:g} is above --high {high:g}; need low <= high")
    typed = [f"--{name}" for name in ("low", "high", "mode") if getattr(args, name) is not None]
    if typed and not args.classifier:
        parser.error(f"{' and '.join(typed)} apply the classifier: give --classifier too")
    fusion_typed = [
        f"--{name.replace('_', '-')}"
        for name in ("wbf_weights", "wbf_iou", "wbf_skip", "nms")
        if getattr(args, name) is not None
    ]
    if args.fusion is not None and fusion_typed:
        parser.error(
            f"--fusion sets the WBF weights, IoU, skip and NMS it was tuned with; "
            f"leave out {' and '.join(fusion_typed)}"
        )
    if args.wbf_weights is not None and len(args.wbf_weights) != len(args.checkpoints):
        parser.error(
            f"--wbf-weights gives {len(args.wbf_weights)} weight(s) for "
            f"{len(args.checkpoints)} checkpoint(s); give one per checkpoint"
        )


def _check_fold_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--folds and --fold together, and F < K: refused in one line before any work."""
    if getattr(args, "folds", None) is None and getattr(args, "fold", None) is None:
        return
    folds, fold = getattr(args, "folds", None), getattr(args, "fold", None)
    if folds is None or fold is None:
        parser.error("--folds K and --fold F go together")
    if fold >= folds:
        parser.error(f"argument --fold: must be one of 0..{folds - 1}, got {fold}")


def output_folder(text: str) -> Path:
    """A folder to write into: it may not exist yet, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    return path


def output_file(text: str) -> Path:
    """A file to write: it must not be an existing folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give the path of a file")
    return path


# ------------------------------------------------------------------ the parser
PROG = "python -m cxrkit"


def help_with_default(help_text: str | None, default: Any) -> str | None:
    """An option's help ending with its default, unless it states it already or has none."""
    if help_text is None or "(default" in help_text:
        return help_text
    if default is None or default is argparse.SUPPRESS:
        return help_text
    shown = "off" if default is False else str(default).replace("%", "%%")
    return f"{help_text} (default: {shown})"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``cxrkit COMMAND: error: ...``, exit status 2) and
    every option's default at the end of its help (added when the option is added)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        name = f"cxrkit {command}" if command else "cxrkit"
        self.exit(2, f"{name}: error: {message} (see {self.prog} --help)\n")

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        optional = bool(names) and names[0].startswith("-")
        if optional and not kwargs.get("required"):
            default = kwargs.get("default", False if kwargs.get("action") == "store_true" else None)
            kwargs["help"] = help_with_default(kwargs.get("help"), default)
        return super().add_argument(*names, **kwargs)


EPILOG = """\
examples:
  python -m cxrkit sample data/sample
  python -m cxrkit preprocess data/sample data/png --size 256
  python -m cxrkit train data/png data/sample/train.csv --out runs/a --epochs 10
  python -m cxrkit predict runs/a/best.pt data/png --out submission.csv
  python -m cxrkit evaluate submission.csv data/sample/test_labels.csv

Run "python -m cxrkit COMMAND --help" for the options of a command."""


def _add_sample_command(p: argparse.ArgumentParser) -> None:
    """``sample``: write a small synthetic dataset in the VinBigData layout."""
    p.add_argument("out", type=Path, help="folder to write (empty, or an earlier sample)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same files")
    p.add_argument(
        "--n-train", type=non_negative_int, default=200, help="number of training DICOMs"
    )
    p.add_argument("--n-test", type=non_negative_int, default=50, help="number of test DICOMs")
    p.set_defaults(func=_cmd_sample)
    p.add_argument(
        "--variant",
        choices=("default", "small_thin"),
        default="default",
        help="small_thin: small nodules and thin pleural bands (other box statistics)",
    )
    p.add_argument(
        "--findings",
        type=class_id_list,
        default=None,
        metavar="IDS",
        help="draw only these findings, class ids 0-13 separated by commas, e.g. 0,3,7,8,10,11 "
        "(default: all 14)",
    )


def _add_fuse_command(p: argparse.ArgumentParser) -> None:
    """``fuse``: fuse the radiologists' boxes with weighted boxes fusion."""
    p.add_argument("train_csv", type=Path, help="annotations in train.csv columns")
    p.add_argument("out_csv", type=output_file, help="fused table to write (not an input)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--meta", type=Path, help="CSV with image_id,dim0,dim1 (rows, columns of the originals)"
    )
    source.add_argument("--dicoms", type=Path, help="folder of .dicom files to read sizes from")
    p.add_argument(
        "--iou", type=iou_threshold, default=0.4, help="IoU above which boxes fuse, in (0, 1]"
    )
    p.set_defaults(func=_cmd_fuse)


def _add_preprocess_command(p: argparse.ArgumentParser) -> None:
    """``preprocess``: convert DICOMs to resized 8-bit PNGs + meta tables."""
    p.add_argument("src", type=Path, help="folder with train/ and/or test/ of .dicom files")
    p.add_argument("out", type=output_folder, help="folder to write PNGs and meta tables into")
    p.add_argument("--size", type=positive_int, default=512, help="side of the PNGs in pixels")
    p.add_argument(
        "--workers", type=positive_int, default=None, help="worker processes (default: all cores)"
    )
    p.add_argument(
        "--keep-aspect", action="store_true", help="longest side = size instead of square"
    )
    p.set_defaults(func=_cmd_preprocess)


def _add_run_inputs(p: argparse.ArgumentParser) -> None:
    """What every training command reads and writes: the folder, the table, the run folder."""
    p.add_argument("data_dir", type=Path, help="preprocessed folder (train/*.png, train_meta.csv)")
    p.add_argument(
        "annotations_csv", type=Path, help="train.csv (fused here) or a fused table, original px"
    )
    p.add_argument(
        "--out", type=output_folder, required=True, help="run folder for checkpoints and history"
    )


def _add_earlier_run_options(p: argparse.ArgumentParser) -> None:
    """--resume or --overwrite: what to do with a run already in --out (not both)."""
    earlier_run = p.add_mutually_exclusive_group()
    earlier_run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last.pt (default: off)",
    )
    earlier_run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run in --out with a new one (default: off)",
    )


def _add_old_minutes_name(p: argparse.ArgumentParser) -> None:
    """``--max-minutes``: the older name of ``--minutes``, still accepted (not in --help)."""
    p.add_argument(
        "--max-minutes", dest="minutes", type=positive_float, default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )  # fmt: skip


def _add_train_command(p: argparse.ArgumentParser) -> None:
    """``train``: one option per field of :class:`cxrkit.config.TrainConfig`, plus the run's."""
    _add_run_inputs(p)
    add_config_options(p)
    _add_earlier_run_options(p)
    _add_old_minutes_name(p)
    p.set_defaults(func=_cmd_train, command_parser=p)


def _add_train_classifier_command(p: argparse.ArgumentParser) -> None:
    """``train-classifier``: one option per field of :class:`cxrkit.config.ClassifierConfig`."""
    _add_run_inputs(p)
    add_config_options(p, ClassifierConfig)
    _add_earlier_run_options(p)
    _add_old_minutes_name(p)
    p.set_defaults(func=_cmd_train_classifier, command_parser=p)


def _add_classify_command(p: argparse.ArgumentParser) -> None:
    """``classify``: write p_abnormal of each image of a split (classifiers averaged)."""
    p.add_argument(
        "checkpoints", type=Path, nargs="+", metavar="CKPT",
        help="classifier checkpoint(s) (RUN/best.pt); several are averaged",
    )  # fmt: skip
    p.add_argument("data_dir", type=Path, help="preprocessed folder (SPLIT/*.png, SPLIT_meta.csv)")
    p.add_argument(
        "--out", type=output_file, required=True, help="CSV to write: image_id,p_abnormal"
    )
    p.add_argument("--split", default="test", help="the split of data_dir to classify")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch")
    p.set_defaults(func=_cmd_classify)


def _add_predict_command(p: argparse.ArgumentParser) -> None:
    """``predict``: predict a split and write a submission CSV."""
    p.add_argument(
        "checkpoints", type=Path, nargs="+", metavar="CKPT",
        help="detector checkpoint(s) (RUN/best.pt); several are fused with WBF",
    )  # fmt: skip
    p.add_argument("data_dir", type=Path, help="preprocessed folder (SPLIT/*.png, SPLIT_meta.csv)")
    p.add_argument("--out", type=output_file, required=True, help="submission CSV to write")
    p.add_argument("--split", default="test", help="the split of data_dir to predict")
    p.add_argument("--tta", action="store_true", help="average with a horizontal flip")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per batch")
    p.add_argument(
        "--classifier", type=Path, nargs="+", default=None, metavar="CLS_CKPT",
        help="normal/abnormal classifier checkpoint(s), averaged; their p_abnormal sets the "
        "No finding line and drops boxes on likely-normal images (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--low", type=probability, default=None,
        help="with --classifier: below this p_abnormal the boxes go and No finding scores 1 "
        f"(default: {BAND_DEFAULTS['low']})",
    )  # fmt: skip
    p.add_argument(
        "--high", type=probability, default=None,
        help="with --classifier: from this p_abnormal on the boxes stay without 14 (1 - p) "
        f"(default: {BAND_DEFAULTS['high']})",
    )  # fmt: skip
    p.add_argument(
        "--mode", choices=("bands", "soft"), default=None,
        help="with --classifier: bands (--low/--high) or soft (finding scores x p_abnormal) "
        "(default: bands)",
    )  # fmt: skip
    p.add_argument(
        "--nms", type=iou_threshold, default=None, metavar="IOU",
        help="class-wise NMS of the final boxes at this IoU, in (0, 1]: the model's own 0.5 "
        f"lets duplicates of thin findings through; 1 keeps every box (default: {PREDICT_NMS_IOU})",
    )  # fmt: skip
    p.add_argument(
        "--fusion", type=Path, default=None, metavar="FILE",
        help="several checkpoints: the WBF weights, IoU, skip and NMS that tune-fusion chose "
        "out of fold (its JSON file); the checkpoints go in the order it was tuned for "
        "(default: none, predict's own WBF and NMS settings)",
    )  # fmt: skip
    p.add_argument(
        "--wbf-iou", type=iou_threshold, default=None,
        help="several checkpoints: IoU above which their boxes fuse, in (0, 1] (default: 0.55)",
    )  # fmt: skip
    p.add_argument(
        "--wbf-skip", type=probability, default=None,
        help="several checkpoints: boxes scored below this are left out of the fusion "
        "(default: 0)",
    )  # fmt: skip
    p.add_argument(
        "--wbf-weights", type=positive_float, nargs="+", default=None, metavar="W",
        help="several checkpoints: one weight per checkpoint (default: equal)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_predict, command_parser=p)


def _add_tune_fusion_command(p: argparse.ArgumentParser) -> None:
    """``tune-fusion``: choose the WBF settings of several detectors out of fold."""
    p.add_argument(
        "runs", nargs="+", metavar="RUN",
        help="a trained run folder per model (best.pt, split.csv), or a model's fold runs "
        "joined by commas (RUN0,RUN1,RUN2: their oof.csv); all validated on the same images",
    )  # fmt: skip
    p.add_argument(
        "--out", type=output_file, required=True,
        help="JSON file to write, for predict --fusion",
    )  # fmt: skip
    p.add_argument(
        "--n-boot", type=positive_int, default=200,
        help="bootstrap draws of the gain's interval over the best single model",
    )  # fmt: skip
    p.set_defaults(func=_cmd_tune_fusion)


def _add_evaluate_command(p: argparse.ArgumentParser) -> None:
    """``evaluate``: score a submission with the competition metric."""
    p.add_argument("submission_csv", type=Path, help="submission with a row for each truth image")
    p.add_argument("truth_csv", type=Path, help="truth in train.csv columns (e.g. test_labels.csv)")
    p.add_argument(
        "--meta", type=Path, default=None,
        help="CSV with image_id,dim0,dim1: refuse boxes beyond their image (default: not checked)",
    )  # fmt: skip
    p.add_argument("--iou", type=iou_threshold, default=0.4, help="IoU a hit needs, in (0, 1]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed so tests and docs can inspect it."""
    parser = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")  # none: main prints the help

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    _add_sample_command(
        command("sample", "write a small synthetic dataset in the VinBigData layout")
    )
    _add_fuse_command(command("fuse", "fuse the radiologists' boxes with weighted boxes fusion"))
    _add_preprocess_command(
        command("preprocess", "convert DICOMs to resized 8-bit PNGs + meta tables")
    )
    _add_train_command(
        command(
            "train", "train a detector (Faster R-CNN, RetinaNet, FCOS) on a preprocessed folder"
        )
    )
    _add_train_classifier_command(
        command("train-classifier", "train an image-level normal/abnormal classifier")
    )
    _add_classify_command(
        command("classify", "write p_abnormal of each image of a split (classifiers averaged)")
    )
    _add_predict_command(command("predict", "predict a split and write a submission CSV"))
    _add_tune_fusion_command(
        command("tune-fusion", "tune the fusion of several detectors on out-of-fold predictions")
    )
    _add_evaluate_command(command("evaluate", "score a submission with the competition metric"))

    _add_profile_option(sub.choices["train"])
    # main() hands "doctor" to cxrkit.doctor.main before parsing; this entry lists it in
    # --help (same text as the doctor's own parser)
    p = sub.add_parser(
        "doctor",
        help=doctor.HELP,
        description=doctor.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_cmd_doctor)
    return parser


# How an OSError of the machine, not of cxrkit, reads: a full disk, a read-only folder.
_FREE = "free some space or write elsewhere"
_RIGHTS = "check its permissions or choose another folder"
DISK_PROBLEMS: dict[int, str] = {
    errno.EFBIG: f"the file is larger than this system allows (a file-size limit); {_FREE}",
    errno.ENOSPC: f"the disk is full; {_FREE}",
    getattr(errno, "EDQUOT", errno.ENOSPC): f"the disk quota is used up; {_FREE}",
    errno.EROFS: "the file system is read-only; choose a folder you can write to",
    errno.EACCES: f"permission denied; {_RIGHTS}",
    errno.EPERM: f"operation not permitted; {_RIGHTS}",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
}


def _one_line(message: str) -> str:
    """A message as one line: the lines of a listed message joined with '; '."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    joined = lines[0] if lines else ""
    for line in lines[1:]:
        joined += (" " if joined.endswith(":") else "; ") + line
    return joined


# ----------------------------------------------------------- train --profile, doctor
def _add_profile_option(train: argparse.ArgumentParser) -> None:
    train.add_argument(
        "--profile",
        choices=["auto", *PROFILE_NAMES],
        default=None,
        help="settings for the machine: cpu (cxr_small, 256 px), gpu (fasterrcnn_resnet50_fpn, "
        "512 px, AMP, COCO weights) or auto (gpu when CUDA is available); the epochs fit "
        "the time budget (--minutes); explicit --model/--epochs/--batch-size/--weights/--size "
        "still override (default: none)",
    )


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings: the options typed, over the profile's (``--profile``) or the
    defaults of :class:`TrainConfig`; the command line's defaults are never applied
    over a profile, because an option not typed is not in ``args`` at all."""
    typed = typed_settings(args)
    if not getattr(args, "profile", None):
        return TrainConfig(**typed)
    profile = choose_profile(
        None if args.profile == "auto" else args.profile, data_dir=args.data_dir
    )
    # the profile's epochs are the notebooks' (their run names); the command line plans
    # them from its time budget (--minutes: 60 on a GPU) unless --epochs is typed
    return TrainConfig.from_profile(profile, **{"epochs": None, **typed})


def _cmd_doctor(args: argparse.Namespace) -> int:
    return doctor.main([])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status.

    ``doctor`` goes first, to :func:`cxrkit.doctor.main`, before any other parsing:
    it has to report a broken environment, not fail in it.
    """
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["doctor"]:
        return doctor.main(given[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # no command: the help, not an error
        parser.print_help()
        return 2
    _check_fold_options(getattr(args, "command_parser", parser), args)
    _check_predict_options(getattr(args, "command_parser", parser), args)
    try:
        return args.func(args)
    except (CxrkitError, FileNotFoundError) as exc:  # bad input, not a bug: one line
        message = str(exc)
    except OSError as exc:
        if exc.errno not in DISK_PROBLEMS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        message = f"{where}{DISK_PROBLEMS[exc.errno]} (errno {code})"
    print(f"cxrkit {args.command}: error: {_one_line(message)}", file=sys.stderr)
    return 2
