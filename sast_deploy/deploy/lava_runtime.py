"""A Lava runtime that always stops: on return, on errors, on SIGINT (to the process or to its
whole group) and on SIGTERM, with its workers reaped and its shared memory released.

Lava 0.10 forks one worker per process model plus a runtime service and a shared-memory
manager (``lava/magma/runtime/message_infrastructure/multiprocessing.py``); ``stop()``
sends STOP to the runtime service, joins the workers and shuts the manager down, which
unlinks its ``/dev/shm/psm_*`` segments. Workers ignore SIGINT and SIGTERM (see
:mod:`sast_deploy.signals`), so that they are alive to answer STOP. Should the stop still
hang (a worker that crashed), the workers are killed after :data:`STOP_TIMEOUT_S` and the
manager is shut down directly.

The host reads a Var as a sequence of messages (:func:`read_var`); signals wait until such
an exchange is complete, so that the stop always finds Lava's channels in step.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
from typing import Iterator, List

import numpy as np
from lava.magma.runtime.mgmt_token_enums import MGMT_RESPONSE, enum_equal

from ..signals import deferred_signals, terminate_raises, workers_leave_signals_to_parent

STOP_TIMEOUT_S = 10.0  # a clean stop takes about a second on 2 cores


@contextlib.contextmanager
def lava_runtime(process, run_cfg) -> Iterator[None]:
    """Create the runtime of the Lava process graph ``process`` (``create_runtime``), run the
    block, and stop the runtime whatever happens. Signals that arrive while the runtime starts
    or stops are held and raised after it."""
    before = set(multiprocessing.active_children())
    with terminate_raises():
        try:
            with deferred_signals(), workers_leave_signals_to_parent():
                process.create_runtime(run_cfg=run_cfg)
            yield
        finally:
            with deferred_signals():
                stop_runtime(process, [p for p in multiprocessing.active_children() if p not in before])


def read_var(var) -> np.ndarray:
    """``var.get()`` of a running graph, with SIGINT and SIGTERM held until it returns.

    Lava sends a Var to the host one element per message, through the runtime service. A
    read cut short by a signal leaves the rest of the elements in the channels, where Lava's
    stop reads one instead of the service's TERMINATED and fails, and the process model and
    the service blocked sending them, where they never receive STOP: the stop ends in the
    fallback (after :data:`STOP_TIMEOUT_S` when the rest does not fit in the channels)."""
    with deferred_signals():
        return np.asarray(var.get())


def stop_runtime(process, workers: List[multiprocessing.Process], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop through Lava (in a helper thread, so that a hang can be timed out); kill what is
    left of ``workers`` after ``timeout_s`` seconds or a failed stop."""
    runtime = process.runtime
    if runtime is None:
        return
    if not runtime._is_started:
        # Never ran (interrupted while starting): Lava's stop() would skip STOP and then join
        # workers that wait for one. Or Lava stopped it already. Either way nothing is left to
        # stop gracefully: release the shared memory and reap what is left.
        _kill(runtime, workers)
        return
    failure: List[BaseException] = []

    def graceful() -> None:
        try:
            with _done_of_an_interrupted_run_skipped(runtime):
                process.stop()
        except BaseException as exc:  # reported below; the workers are then killed
            failure.append(exc)

    stopper = threading.Thread(target=graceful, name="lava-stop", daemon=True)
    stopper.start()
    stopper.join(timeout_s)
    if stopper.is_alive() or failure:
        reason = f"failed ({failure[0]!r})" if failure else f"did not finish in {timeout_s:.0f} s"
        print(f"lava: stopping the runtime {reason}; killing its {len(workers)} worker processes", file=sys.stderr)
        _kill(runtime, workers)


@contextlib.contextmanager
def _done_of_an_interrupted_run_skipped(runtime) -> Iterator[None]:
    """While Lava's stop reads the runtime services' answers, skip the DONE of a run that a
    signal interrupted. A service that finished that run before STOP reached it answers DONE
    and then TERMINATED; Lava's stop (lava 0.10 ``Runtime.stop``) takes the first answer for
    the answer to STOP and looks once, without waiting, for a second, so it would fail on
    the DONE. (``_is_running``, private: a run whose answer was not read.)"""
    if not runtime._is_running:
        yield
        return
    ports = list(runtime.service_to_runtime)

    def skipping_done(recv):
        def recv_not_done():
            data = recv()
            return recv() if enum_equal(data, MGMT_RESPONSE.DONE) else data
        return recv_not_done

    for port in ports:
        port.recv = skipping_done(port.recv)  # on the instance, for this stop only
    try:
        yield
    finally:
        for port in ports:
            del port.recv


def _kill(runtime, workers: List[multiprocessing.Process]) -> None:
    # Release the shared memory first: the manager unlinks every segment it tracks when asked
    # to shut down, and each segment is unlinked by name as well, in case the manager does not
    # answer (private attributes of lava 0.10's Runtime and SharedMemoryManager).
    smm = getattr(getattr(runtime, "_messaging_infrastructure", None), "smm", None)
    segments = list(getattr(smm, "_shared_memory_handles", ()))
    manager = getattr(smm, "_manager", None)
    if manager is not None:
        with contextlib.suppress(Exception):
            manager.shutdown()
    for segment in segments:
        with contextlib.suppress(Exception):  # FileNotFoundError: the manager unlinked it
            segment.unlink()
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.kill()
    for worker in workers:
        with contextlib.suppress(Exception):
            # the base class's join: Lava's SystemProcess.join takes no timeout
            multiprocessing.process.BaseProcess.join(worker, timeout=5)
    runtime._is_started = False  # or Runtime.__del__ would send STOP to the dead workers and wait
