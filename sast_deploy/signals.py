"""Signal policy of a sast-deploy process and of the worker processes Lava forks.

* SIGINT raises KeyboardInterrupt (Python's default) and, inside :func:`terminate_raises`,
  SIGTERM raises :class:`~sast_deploy.errors.Terminated`, so that ``finally`` blocks stop
  Lava runtimes, release run-directory locks and leave no half-written file.
* :func:`deferred_signals` holds both signals during a critical section (starting or
  stopping a Lava runtime) and raises the held one when the section ends.
* Processes forked inside :func:`workers_leave_signals_to_parent` (Lava's process models,
  its runtime service and shared-memory manager) ignore SIGINT and SIGTERM: a terminal's
  Ctrl-C reaches the whole process group, and workers that died on it would leave the main
  process waiting forever for their answer to its STOP command. The main process stops
  them through Lava instead. They also get SIGKILL when the main process dies, however it
  dies (Linux ``PR_SET_PDEATHSIG``), so a SIGKILLed command leaves no workers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Iterator, List

from .errors import Terminated

HANDLED = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

_forking_workers = False  # set while Lava forks its workers (read by the at-fork hook)
_parent_pid = 0
_owner_pid = os.getpid()  # the process whose main thread handles SIGTERM


def _raise_terminated(signum, frame) -> None:
    if os.getpid() != _owner_pid:
        # a process forked without the worker policy (a multiprocessing pool, say): die as
        # SIGTERM's default action would, instead of raising in someone else's code
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()



@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread while the block runs (no-op elsewhere:
    only the main thread may set handlers)."""
    global _owner_pid
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _owner_pid = os.getpid()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver the last one that arrived to
    the handler in force before (so KeyboardInterrupt or Terminated is raised there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: List[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if arrived:
            signal.raise_signal(arrived[-1])


@contextlib.contextmanager
def workers_leave_signals_to_parent() -> Iterator[None]:
    """Processes forked while the block runs ignore SIGINT and SIGTERM and die with this one."""
    global _forking_workers, _parent_pid
    _forking_workers, _parent_pid = True, os.getpid()
    try:
        yield
    finally:
        _forking_workers = False


def _worker_policy_after_fork() -> None:
    if not _forking_workers:
        return
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != _parent_pid:  # the parent died before prctl took effect
            os._exit(1)


os.register_at_fork(after_in_child=_worker_policy_after_fork)
