"""Signals during a Lava run: SIGINT to the process group (a terminal's Ctrl-C), SIGINT to the
main process and SIGTERM stop the runtime, reap every worker and release the shared memory,
with exit code 130 or 143 and a one-line message."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL_SYNTHETIC

CLI = [sys.executable, "-m", "sast_deploy.cli"]
LAVA_WORKERS = 6  # process models, runtime service and shared-memory manager: at least this many children


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


@pytest.fixture(scope="module")
def long_lava_run(tmp_path_factory):
    """A trained run with 320 test samples: Lava takes several seconds over them."""
    from sast_deploy.data import DataConfig, load_dataset
    from sast_deploy.train import train
    from test_train import _recipe

    data = load_dataset(DataConfig(n_time_bins=10, synthetic={**SMALL_SYNTHETIC, "test_variants": 8}), progress=False)
    run = tmp_path_factory.mktemp("long-lava-run")
    recipe = _recipe(**{"training.epochs": 1, "optimizer.name": "baseline", "data.synthetic.test_variants": 8})
    train(recipe, run, progress=False, data=data)
    return run


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and /dev/shm")
@pytest.mark.parametrize("target,sig,code", [
    ("group", signal.SIGINT, 130),  # Ctrl-C in a terminal
    ("main", signal.SIGINT, 130),
    ("main", signal.SIGTERM, 143),  # kill PID
])
def test_signal_during_lava_run_stops_it_cleanly(long_lava_run, tmp_path, target, sig, code):
    shm_before = _shm()
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as err:
        # its own session, so that a signal to its group does not reach pytest
        proc = subprocess.Popen([*CLI, "compare", str(long_lava_run), "--samples", "0", "--copies", "1", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_descendants(proc.pid)) < LAVA_WORKERS:
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, "Lava did not start"
            time.sleep(0.05)
        time.sleep(1.0)  # running, past its start
        workers = [_start_time(p) for p in _descendants(proc.pid)]
        assert proc.poll() is None, "Lava finished before the signal: the test needs a longer run"
        if target == "group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        sent = time.monotonic()
        assert proc.wait(timeout=30) == code, stderr.read_text()
        assert time.monotonic() - sent < 30
        deadline = time.monotonic() + 10  # the resource tracker exits once its pipe closes
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "worker processes survived"
        assert not _shm() - shm_before, "shared-memory segments were left in /dev/shm"
        lines = stderr.read_text().strip().splitlines()
        assert len(lines) == 1 and ("interrupted" if sig == signal.SIGINT else "terminated") in lines[0], lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
