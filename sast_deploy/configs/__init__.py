"""The files the package ships: recipes (``train/``), target specs (``export/``) and hardware
configs (``hardware/``), read through :mod:`importlib.resources`, so that an installed wheel
finds them as the repository does.

One source of truth: the files live in the repository's top-level ``train/``, ``export/`` and
``hardware/``; the three folders here are relative symlinks to them, which the wheel build
follows (``pyproject.toml``, ``[tool.setuptools.package-data]``: every ``*.toml`` in them).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

FOLDERS = ("train", "export", "hardware")


def packaged(folder: str) -> Path:
    """The packaged folder ``folder`` (one of :data:`FOLDERS`) on disk."""
    if folder not in FOLDERS:
        raise ValueError(f"no packaged folder {folder!r}; known: {', '.join(FOLDERS)}")
    path = files(__name__) / folder
    if not isinstance(path, Path):  # a zipped install: the TOML readers need files on disk
        raise RuntimeError(f"sast_deploy must be installed as files on disk, not zipped ({path})")
    return path


def recipe_path(name: str | Path) -> Path:
    """A recipe (or study) file: ``name`` itself if it is a file or names a folder, else the
    packaged recipe of that name (``"demo"`` or ``"demo.toml"``: ``train/demo.toml``). A
    directory of that name in the working directory (a run's ``--out``, say) does not hide
    the packaged recipe."""
    p = Path(name)
    if p.is_file() or p.parent != Path("."):
        return p
    return packaged("train") / (p.name if p.suffix == ".toml" else f"{p.name}.toml")


def default_spec_path() -> Path:
    """The default target spec, ``export/loihi2.toml``."""
    return packaged("export") / "loihi2.toml"


def default_hardware_path() -> Path:
    """The default simulator run config, ``hardware/lava-sim.toml``."""
    return packaged("hardware") / "lava-sim.toml"
