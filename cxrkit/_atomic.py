"""Atomic file writes: a reader never sees half a file.

Everything cxrkit writes (CSVs, PNGs, checkpoints, DICOMs) goes to a temporary
file in the destination folder first and is renamed into place, which is atomic
on POSIX and Windows. A crash leaves either the old file or a stray ``.tmp``
file, never a truncated output that looks whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from cxrkit.errors import OverwriteError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    ``suffix`` defaults to the destination's suffix so that writers that infer the
    format from the extension (cv2.imwrite, torch.save) keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = ".tmp" + path.suffix  # e.g. ".tmp.png": still ends in the real extension
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the usual permissions (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise _naming(exc, path) from exc
        raise


# A write that fails for one of these reasons is reported with the destination's
# name, not the temporary file's (which no longer exists) or none (a failed write()).
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EACCES, errno.EPERM}
)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as the same kind of OSError, naming ``path``."""
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno or 0), str(path))


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike, **to_csv_kwargs) -> Path:
    """``df.to_csv(path)`` that never leaves a partial CSV behind."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **to_csv_kwargs)
    return Path(path)


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse an output that cannot be written, before hours of prediction: its folder
    missing, a file where a folder should be, or a folder not writable."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    for above in (parent, *parent.parents):
        if above.exists() and not above.is_dir():
            raise OverwriteError(f"cannot write {out}: {above} is a file, not a folder")
    if out.is_dir():
        raise OverwriteError(f"cannot write {out}: it is a folder; give the path of a file")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise OverwriteError(f"cannot write {out}: the folder {existing} is not writable")
    return out
