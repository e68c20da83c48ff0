"""An exclusive lock on a run directory (``fcntl.flock`` on ``RUN_DIR/.lock``), held by
``train``, ``calibrate`` and ``compare`` while they write into it, so that two commands never
interleave their files. The kernel releases the lock when its process ends, however it ends;
a stale ``.lock`` file therefore never blocks anything and is left in place (removing a lock
file races with a process that is about to take it)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import RunError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` (created if missing) for the block; fail at once with a
    RunError when another process holds it. A directory this call created and that holds
    nothing but the lock afterwards (the command failed before writing) is removed again."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunError(f"{run_dir}: in use by {holder}; wait for it to finish or use another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"sast-deploy {command} (pid {os.getpid()})\n".encode(), 0)
        try:
            yield run_dir
        finally:
            os.ftruncate(fd, 0)
            if created and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
                path.unlink()
                run_dir.rmdir()
    finally:
        os.close(fd)  # releases the lock
