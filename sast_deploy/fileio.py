"""Atomic file writes: a temporary file in the target folder, then a rename, so that an
interrupted command never leaves a half-written model, cache or report behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .errors import RunError


def atomic_write_bytes(path: Path, write: Callable[[str], None]) -> None:
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
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    atomic_write_bytes(path, lambda tmp: torch.save(obj, tmp))


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
