"""Convert DICOMs once into small 8-bit PNGs plus meta tables (the "resized 512" layout).

``SRC/{train,test}/<id>.dicom`` become ``OUT/{train,test}/<id>.png`` and
``OUT/{train,test}_meta.csv`` (``image_id,dim0,dim1``: original rows and columns),
resumably, in worker processes; :func:`meta_from_dicoms` builds a meta table from
the DICOM headers alone. Taught in notebook 02 (and used by notebooks 03-06).
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit._atomic import atomic_path, write_csv_atomic
from cxrkit._progress import tqdm
from cxrkit.annotations import validate_meta
from cxrkit.dicom import dicom_shape, list_dicoms, read_xray, shared_id_problem
from cxrkit.errors import AnnotationError, ConfigError, DataNotFoundError, PreprocessError
from cxrkit.formats import META_COLUMNS
from cxrkit.paths import find_data, work_dir

STATE_DIR = ".cxrkit-preprocess"  # journal + settings, inside OUT
FORMAT_VERSION = 1  # bump when the pixels we write change, so old folders are not trusted
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no space, over quota
_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last 12 bytes of every complete PNG


@dataclass
class PreprocessReport:
    """What one :func:`preprocess_dicoms` run did.

    ``converted`` images were written now, ``skipped`` ones were already done by an
    earlier run, ``failed`` lists ``(path, reason)`` for files that could not be
    read (also in ``out/errors.csv``).
    """

    converted: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    out: Path | None = None

    @property
    def images_per_second(self) -> float:
        """Conversion speed of this run (skipped images do not count)."""
        return self.converted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """A few readable lines for the command line and notebooks."""
        lines = [
            f"preprocess: {self.converted} converted, {self.skipped} already done, "
            f"{len(self.failed)} failed in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s) -> {self.out}"
        ]
        if self.failed:
            lines.append(
                f"  {len(self.failed)} file(s) could not be read (see {self.out}/errors.csv):"
            )
            for path, reason in self.failed[:10]:
                lines.append(f"  - {path}: {reason}")
            if len(self.failed) > 10:
                lines.append(f"  ... and {len(self.failed) - 10} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------- one image


def output_shape(rows: int, cols: int, size: int, keep_aspect: bool) -> tuple[int, int]:
    """PNG ``(height, width)`` for an original ``rows x cols`` image.

    Square by default; with ``keep_aspect`` the longest side becomes ``size``.

    >>> output_shape(2880, 2453, 512, keep_aspect=False)
    (512, 512)
    >>> output_shape(2880, 2453, 512, keep_aspect=True)
    (512, 436)
    """
    if not keep_aspect:
        return size, size
    scale = size / max(rows, cols)
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def convert_one(src: str, dst: str, size: int, keep_aspect: bool) -> tuple[int, int]:
    """Convert one DICOM to a PNG (atomically); return its original ``(rows, cols)``.

    Runs inside a worker process. Raises :class:`cxrkit.dicom.DicomReadError` (or
    another exception) for a file that cannot be converted.
    """
    rows, cols = dicom_shape(src)
    image = read_xray(src, size=output_shape(rows, cols, size, keep_aspect))
    with atomic_path(dst) as tmp:
        write_png(tmp, image)
    return int(rows), int(cols)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write ``image`` as a PNG: encoded by OpenCV (the bytes ``cv2.imwrite`` writes),
    written by Python, so that a full disk raises ``OSError`` with ``errno.ENOSPC``
    instead of OpenCV's bare ``False``."""
    import cv2

    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise PreprocessError(f"OpenCV could not encode {path} as PNG")
    with open(path, "wb") as f:
        f.write(data.tobytes())


def _disk_full(path: str | os.PathLike) -> PreprocessError:
    """The error for a full disk (or quota): it stops the run, unlike an unreadable file."""
    return PreprocessError(
        f"the disk is full (errno ENOSPC: no space left on device) while writing {path}; "
        "free some space there or choose an output folder on another disk, then run again "
        "(the images converted so far are kept)"
    )


