"""One training at a time per run folder: a lock file held by the live process.

Two trainings writing into one folder would each overwrite the other's
``last.pt``, ``best.pt``, ``history.csv`` and ``split.csv``, and both would say
they wrote them. :func:`run_lock` holds ``RUN/.cxrkit-run.lock`` while a training
runs; the file names its holder (pid, host, start time) for the refusal message.

The lock itself is an operating-system lock on that file (``flock`` on POSIX,
``msvcrt.locking`` on Windows), which the kernel releases when its process dies,
even by ``kill -9``: a lock file left by a dead process is therefore stale by
construction and is taken over safely (two processes cannot both take it over).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cxrkit.errors import OverwriteError

LOCK_NAME = ".cxrkit-run.lock"

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True


def _holder(path: Path) -> dict:
    """What the lock file says about its holder ({} if unreadable or empty)."""
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {since})"


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out_dir``'s lock for the duration of the ``with`` block.

    Raises :class:`OverwriteError` naming the holder (pid and host) when another
    live process holds it. A lock file left by a process that died is taken over,
    with a one-line note. The folder is created if needed; the lock file is
    removed on exit.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            os.close(fd)
            raise OverwriteError(
                f"{out} is in use by another training, {_describe(_holder(path))}: wait for "
                "it to finish, or choose another output folder"
            )
        try:  # the file we locked may have been removed by its previous holder meanwhile
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        left = _holder(path)
        if left:
            print(f"{out}: taking over the lock left by {_describe(left)}, which no longer runs")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked: nobody else holds this file
        os.close(fd)
