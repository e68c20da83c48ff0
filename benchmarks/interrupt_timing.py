"""How a Lava run stops on a signal: ``sast-deploy compare RUN --samples 0 --copies K`` is sent
SIGTERM (to the main process), SIGINT to its process group (a terminal's Ctrl-C) or SIGINT to
the main process, ``--delay`` seconds after Lava's last worker process was forked, at K = 1 and
the default K, ``--repeats`` times each. Prints a markdown table: the seconds from the signal
until the process group is empty, how many stops took the fallback (stderr's "lava: stopping
the runtime ... killing its N worker processes"), the exit codes and the ``/dev/shm/psm_*``
segments of the run left behind. Linux only (reads /proc).

    python benchmarks/interrupt_timing.py --run RUN [--repeats 5] [--delay 0.5] [--source DIR]

RUN: a trained run, e.g. ``sast-deploy train --config quick --out RUN --set training.epochs=1
--set data.max_train=500``. ``--source``: the checkout whose ``sast_deploy`` runs the command
(default this one), to time another branch on the same run. Measurements are in the README,
section "Files are data; signals, locks and exit codes".
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
LAVA_WORKERS = 6  # process models, runtime service and shared-memory manager: at least this many children
FALLBACK = "lava: stopping the runtime"
SIGNALS = (  # (label, signal, to the whole process group)
    ("SIGTERM to the main process", signal.SIGTERM, False),
    ("SIGINT to the process group (Ctrl-C)", signal.SIGINT, True),
    ("SIGINT to the main process", signal.SIGINT, False),
)


def _stat(pid: int) -> Optional[List[str]]:
    """Fields 3... of /proc/PID/stat (state, ppid, pgrp, ...), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _group(pgid: int) -> List[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def _segments(pids: List[int]) -> Set[str]:
    """The /dev/shm/psm_* segments these processes have mapped (Lava's channels)."""
    names: Set[str] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names |= {line.split("/dev/shm/")[1].split()[0] for line in maps.splitlines() if "/dev/shm/psm_" in line}
    return names


@dataclass
class Stop:
    seconds: float  # from the signal until the process group is empty
    fallback: bool
    code: int
    segments_left: int
    lava_running: bool  # Lava's workers were alive when the signal was sent


def interrupt_once(run: Path, copies: int, sig: int, to_group: bool, delay: float, source: Path,
                   timeout: float = 120.0) -> Stop:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    with open(os.devnull, "w") as null, subprocess.Popen(
        [sys.executable, "-m", "sast_deploy.cli", "compare", str(run), "--samples", "0", "--copies", str(copies),
         "--quiet"],
        cwd=source, env=env, stdout=null, stderr=subprocess.PIPE, text=True,
        # its own process group, SIGINT at its default even when this script runs in the background
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        deadline = time.monotonic() + timeout
        count, since = 0, time.monotonic()
        while count < 1 + LAVA_WORKERS or time.monotonic() - since < 0.5:  # all forked: none new for 0.5 s
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"Lava did not start: {proc.communicate()[1][-2000:]}")
            now = len(_group(proc.pid))
            if now != count:
                count, since = now, time.monotonic()
            time.sleep(0.02)
        time.sleep(delay)
        members = _group(proc.pid)
        segments = _segments(members)
        lava_running = len(members) >= 1 + LAVA_WORKERS
        (os.killpg if to_group else os.kill)(proc.pid, sig)
        sent = time.monotonic()
        while _group(proc.pid) and time.monotonic() - sent < timeout:
            time.sleep(0.01)
        seconds = time.monotonic() - sent
        if _group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        stderr = proc.communicate()[1]
    left = {p.name for p in Path("/dev/shm").glob("psm_*")} & segments
    return Stop(seconds, FALLBACK in stderr, proc.returncode, len(left), lava_running)


def table(rows: List[Tuple[int, str, List[Stop]]]) -> str:
    lines = ["| copies per graph | signal | process group empty after (s): each run | median | fallback | "
             "exit codes | psm_* left | Lava running at the signal |",
             "|---|---|---|---|---|---|---|---|"]
    for copies, label, stops in rows:
        times = ", ".join(f"{s.seconds:.1f}" for s in stops)
        codes = ", ".join(sorted({str(s.code) for s in stops}))
        lines.append(f"| {copies} | {label} | {times} | {statistics.median(s.seconds for s in stops):.1f} | "
                     f"{sum(s.fallback for s in stops)} of {len(stops)} | {codes} | "
                     f"{sum(s.segments_left for s in stops)} | {sum(s.lava_running for s in stops)} of {len(stops)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a trained run directory")
    ap.add_argument("--copies", default=None, help="comma-separated K (default: 1 and the default K)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--delay", type=float, default=0.5, help="seconds after Lava's last worker was forked")
    ap.add_argument("--source", type=Path, default=REPO, help="checkout whose sast_deploy runs the command")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.source))
    from sast_deploy.deploy.simulate import DEFAULT_COPIES

    copies = [int(k) for k in args.copies.split(",")] if args.copies else [1, DEFAULT_COPIES]
    rows = []
    for k in copies:
        for label, sig, to_group in SIGNALS:
            stops = []
            for _ in range(args.repeats):
                stops.append(interrupt_once(args.run.resolve(), k, sig, to_group, args.delay, args.source.resolve()))
                print(f"K={k} {label}: {stops[-1]}", file=sys.stderr, flush=True)
            rows.append((k, label, stops))
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min), "
          f"signal {args.delay:.1f} s after Lava's last worker was forked, source {args.source.resolve()}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
