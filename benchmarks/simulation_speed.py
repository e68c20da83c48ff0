"""Samples/s of every way this repository runs an exported network, side by side on the same
network and samples: Lava's simulator with its stock Dense model (PyDenseModelBitAcc, one
copy per graph), with the event-driven Dense model (one copy, then K copies per graph), and
the emulator. Each line gives the ratio to stock single-copy Lava and the agreement with it
(fraction of samples with identical output spike counts).

    python benchmarks/simulation_speed.py --run runs/demo/sast [--samples 200] [--copies 4,8,16,32]
    python benchmarks/simulation_speed.py --random conv          # no training needed

Measurements (2 shared CPU cores) are in the README, section "Simulation speed". Lava's
worker processes share the machine's cores; the event-driven models limit BLAS to one
thread per worker. Like Lava's graph build and compilation, the emulator's one-time weight
preparation (``FixedPointNet(qnet)``: netx's weight pipeline) is timed apart from its runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

from sast_deploy.deploy.emulator import FixedPointNet, emulate_counts
from sast_deploy.deploy.export import read_netx
from sast_deploy.deploy.quantize import QuantizedNet, load_spec, quantize
from sast_deploy.deploy.simulate import copies_limit, simulate_lava


def run_network_and_frames(run: str, samples: int) -> Tuple[QuantizedNet, torch.Tensor]:
    """A trained run's network (its net.h5, else quantized now) and its first test samples."""
    from sast_deploy.data.datasets import load_dataset
    from sast_deploy.training.runs import load_run

    model, recipe, _ = load_run(run)
    net = Path(run) / "net.h5"
    qnet = read_netx(net) if net.is_file() else quantize(model, load_spec())
    return qnet, load_dataset(recipe.data, progress=False)[1].frames[:samples]


def random_network_and_frames(kind: str, samples: int, time_bins: int = 30) -> Tuple[QuantizedNet, torch.Tensor]:
    """A random MLP (2312-128-10) or conv net with weights strong enough to make every layer
    spike, on random input spikes (5 % per bin, about N-MNIST's rate)."""
    from sast_deploy.training.model import ModelConfig, build_model

    torch.manual_seed(0)
    shape = (2, 34, 34)
    cfg = ModelConfig(hidden=(128,)) if kind == "mlp" else ModelConfig(arch="conv", hidden=(), conv_channels=8, conv_stride=2, pool=2)
    model = build_model(cfg, shape, 10)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    g = torch.Generator().manual_seed(1)
    return quantize(model), (torch.rand(samples, time_bins, *shape, generator=g) < 0.05).to(torch.uint8)


def best_of(repeats: int, fn: Callable[[], np.ndarray]) -> Tuple[float, np.ndarray]:
    """Shortest wall time (s) of ``repeats`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a trained run directory (its test split is used)")
    src.add_argument("--random", choices=("mlp", "conv"), help="a random network on random spikes")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--copies", default="4,8,16,32", help="K values for the K-copy graphs")
    ap.add_argument("--emulator-threads", default="1,2", help="torch threads for the emulator lines")
    ap.add_argument("--emulator-repeats", type=int, default=5, help="the emulator's time is the best of this many runs")
    args = ap.parse_args(argv)

    qnet, frames = run_network_and_frames(args.run, args.samples) if args.run else random_network_and_frames(args.random, args.samples)
    n = len(frames)
    print(f"{args.run or 'random ' + args.random}: {n} samples, T={frames.shape[1]}, layers "
          f"{[(q.kind, q.weight.shape) for q in qnet.layers]}, input spikes per bin {float(frames.float().mean()):.3f}", flush=True)
    stock = simulate_lava(qnet, frames.numpy(), progress=False, event_driven=False)
    rows: List[Tuple[str, float, np.ndarray]] = [("Lava, stock Dense model, K=1", stock.samples_per_s, stock.counts)]
    print(f"  (stock Lava compiled in {stock.compile_seconds:.1f} s; output spikes per sample {stock.counts.sum(1).mean():.1f})", flush=True)
    for k in [1] + [int(c) for c in args.copies.split(",") if c]:
        limit = copies_limit(qnet)  # None: no conv layers, no cap
        if limit is not None and k > limit:
            print(f"  (K={k} skipped: this network's conv groups allow at most {limit} copies per graph)")
            continue
        res = simulate_lava(qnet, frames.numpy(), progress=False, copies=k)
        rows.append((f"Lava, event-driven Dense, K={k}", res.samples_per_s, res.counts))
        print(f"  ({rows[-1][0]} compiled in {res.compile_seconds:.1f} s)", flush=True)
    t0 = time.perf_counter()
    emulator = FixedPointNet(qnet)
    print(f"  (emulator weights prepared in {time.perf_counter() - t0:.3f} s)", flush=True)
    for threads in [int(c) for c in args.emulator_threads.split(",")]:
        torch.set_num_threads(threads)
        emu_s, emu = best_of(args.emulator_repeats, lambda: emulate_counts(emulator, frames).numpy())
        rows.append((f"emulator, {threads} thread{'s' if threads > 1 else ''}", n / emu_s, emu))

    print(f"\n{'configuration':38s} {'samples/s':>10s} {'x stock K=1':>12s} {'agreement':>10s}")
    for name, rate, counts in rows:
        agree = float(np.mean(np.all(counts == stock.counts, axis=1)))
        print(f"{name:38s} {rate:10.1f} {rate / stock.samples_per_s:12.2f} {agree:10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