def _convert_task(task: tuple[str, str, str, int, bool]) -> tuple[str, int, int, str | None]:
    """Worker entry point: returns ``(image_id, rows, cols, error)`` for a bad file.

    Raises only for a full disk (:class:`PreprocessError`): every later image
    would fail the same way, and it is no fault of the DICOM.
    """
    image_id, src, dst, size, keep_aspect = task
    try:
        rows, cols = convert_one(src, dst, size, keep_aspect)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise _disk_full(dst) from None
        return image_id, -1, -1, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bad file must not stop the other thousands
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        return image_id, -1, -1, str(reason)
    return image_id, rows, cols, None


def _init_worker(parent_pid: int | None = None) -> None:
    """One OpenCV thread per worker process (the processes already use every core),
    and exit when the process that started the pool dies."""
    import cv2

    cv2.setNumThreads(1)
    if parent_pid is not None:
        exit_with_parent(parent_pid)


def _process_start(pid: int) -> str | None:
    """An identity of a live process (its start time, Linux), "" elsewhere, None if gone.

    A zombie (killed, not yet reaped by its own parent) counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux: no such process
    except OSError:
        pass
    else:
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) "
        return None if fields[0] in ("Z", "X") else fields[19]  # state, starttime
    try:
        os.kill(pid, 0)  # no /proc (macOS): signal 0 only checks that the pid exists
    except ProcessLookupError:
        return None
    except PermissionError:  # the pid now belongs to another user: ours is gone
        return None
    except OSError:  # Windows: os.kill(pid, 0) is not a probe; rely on the pool's own checks
        return ""
    return ""


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> threading.Thread | None:
    """Start a watchdog thread that ends this process soon after ``parent_pid`` dies.

    A pool worker waits on its task queue forever: if the parent is killed (``kill
    -9``, SIGTERM, an out-of-memory kill) nobody tells it. The forkserver is the
    workers' real parent, so ``prctl(PR_SET_PDEATHSIG)`` or ``os.getppid()`` would
    watch the wrong process; the watchdog polls the pid that started the pool
    instead (and its start time, so a reused pid is not mistaken for it). Returns
    the thread, or None when ``parent_pid`` is already gone (then it exits at once).
    """
    identity = _process_start(parent_pid)
    if identity is None:
        os._exit(1)

    def watch() -> None:
        while _process_start(parent_pid) == identity:
            time.sleep(interval)
        os._exit(1)  # a half-written PNG stays a temp file, removed by the next run

    thread = threading.Thread(target=watch, name="cxrkit-parent-watchdog", daemon=True)
    thread.start()
    return thread


def png_is_complete(path: Path) -> bool:
    """Cheap check that ``path`` is a whole PNG: signature at the start, IEND at the end.

    Our own PNGs cannot be truncated (atomic rename), but a folder copied by hand
    or a crash of the whole machine could leave one; decoding every PNG on resume
    would be slow, reading 20 bytes is not.
    """
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return False
            f.seek(-len(_PNG_TRAILER), os.SEEK_END)
            return f.read() == _PNG_TRAILER
    except OSError:
        return False


# --------------------------------------------------------------------------- the journal


class _Journal:
    """Append-only ``image_id,dim0,dim1`` lines, one per finished image of a split.

    A line is appended (and flushed to the OS) only after its PNG has been renamed
    into place, so a line always means "this PNG is complete". A kill can lose at
    most the last line (that image is simply redone) or leave half a line (ignored
    when read). We ``fsync`` every few lines and at the end: losing lines to a power
    cut only costs redoing work, never wrong output.
    """

    SYNC_EVERY = 64

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._pending = 0

    def read(self) -> dict[str, tuple[int, int]]:
        done: dict[str, tuple[int, int]] = {}
        if not self.path.is_file():
            return done
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(",")
            if len(parts) != 3:
                continue  # a line cut short by a kill
            try:
                done[parts[0]] = (int(parts[1]), int(parts[2]))
            except ValueError:
                continue
        return done

    def append(self, image_id: str, rows: int, cols: int) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            # a previous kill may have left a partial last line: start on a fresh one
            if self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
                self._file.write("\n")
        self._file.write(f"{image_id},{rows},{cols}\n")
        self._file.flush()
        self._pending += 1
        if self._pending >= self.SYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        if self._file is not None and self._pending:
            os.fsync(self._file.fileno())
            self._pending = 0

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- the folder


def _find_sources(src: Path, splits: Sequence[str]) -> dict[str, list[Path]]:
    """The DICOMs of each split that exists under ``src``; a clear error if none."""
    if not src.is_dir():
        raise DataNotFoundError(f"DICOM folder {src} does not exist")
    sources = {s: list_dicoms(src / s) for s in splits if (src / s).is_dir()}
    if not sources:
        found = sorted(p.name for p in src.iterdir())[:10]
        raise DataNotFoundError(
            f"{src} has no {' or '.join(f'{s}/' for s in splits)} folder of DICOMs "
            f"(found {found}); expected the VinBigData layout SRC/train/*.dicom, SRC/test/*.dicom"
        )
    for split_name, files in sources.items():
        problem = shared_id_problem(src / split_name, files)
        if problem:
            raise PreprocessError(problem)
    if not any(sources.values()):
        raise DataNotFoundError(
            f"no .dicom files in {', '.join(str(src / s) for s in sources)}: nothing to convert"
        )
    return sources


def _check_settings(out: Path, size: int, keep_aspect: bool) -> None:
    """Refuse to mix PNGs of different sizes in one folder; record the settings."""
    settings = {"size": size, "keep_aspect": keep_aspect, "format_version": FORMAT_VERSION}
    path = out / STATE_DIR / "settings.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise PreprocessError(
                f"{path} is corrupt ({exc}), so the size of the PNGs already in {out} is "
                "unknown: use another output folder (or delete this one)"
            ) from None
        if old != settings:
            raise PreprocessError(
                f"{out} was made with {old}, not {settings}: use another output folder "
                f"(or delete this one) instead of mixing image sizes"
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings), encoding="utf-8")


def _remove_stray_temp_files(folder: Path) -> int:
    """Delete ``.<name>.*.tmp.png`` files left by a killed run (see ``atomic_path``)."""
    n = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp*"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def _chunksize(n_tasks: int, workers: int) -> int:
    """Tasks per message to a worker: big enough to amortise the pickling, small
    enough that every worker gets several chunks (good load balance, lively bar)."""
    return max(1, min(16, n_tasks // (workers * 8)))


def default_workers() -> int:
    """The CPU cores this process may use (respects affinity / container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _mp_context() -> multiprocessing.context.BaseContext:
    """Start workers from a clean process, never by ``fork`` of this one.

    A forked child inherits the parent's locks but not its threads: if OpenCV's
    (or BLAS's) thread pool was busy in the parent, for instance after a
    ``workers=1`` run or a ``cv2.resize`` in a notebook, the child's first OpenCV
    call waits forever on a lock nobody will release. ``forkserver`` (Linux,
    macOS) forks from a fresh server process, started once per Python session;
    Windows only has ``spawn``.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # The server imports these once (no OpenCV thread pool exists yet, so forking it is
    # safe); each worker then starts in milliseconds instead of re-importing for a second.
    ctx.set_forkserver_preload(["cxrkit.preprocess", "cxrkit.dicom", "cv2"])
    return ctx


def _run_tasks(
    tasks: list[tuple[str, str, str, int, bool]], workers: int
) -> Iterator[tuple[str, int, int, str | None]]:
    """Convert ``tasks`` in-process (``workers == 1``) or in a process pool."""
    if workers <= 1:
        # One worker means one core: keep OpenCV from spreading the resize over the
        # others, as each pool worker does (so "per worker" rates compare honestly).
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            yield from map(_convert_task, tasks)
        finally:
            cv2.setNumThreads(threads)
        return
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_mp_context(),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    try:
        yield from pool.map(_convert_task, tasks, chunksize=_chunksize(len(tasks), workers))
    finally:  # on Ctrl-C, drop the queued work instead of finishing it first
        pool.shutdown(wait=True, cancel_futures=True)


def _write_tables(
    out: Path,
    sources: dict[str, list[Path]],
    done: dict[str, dict[str, tuple[int, int]]],
    failed: list[tuple[str, str]],
) -> None:
    """``<split>_meta.csv`` of the converted images (in file order) and ``errors.csv``."""
    for split_name, files in sources.items():
        ids = [p.stem for p in files if p.stem in done[split_name]]  # only converted images
        meta = pd.DataFrame(
            {
                "image_id": ids,
                "dim0": [done[split_name][i][0] for i in ids],
                "dim1": [done[split_name][i][1] for i in ids],
            }
        )
        write_csv_atomic(meta, out / f"{split_name}_meta.csv")
    errors_csv = out / "errors.csv"
    if failed:
        write_csv_atomic(pd.DataFrame(failed, columns=["path", "reason"]), errors_csv)
    else:
        errors_csv.unlink(missing_ok=True)  # a rerun fixed (or removed) the bad files


def preprocess_dicoms(
    src: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 512,
    workers: int | None = None,
    splits: Iterable[str] = ("train", "test"),
    keep_aspect: bool = False,
) -> PreprocessReport:
    """Convert ``src/{train,test}/*.dicom`` to ``out/{train,test}/<id>.png`` + meta CSVs.

    Args:
        src: folder in the VinBigData layout (the competition data or the sample).
        out: output folder (created); rerunning on it resumes where it stopped.
        size: PNG side in pixels (square), or the longest side with ``keep_aspect``.
        workers: worker processes; ``None`` uses all cores, ``1`` runs in this process.
            Workers start from a fresh interpreter (see :func:`_mp_context`): in a
            *script* of your own, call this under ``if __name__ == "__main__":``
            (notebooks and ``python -m cxrkit`` need nothing).
        splits: which sub-folders to convert (missing ones are skipped).
        keep_aspect: keep the proportions instead of squashing to a square.

    Returns:
        a :class:`PreprocessReport`; unreadable files are in ``report.failed`` and
        ``out/errors.csv``, and are left out of the meta tables.

    Example::

        report = preprocess_dicoms(find_data(), work_dir("preprocessed-512/vinbig"))
        print(report.summary())
    """
    start = time.perf_counter()
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if size < 8:
        raise ConfigError(f"size must be at least 8 pixels, got {size}")
    sources = _find_sources(src, tuple(splits))
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, size, keep_aspect)
    report = PreprocessReport(out=out)

    journals = {s: _Journal(out / STATE_DIR / f"{s}.csv") for s in sources}
    done = {s: journals[s].read() for s in sources}
    tasks: list[tuple[str, str, str, int, bool]] = []
    task_splits: list[str] = []  # the split of each task
    for split_name, files in sources.items():
        _remove_stray_temp_files(out / split_name)
        for path in files:
            image_id, png = path.stem, out / split_name / f"{path.stem}.png"
            if image_id in done[split_name] and png_is_complete(png):
                report.skipped += 1
                continue
            done[split_name].pop(image_id, None)  # journal says done but the PNG is not: redo
            tasks.append((image_id, str(path), str(png), size, keep_aspect))
            task_splits.append(split_name)

    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(tasks)))
    try:
        try:
            with tqdm(total=len(tasks), desc=f"DICOM -> PNG {size}px", unit="img") as bar:
                for (image_id, rows, cols, error), task, split_name in zip(
                    _run_tasks(tasks, workers), tasks, task_splits, strict=True
                ):
                    if error is None:
                        journals[split_name].append(image_id, rows, cols)
                        done[split_name][image_id] = (rows, cols)
                        report.converted += 1
                    else:
                        report.failed.append((task[1], error))
                    bar.update()
        finally:
            for journal in journals.values():
                journal.close()

        _write_tables(out, sources, done, report.failed)
    except OSError as exc:  # the journal, a meta table: the parent's own writes
        if exc.errno not in _DISK_FULL:
            raise
        raise _disk_full(exc.filename or out) from None
    report.seconds = time.perf_counter() - start
    return report


def _folder_name(data_dir: Path) -> str:
    """A readable, collision-free name for a data folder: ``<name>-<hash of its path>``."""
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{data_dir.name or 'data'}-{digest}"


def ensure_preprocessed(
    data_dir: str | os.PathLike | None = None,
    size: int = 512,
    workers: int | None = None,
    verbose: bool = False,
) -> Path:
    """The preprocessed copy of ``data_dir`` at ``size`` px, made on first call and reused.

    It lives under ``cxrkit.paths.work_dir(f"preprocessed-{size}")/<name>-<hash>``
    (``/kaggle/working/cxrkit/...`` on Kaggle, where the inputs are read-only).
    Later calls only check the folder (a second or so) thanks to the journal.
    ``data_dir=None`` uses :func:`cxrkit.paths.find_data` (the sample by default).
    Unreadable files are reported with a warning, not an exception. It prints
    nothing unless ``verbose`` (the first and later calls then look the same in a
    notebook, which keeps committed outputs reproducible).
    """
    data = find_data(data_dir)
    out = work_dir(f"preprocessed-{size}") / _folder_name(data)
    report = preprocess_dicoms(data, out, size=size, workers=workers)
    if verbose and (report.converted or report.failed):
        print(report.summary())
    if report.failed:
        warnings.warn(
            f"{len(report.failed)} DICOM(s) could not be converted; see {out / 'errors.csv'}",
            stacklevel=2,
        )
    return out


# --------------------------------------------------------------------------- meta from headers


def meta_from_dicoms(dicom_dir: str | os.PathLike) -> pd.DataFrame:
    """Build the meta table (``image_id,dim0,dim1``) from the headers of a DICOM folder.

    Reads every ``*.dicom`` / ``*.dcm`` file directly in ``dicom_dir`` (not in
    sub-folders) with ``stop_before_pixels``: only the header is parsed, so this
    takes seconds even for the 15,000 full-size training images. The image id is
    the file name without its extension. Unreadable files are collected and
    reported together in one :class:`AnnotationError`.
    """
    folder = Path(dicom_dir)
    if not folder.is_dir():
        raise DataNotFoundError(f"DICOM folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".dicom", ".dcm"))
    if not files:
        hint = ""
        if any((folder / sub).is_dir() for sub in ("train", "test")):
            hint = " (did you mean its train/ or test/ sub-folder?)"
        raise AnnotationError(f"no .dicom or .dcm files in {folder}{hint}")
    problem = shared_id_problem(folder, files)
    if problem:
        raise AnnotationError(problem)

    records, failed = [], []
    for path in tqdm(files, desc="reading DICOM headers", unit="file"):
        try:
            rows, cols = dicom_shape(path)
        except Exception as exc:  # any reader failure is reported with its file
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            failed.append(f"{path.name}: {reason}")
            continue
        records.append((path.stem, rows, cols))
    if failed:
        listed = "\n  ".join(failed[:10])
        more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
        raise AnnotationError(
            f"{folder}: {len(failed)} unreadable DICOM file(s):\n  {listed}{more}"
        )
    meta = pd.DataFrame(records, columns=META_COLUMNS)
    return validate_meta(meta, source=f"headers of {folder}")
