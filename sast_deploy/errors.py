"""The one error base class of sast-deploy, and the exit codes of the command line.

Every error about the user's input (a recipe, a spec, a run directory, an HDF5 network, a
dataset) derives from :class:`SastDeployError`; ``sast-deploy`` prints its message on one
line and exits with :data:`EXIT_BAD_INPUT`. The messages name the file and the field.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_SIGINT = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM


class SastDeployError(Exception):
    """Bad input or a refused operation; the message names the file and the field."""


class Terminated(BaseException):
    """SIGTERM arrived. Raised in the main thread (like KeyboardInterrupt for SIGINT), so that
    ``finally`` blocks stop Lava runtimes and release locks; a BaseException so that no
    ``except Exception`` swallows it."""


class RunError(SastDeployError, ValueError):
    """A run directory or one of its files is missing, unreadable or inconsistent; the message
    names the file (and the field)."""


def one_line(message: object) -> str:
    """A message on one line (the CLI prints every error on one)."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
