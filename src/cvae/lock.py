"""One writer per run folder.

A training process holds an exclusive ``flock`` on ``RUN/.lock`` from the moment it picks the folder
until it has written its final figures. A second writer (another ``cvae train --resume`` or
``--overwrite`` on the same folder) is refused with the process that holds it. The operating system
drops the lock when the holder exits in any way, ``kill -9`` included, so a lock never outlives its
process; the file itself stays behind, empty of meaning, and is reused by the next writer.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from .errors import CvaeError

try:  # POSIX; elsewhere the folder is not locked (stated in the README)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """The folder's lock for this process (re-entrant within it): taken by :func:`hold`, given back by
    :func:`let_go`."""

    _held: dict[str, RunLock] = {}

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.depth = 0

    def acquire(self) -> RunLock:
        key = str(self.path.resolve())
        held = RunLock._held.get(key)
        if held is not None:  # this process holds it already (train called from an on_epoch hook, ...)
            held.depth += 1
            return held
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise CvaeError(f"{self.run_dir} is being written by another process ({holder}); wait for it to "
                                "finish or stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}\n").encode())
        self.fd, self.depth = fd, 1
        RunLock._held[key] = self
        return self

    def release(self) -> None:
        self.depth -= 1
        if self.depth > 0 or self.fd is None:
            return
        RunLock._held.pop(str(self.path.resolve()), None)
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def hold(run_dir: str | os.PathLike) -> None:
    """Take the folder's lock for this process (released by :func:`let_go`)."""
    RunLock(run_dir).acquire()


def let_go(run_dir: str | os.PathLike) -> None:
    held = RunLock._held.get(str((Path(run_dir) / LOCK_NAME).resolve()))
    if held is not None:
        held.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


def remove_orphans(run_dir: str | os.PathLike, names) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes of ``names`` left behind
    (``.NAME.XXXX.tmp``); call under the lock, which is held by whoever writes those names."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        if path.is_file() and any(path.name.startswith(f".{name}.") for name in names):
            path.unlink()
            removed.append(path)
    return removed
