"""Signals during a Lava run: SIGINT to the process group (a terminal's Ctrl-C), SIGINT to the
main process and SIGTERM stop the runtime through Lava (not the fallback that kills its
workers), reap every worker and release the shared memory, with exit code 130 or 143 and a
one-line message, at one copy of the network per graph and at the default K."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import SMALL_SYNTHETIC, random_mlp, random_spikes, tiny_recipe
from sast_deploy.deploy.lava_runtime import STOP_TIMEOUT_S
from sast_deploy.deploy.simulate import DEFAULT_COPIES

CLI = [sys.executable, "-m", "sast_deploy.cli"]
LAVA_WORKERS = 6  # process models, runtime service and shared-memory manager: at least this many children
FALLBACK = "lava: stopping the runtime"  # lava_runtime.stop_runtime's line when it kills the workers
# Signal to the last process gone: a graceful stop on a loaded machine takes seconds, and the
# fallback cannot end before this, its timeout alone being as long.
STOP_BOUND_S = STOP_TIMEOUT_S


def _children(pid: int):
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(proc.name))
    return out


def _descendants(pid: int):
    todo, found = [pid], []
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _start_time(pid: int):
    """(pid, start time in clock ticks): a pid that is reused later is another process."""
    try:
        return pid, int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[19])
    except OSError:
        return pid, None


def _alive(identity) -> bool:
    pid, started = identity
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == started


def _shm():
    return {p.name for p in Path("/dev/shm").glob("psm_*")}


def _mapped_segments(pids):
    """The /dev/shm/psm_* segments these processes have mapped (Lava's channels): the
    segments of this command, not of anything else running on the machine."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names |= {line.split("/dev/shm/")[1].split()[0] for line in maps.splitlines() if "/dev/shm/psm_" in line}
    return names


@pytest.fixture
def lava_segments(monkeypatch):
    """Names of the shared-memory segments Lava creates in this process during the test."""
    from lava.magma.runtime.message_infrastructure.shared_memory_manager import SharedMemoryManager

    names = []
    create = SharedMemoryManager.create_shared_memory

    def recording(self, size):
        handle = create(self, size)
        names.append(handle.name.lstrip("/"))
        return handle

    monkeypatch.setattr(SharedMemoryManager, "create_shared_memory", recording)
    return names


@pytest.fixture(scope="module")
def long_lava_run(tmp_path_factory):
    """A trained run with 320 test samples of 100 time bins: Lava takes several seconds over
    them even with 32 copies per graph (10 windows of 102 steps)."""
    from sast_deploy.data.datasets import DataConfig, load_dataset
    from sast_deploy.training.train import train

    data = load_dataset(DataConfig(n_time_bins=100, synthetic={**SMALL_SYNTHETIC, "test_variants": 8}), progress=False)
    run = tmp_path_factory.mktemp("long-lava-run")
    recipe = tiny_recipe(**{"training.epochs": 1, "optimizer.name": "baseline", "data.synthetic.test_variants": 8,
                             "data.n_time_bins": 100})
    train(recipe, run, progress=False, data=data)
    return run


def _wait_for_lava_running(proc, stderr: Path, timeout_s: float = 120) -> None:
    """Until Lava's workers have all been forked (none new for 0.5 s): its graph then runs."""
    deadline = time.monotonic() + timeout_s
    count, since = 0, time.monotonic()
    while count < LAVA_WORKERS or time.monotonic() - since < 0.5:
        assert proc.poll() is None, stderr.read_text()
        assert time.monotonic() < deadline, "Lava did not start"
        now = len(_descendants(proc.pid))
        if now != count:
            count, since = now, time.monotonic()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and /dev/shm")
@pytest.mark.parametrize("copies", [1, DEFAULT_COPIES])
@pytest.mark.parametrize("target,sig,code", [
    ("group", signal.SIGINT, 130),  # Ctrl-C in a terminal
    ("main", signal.SIGINT, 130),
    ("main", signal.SIGTERM, 143),  # kill PID
])
def test_signal_during_lava_run_stops_it_cleanly(long_lava_run, tmp_path, target, sig, code, copies):
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as err:
        # its own session, so that a signal to its group does not reach pytest; SIGINT at its
        # default even where pytest runs as a background job (which inherits SIGINT ignored)
        proc = subprocess.Popen([*CLI, "compare", str(long_lava_run), "--samples", "0", "--copies", str(copies),
                                 "--quiet"], stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_lava_running(proc, stderr)
        time.sleep(0.5)
        workers = [_start_time(p) for p in _descendants(proc.pid)]
        segments = _mapped_segments([proc.pid] + [pid for pid, _ in workers])
        assert segments, "found no shared-memory segments of the Lava run"
        assert len(workers) >= LAVA_WORKERS and proc.poll() is None, \
            "Lava finished before the signal: the test needs a longer run"
        if target == "group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        sent = time.monotonic()
        assert proc.wait(timeout=30) == code, stderr.read_text()
        deadline = time.monotonic() + 10  # the resource tracker exits once its pipe closes
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        stop_s = time.monotonic() - sent
        assert not [w for w in workers if _alive(w)], "worker processes survived"
        assert not segments & _shm(), "shared-memory segments were left in /dev/shm"
        lines = stderr.read_text().strip().splitlines()
        assert not [line for line in lines if FALLBACK in line], f"the stop took the fallback: {lines}"
        assert len(lines) == 1 and ("interrupted" if sig == signal.SIGINT else "terminated") in lines[0], lines
        assert stop_s < STOP_BOUND_S, f"{stop_s:.1f} s from the signal until the last process was gone"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /dev/shm")
def test_interrupt_before_the_first_run_reaps_the_workers(tmp_path, monkeypatch, lava_segments):
    # between create_runtime and the first run Lava's own stop() would wait forever
    import multiprocessing

    import numpy as np
    from lava.magma.core.process.process import AbstractProcess

    from sast_deploy.deploy.export import write_netx
    from sast_deploy.deploy.simulate import simulate_lava

    path = write_netx(random_mlp(0, (24, 12, 5), (300, 400), (410, 0)), tmp_path / "net.h5")
    children_before = set(multiprocessing.active_children())

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(AbstractProcess, "run", interrupted)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        simulate_lava(path, random_spikes(0, 4, 10, (1, 1, 24)).astype(np.uint8), progress=False)
    assert time.monotonic() - started < 30
    assert set(multiprocessing.active_children()) <= children_before
    assert lava_segments and not set(lava_segments) & _shm()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /dev/shm")
def test_a_signal_while_the_results_are_read_waits_for_the_read(tmp_path, monkeypatch, capsys, lava_segments):
    # Lava sends a Var to the host one message per element through the runtime service; a
    # read cut short by the signal would leave the service and the sink blocked sending the
    # rest, deaf to STOP, and the stop would end in the fallback
    import multiprocessing

    import numpy as np
    from lava.magma.runtime.runtime import Runtime

    from sast_deploy.deploy.export import write_netx
    from sast_deploy.deploy.simulate import simulate_lava
    from sast_deploy.errors import Terminated

    path = write_netx(random_mlp(0, (24, 12, 5), (300, 400), (410, 0)), tmp_path / "net.h5")
    children_before = set(multiprocessing.active_children())
    get_var, received = Runtime.get_var, []

    def get_var_signalled_halfway(self, var_id, idx=None):
        port = self.service_to_runtime[0]
        recv = port.recv

        def recv_then_signal():
            received.append(recv())
            if len(received) == 3:  # the element count and two elements of 20
                signal.raise_signal(signal.SIGTERM)  # raises Terminated at once unless held
            return received[-1]

        port.recv = recv_then_signal
        try:
            return get_var(self, var_id, idx)
        finally:
            del port.recv

    monkeypatch.setattr(Runtime, "get_var", get_var_signalled_halfway)
    with pytest.raises(Terminated):
        simulate_lava(path, random_spikes(0, 4, 10, (1, 1, 24)).astype(np.uint8), progress=False, copies=2)
    assert len(received) == 1 + 5 * 4  # the read finished: 5 outputs x 4 samples
    assert FALLBACK not in capsys.readouterr().err
    assert set(multiprocessing.active_children()) <= children_before
    assert lava_segments and not set(lava_segments) & _shm()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /dev/shm")
def test_a_signal_after_a_run_finished_but_before_its_answer_was_read(tmp_path, monkeypatch, capsys, lava_segments):
    # the runtime service answers that run's DONE, then STOP's TERMINATED: Lava's own stop
    # takes the first answer for the answer to STOP and fails
    import multiprocessing

    import numpy as np
    from lava.magma.runtime.runtime import Runtime

    from sast_deploy.deploy.export import write_netx
    from sast_deploy.deploy.simulate import simulate_lava
    from sast_deploy.errors import Terminated

    path = write_netx(random_mlp(0, (24, 12, 5), (300, 400), (410, 0)), tmp_path / "net.h5")
    children_before = set(multiprocessing.active_children())
    get_answer, runs = Runtime._get_resp_for_run, []

    def answer_read_late(self):
        runs.append(1)
        if len(runs) == 2:
            time.sleep(2.0)  # the second run (12 steps) ends meanwhile: its DONE waits in the channel
            signal.raise_signal(signal.SIGTERM)  # raises Terminated here
        return get_answer(self)

    monkeypatch.setattr(Runtime, "_get_resp_for_run", answer_read_late)
    with pytest.raises(Terminated):
        simulate_lava(path, random_spikes(0, 4, 10, (1, 1, 24)).astype(np.uint8), progress=False, copies=1,
                      chunks=4)
    assert len(runs) == 2
    assert FALLBACK not in capsys.readouterr().err
    assert set(multiprocessing.active_children()) <= children_before
    assert lava_segments and not set(lava_segments) & _shm()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /dev/shm")
def test_a_stop_that_hangs_is_timed_out_and_the_workers_killed(tmp_path, monkeypatch, capsys, lava_segments):
    import multiprocessing

    import numpy as np
    from lava.magma.core.process.process import AbstractProcess

    from sast_deploy.deploy import lava_runtime
    from sast_deploy.deploy.export import write_netx
    from sast_deploy.deploy.simulate import simulate_lava

    path = write_netx(random_mlp(0, (24, 12, 5), (300, 400), (410, 0)), tmp_path / "net.h5")
    children_before = set(multiprocessing.active_children())
    monkeypatch.setattr(AbstractProcess, "stop", lambda self: time.sleep(120))  # a worker that never answers STOP
    monkeypatch.setattr(lava_runtime, "STOP_TIMEOUT_S", 2.0)
    monkeypatch.setattr(lava_runtime.stop_runtime, "__defaults__", (2.0,))
    started = time.monotonic()
    result = simulate_lava(path, random_spikes(0, 4, 10, (1, 1, 24)).astype(np.uint8), progress=False)
    assert result.counts.shape == (4, 5) and time.monotonic() - started < 30
    assert "did not finish in 2 s" in capsys.readouterr().err
    assert set(multiprocessing.active_children()) <= children_before
    assert lava_segments and not set(lava_segments) & _shm()
