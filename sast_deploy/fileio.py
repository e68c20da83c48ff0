"""Atomic file writes: a temporary file in the target folder, then a rename, so that an
interrupted command never leaves a half-written model, cache or report behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Tuple, Type

import numpy as np
import torch

from .errors import RunError, SastDeployError, one_line


class WriteError(SastDeployError):
    """A file could not be written (a full disk, a quota, a read-only folder); the message names
    the file, the reason and the free space left beside it. Nothing is left at its name."""


def atomic_write_bytes(path: Path, write: Callable[[str], None],
                       failures: Tuple[Type[BaseException], ...] = (OSError,)) -> None:
    """Write ``path`` through ``write(temporary name)`` and a rename; an exception of ``failures``
    while writing becomes a :class:`WriteError`, and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except failures as exc:
        raise WriteError(f"{path}: cannot write it ({_write_failure(exc)}; {_free_space(path.parent)})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_failure(exc: BaseException) -> str:
    """The reason a write failed: the operating system's, when an OSError is in the chain, else
    the first error raised (torch's zip writer raises a second one while closing the file)."""
    chain = [exc]
    while len(chain) < 8 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for e in chain:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    text = one_line(chain[-1]) or type(chain[-1]).__name__
    return text.split("] . ", 1)[-1][:200]  # torch's messages start with the C++ source line: "[enforce fail at x.cc:764] . "


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free on its file system"


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON file ``path``; a missing or malformed one is a RunError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not a readable {what} ({exc})") from None


def atomic_torch_save(obj, path: Path) -> None:
    # torch's writer reports a failed write (a full disk) as a RuntimeError, not an OSError
    atomic_write_bytes(path, lambda tmp: torch.save(obj, tmp), failures=(OSError, RuntimeError))


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write_bytes(path, write)


def atomic_save_npz(path: Path, **arrays) -> None:
    """Write an .npz via a temporary file and rename, so a crash never leaves half a cache."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    atomic_write_bytes(path, write)


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A folder written at a temporary name beside ``path`` and renamed to ``path`` when the
    block ends without error, so a reader never sees half of it. The partial folder is
    removed on error; if ``path`` appeared meanwhile (another writer finished first), the
    rename raises FileExistsError and ours is dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:
            if path.exists():
                raise FileExistsError(f"{path}: already exists") from None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
