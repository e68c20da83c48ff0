"""Where a Lava time step goes: per process model, the time inside its step (run_spk) split
into the arithmetic, the wait for its input port and the send on its output port, and
every worker's CPU time (its main thread plus the helper threads Lava's channels run),
against the wall time of a step.

    python benchmarks/lava_step_profile.py --run runs/demo/sast [--samples 40] [--copies 1] [--stock]
    python benchmarks/lava_step_profile.py --random conv --stock     # no training needed

The process models are instrumented in this process before Lava forks its workers, so each
worker times itself and writes its totals when the runtime stops it. "compute CPU" is the
CPU time of run_spk minus its port calls; "recv wall" includes waiting for the upstream
process and "send wall" waiting for the downstream one to free the channel; the rest of a
worker's CPU ("all CPU" counts its main thread and its channels' helper threads) is the
synchronisation with the runtime service and between the models. The runtime service's CPU
has its own line. The instrumentation itself slows a step by 10-20 %.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # whole process, all threads
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def instrumented(out_dir: Path):
    """Patch Lava's process models and ports so that every forked worker times its steps."""
    from lava.magma.core.model.py.model import PyLoihiProcessModel
    from lava.magma.core.model.py.ports import PyInPortVectorDense, PyOutPortVectorDense
    from lava.magma.runtime.mgmt_token_enums import MGMT_COMMAND, enum_equal
    from lava.magma.runtime.runtime_services.runtime_service import LoihiPyRuntimeService

    stats = defaultdict(float)  # this worker's totals (each forked worker has its own copy)
    originals = {
        (PyLoihiProcessModel, "_spike"): PyLoihiProcessModel._spike,
        (PyLoihiProcessModel, "_stop"): PyLoihiProcessModel._stop,
        (PyInPortVectorDense, "recv"): PyInPortVectorDense.recv,
        (PyOutPortVectorDense, "send"): PyOutPortVectorDense.send,
        (LoihiPyRuntimeService, "_send_pm_cmd"): LoihiPyRuntimeService._send_pm_cmd,
    }

    def timed(key, fn):
        # wall time, and the CPU time of the calling thread (what the arithmetic costs,
        # without the time other processes held the core)
        def wrapper(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                stats[key] += time.perf_counter() - t0
                stats[key + "_cpu"] += time.thread_time() - c0
        return wrapper

    def spike(self):
        if "cpu0" not in stats:
            stats["cpu0"], stats["wall0"] = _cpu_s(), time.perf_counter()
        if "run_spk" not in self.__dict__:
            self.run_spk = timed("run_spk", self.run_spk)  # on the instance: run_spk differs per model
        stats["steps"] += 1
        originals[(PyLoihiProcessModel, "_spike")](self)
        stats["cpu_last"] = _cpu_s()  # CPU up to the last step, not the reading of results

    def stop(self):
        record = {k: v for k, v in stats.items()}
        out_port = getattr(self, "a_out", None) or getattr(self, "s_out", None)
        size = f" ({out_port.shape[0]} out)" if out_port is not None else ""
        record.update(model=type(self).__name__ + size, cpu=stats.get("cpu_last", 0.0) - stats.get("cpu0", 0.0))
        (out_dir / f"{os.getpid()}.json").write_text(json.dumps(record))
        originals[(PyLoihiProcessModel, "_stop")](self)

    def service_send(self, phase):
        # the service's CPU from the first to the last spiking phase it commands
        if enum_equal(phase, LoihiPyRuntimeService.Phase.SPK):
            stats.setdefault("service_cpu0", _cpu_s())
            stats["service_cpu_last"] = _cpu_s()
        if enum_equal(phase, MGMT_COMMAND.STOP):
            cpu = stats.get("service_cpu_last", 0.0) - stats.get("service_cpu0", 0.0)
            (out_dir / f"service-{os.getpid()}.json").write_text(json.dumps({"model": "runtime service", "cpu": cpu}))
        originals[(LoihiPyRuntimeService, "_send_pm_cmd")](self, phase)

    PyLoihiProcessModel._spike = spike
    PyLoihiProcessModel._stop = stop
    PyInPortVectorDense.recv = timed("recv", PyInPortVectorDense.recv)
    PyOutPortVectorDense.send = timed("send", PyOutPortVectorDense.send)
    LoihiPyRuntimeService._send_pm_cmd = service_send
    try:
        yield
    finally:
        for (cls, name), fn in originals.items():
            setattr(cls, name, fn)


def breakdown(out_dir: Path, steps: int, wall_per_step_us: float) -> str:
    """A table, µs per time step and process: the CPU time of its arithmetic (run_spk minus
    its port calls), the wall time it waits in recv and send, and all CPU time it used."""
    rows = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    lines = [f"wall time per step: {wall_per_step_us:8.1f} µs ({steps} steps)",
             f"{'process model':24s} {'compute CPU':>11s} {'recv wall':>10s} {'send wall':>10s} {'all CPU':>8s}   (µs per step)"]
    total_cpu = total_compute = 0.0
    for r in sorted(rows, key=lambda r: r["model"]):
        per = lambda key: 1e6 * r.get(key, 0.0) / steps  # noqa: E731
        total_cpu += per("cpu")
        if "run_spk" in r:
            compute = per("run_spk_cpu") - per("recv_cpu") - per("send_cpu")
            total_compute += compute
            lines.append(f"{r['model']:24s} {compute:11.1f} {per('recv'):10.1f} {per('send'):10.1f} {per('cpu'):8.1f}")
        else:
            lines.append(f"{r['model']:24s} {'':11s} {'':10s} {'':10s} {per('cpu'):8.1f}")
    lines.append(f"{'all processes':24s} {total_compute:11.1f} {'':10s} {'':10s} {total_cpu:8.1f}"
                 f"   model arithmetic: {100 * total_compute / max(total_cpu, 1e-9):.0f} % of the CPU time")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a trained run directory (its net.h5 or an export, its test split)")
    src.add_argument("--random", choices=("mlp", "conv", "gesture"), help="simulation_speed.py's random network on random spikes")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--stock", action="store_true", help="Lava's PyDenseModelBitAcc instead of the event-driven model")
    args = ap.parse_args(argv)
    from simulation_speed import random_network_and_frames, run_network_and_frames  # noqa: E402  (benchmarks/ on sys.path as a script)

    from sast_deploy.deploy.simulate import simulate_quantized

    if args.run:
        qnet, frames = run_network_and_frames(args.run, args.samples)
    else:
        qnet, frames = random_network_and_frames(args.random, args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        with instrumented(out):
            res = simulate_quantized(qnet, np.asarray(frames), progress=False, copies=args.copies, event_driven=not args.stock, chunks=1)
        steps = res.timesteps
        print(f"{'stock' if args.stock else 'event-driven'} models, K = {args.copies}: {res.samples_per_s:.1f} samples/s")
        print(breakdown(out, steps, 1e6 * res.seconds / steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
