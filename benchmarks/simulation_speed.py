"""Samples/s of every way this repository runs an exported network, side by side on the same
network and samples: Lava's simulator with its stock models (PyDenseModelBitAcc,
PyConvModelFixed; one copy per graph), with the event-driven models (one copy, then K copies
per graph), and the emulator. Each line gives the ratio to stock single-copy Lava and the
agreement with it (fraction of samples with identical output spike counts), and the CPU time
per sample (all processes), which other jobs on a shared machine move far less than the
wall time.

    python benchmarks/simulation_speed.py --run runs/demo/sast [--samples 200] [--copies 4,8,16,32]
    python benchmarks/simulation_speed.py --random conv,gesture --samples 256 --copies 16,32,64,128   # no training needed

Measurements (2 shared CPU cores) are in the README, section "Simulation speed". Lava's
worker processes share the machine's cores; the event-driven models limit BLAS to one
thread per worker. Like Lava's graph build and compilation, the emulator's one-time weight
preparation (``FixedPointNet(qnet)``: netx's weight pipeline) is timed apart from its runs.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

from sast_deploy.deploy.emulator import FixedPointNet, emulate_counts
from sast_deploy.deploy.export import read_netx
from sast_deploy.deploy.quantize import QuantizedNet, load_spec, quantize
from sast_deploy.deploy.simulate import simulate_quantized


def run_network_and_frames(run: str, samples: int) -> Tuple[QuantizedNet, torch.Tensor]:
    """A trained run's network (its net.h5, else quantized now) and its first test samples."""
    from sast_deploy.data.datasets import load_dataset
    from sast_deploy.training.runs import load_run

    model, recipe, _ = load_run(run)
    net = Path(run) / "net.h5"
    qnet = read_netx(net) if net.is_file() else quantize(model, load_spec())
    return qnet, load_dataset(recipe.data, progress=False)[1].frames[:samples]


# Random networks: (ModelConfig fields, input (P, H, W), classes, weight gain). "gesture" is
# the net train/dvsgesture.toml trains (conv 32 channels 5x5 stride 4, dense 64, 11 classes
# on the 2x32x32 downsampled sensor); "conv" a conv 5x5 stride 2, 8 channels, 2x2 sum-pool, dense 10.
RANDOM_NETWORKS = {
    "mlp": (dict(hidden=(128,)), (2, 34, 34), 10, 4.0),
    "conv": (dict(arch="conv", hidden=(), conv_channels=8, conv_stride=2, pool=2), (2, 34, 34), 10, 4.0),
    "gesture": (dict(arch="conv", hidden=(64,), conv_channels=32, conv_kernel=5, conv_stride=4, pool=0),
                (2, 32, 32), 11, 3.0),
}


