"""The benchmarks run against the library as it is: a public function that changes its
signature breaks a benchmark at once, not at the next measurement."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_simulation_speed_runs_and_every_line_agrees():
    out = run_benchmark("benchmarks/simulation_speed.py", "--random", "mlp", "--samples", "4", "--copies", "2",
                        "--emulator-threads", "1", "--emulator-repeats", "1")
    lines = [line for line in out.splitlines() if line.startswith(("Lava", "emulator"))]
    assert len(lines) == 4  # stock K=1, event-driven K=1, K=2, emulator 1 thread
    assert all(line.split()[-3] == "1.0000" for line in lines), out


@pytest.mark.slow
def test_lava_step_profile_runs():
    assert "per step" in run_benchmark("benchmarks/lava_step_profile.py", "--random", "mlp", "--samples", "2")
