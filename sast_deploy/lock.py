"""An exclusive lock on a run directory (``fcntl.flock`` on ``RUN_DIR/.lock``), held by
``train``, ``calibrate`` and ``compare`` while they write into it, so that two commands never
interleave their files. The kernel releases the lock when its process ends, however it ends;
a stale ``.lock`` file therefore never blocks anything and is left in place (removing a lock
file races with a process that is about to take it).

Run directories are shared, so ``.lock`` is opened without following a symbolic link and is
refused unless it is a plain file with one name holding nothing or a lock line of ours: the
lock is truncated and rewritten, which must never empty someone else's file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path
from typing import Iterator

from .errors import RunError

LOCK_NAME = ".lock"
LOCK_LINE = b"sast-deploy "  # how every lock line this module writes begins
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang open()


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` (created if missing) for the block; fail at once with a
    RunError when another process holds it. A directory this call created and that holds
    nothing but the lock afterwards (the command failed before writing) is removed again."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunError(f"{run_dir}: in use by {holder}; wait for it to finish or use another directory") from None
        _check_lock_content(fd, path)
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


def _open_lock_file(path: Path) -> int:
    """A descriptor of the lock file ``path``, created if missing; a RunError naming it when it
    is a symbolic link, not a plain file, or a plain file with further (hard-linked) names."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o666)
    except OSError as exc:
        if os.path.islink(path):
            raise RunError(f"{path}: is a symbolic link; a lock file is never followed (remove it if it is not yours)") from None
        raise RunError(f"{path}: cannot open the lock file ({exc.strerror})") from None
    st = os.fstat(fd)
    problem = ("is not a plain file" if not stat.S_ISREG(st.st_mode)
               else f"has {st.st_nlink} names (hard links)" if st.st_nlink != 1 else None)
    if problem:
        os.close(fd)
        raise RunError(f"{path}: {problem}; refusing to use it as a lock file (remove it if it is not yours)")
    return fd


def _check_lock_content(fd: int, path: Path) -> None:
    """A lock file is empty or holds a lock line of ours; anything else is not ours to truncate."""
    head = os.pread(fd, len(LOCK_LINE), 0)
    if head and head != LOCK_LINE:
        raise RunError(f"{path}: holds something other than a sast-deploy lock line; refusing to overwrite it "
                       f"(move it away if it is not yours)")