def random_network_and_frames(kind: str, samples: int, time_bins: int = 30) -> Tuple[QuantizedNet, torch.Tensor]:
    """A random network of :data:`RANDOM_NETWORKS` with weights strong enough to make every
    layer spike, on random input spikes (5 % per bin, about N-MNIST's rate)."""
    from sast_deploy.training.model import ModelConfig, build_model

    fields, shape, classes, gain = RANDOM_NETWORKS[kind]
    torch.manual_seed(0)
    model = build_model(ModelConfig(**fields), shape, classes)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
    g = torch.Generator().manual_seed(1)
    return quantize(model), (torch.rand(samples, time_bins, *shape, generator=g) < 0.05).to(torch.uint8)


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (Lava's worker processes, once the
    runtime has stopped): unlike wall time, barely moved by other jobs on the machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(repeats: int, fn: Callable[[], np.ndarray]) -> Tuple[float, float, np.ndarray]:
    """Shortest wall time (s) of ``repeats`` calls, the CPU time (s) of that call, and the last result."""
    best, best_cpu, out = float("inf"), float("nan"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        out = fn()
        if time.perf_counter() - t0 < best:
            best, best_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return best, best_cpu, out


Row = Tuple[str, float, float, np.ndarray]  # (configuration, samples/s, CPU ms per sample, counts)


def lava_row(name: str, qnet: QuantizedNet, frames: torch.Tensor, **kwargs) -> Row:
    """One Lava configuration: samples/s of its run (after build and compile, as Lava times
    it), and CPU ms per sample of the whole call (build, compile and workers included)."""
    c0 = cpu_seconds()
    res = simulate_quantized(qnet, frames.numpy(), progress=False, **kwargs)
    cpu = 1e3 * (cpu_seconds() - c0) / res.samples
    print(f"  ({name}: compiled in {res.compile_seconds:.1f} s, ran in {res.seconds:.1f} s)", flush=True)
    return name, res.samples_per_s, cpu, res.counts


def benchmark(label: str, qnet: QuantizedNet, frames: torch.Tensor, copies: List[int], threads: List[int],
              repeats: int) -> List[Row]:
    """Every configuration on one network, stock single-copy Lava first."""
    n = len(frames)
    print(f"{label}: {n} samples, T={frames.shape[1]}, layers {[(q.kind, q.weight.shape) for q in qnet.layers]}, "
          f"input spikes per bin {float(frames.float().mean()):.3f}", flush=True)
    rows = [lava_row("Lava, stock models, K=1", qnet, frames, event_driven=False)]
    print(f"  (output spikes per sample {rows[0][3].sum(1).mean():.1f})", flush=True)
    for k in [1] + copies:
        rows.append(lava_row(f"Lava, event-driven models, K={k}", qnet, frames, copies=k))
    t0 = time.perf_counter()
    emulator = FixedPointNet(qnet)
    print(f"  (emulator weights prepared in {time.perf_counter() - t0:.3f} s)", flush=True)
    for t in threads:
        torch.set_num_threads(t)
        emu_s, emu_cpu, emu = best_of(repeats, lambda: emulate_counts(emulator, frames).numpy())
        rows.append((f"emulator, {t} thread{'s' if t > 1 else ''}", n / emu_s, 1e3 * emu_cpu / n, emu))
    return rows


def print_table(label: str, rows: List[Row]) -> None:
    stock_rate, stock_cpu, stock_counts = rows[0][1], rows[0][2], rows[0][3]
    print(f"\n{label}\n{'configuration':36s} {'samples/s':>10s} {'x stock K=1':>12s} {'agreement':>10s} "
          f"{'CPU ms/sample':>14s} {'x stock CPU':>12s}")
    for name, rate, cpu, counts in rows:
        agree = float(np.mean(np.all(counts == stock_counts, axis=1)))
        print(f"{name:36s} {rate:10.1f} {rate / stock_rate:12.2f} {agree:10.4f} {cpu:14.2f} {stock_cpu / cpu:12.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a trained run directory (its test split is used)")
    src.add_argument("--random", help=f"random networks on random spikes, comma-separated: {', '.join(RANDOM_NETWORKS)}")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--copies", default="4,8,16,32", help="K values for the K-copy graphs")
    ap.add_argument("--emulator-threads", default="1,2", help="torch threads for the emulator lines")
    ap.add_argument("--emulator-repeats", type=int, default=5, help="the emulator's time is the best of this many runs")
    args = ap.parse_args(argv)
    copies = [int(c) for c in args.copies.split(",") if c]
    threads = [int(c) for c in args.emulator_threads.split(",") if c]

    if args.run:
        nets = [(args.run, *run_network_and_frames(args.run, args.samples))]
    else:
        kinds = [k for k in args.random.split(",") if k]
        unknown = sorted(set(kinds) - set(RANDOM_NETWORKS))
        if unknown:
            ap.error(f"--random: unknown networks {unknown}; known: {', '.join(RANDOM_NETWORKS)}")
        nets = [(f"random {k}", *random_network_and_frames(k, args.samples)) for k in kinds]
    tables = [(label, benchmark(label, qnet, frames, copies, threads, args.emulator_repeats)) for label, qnet, frames in nets]
    for label, rows in tables:
        print_table(label, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
