"""Emulator samples/s divided by Lava-simulator samples/s, measured in one run on the same
network and samples, with their agreement (fraction of samples with identical output spike
counts).

    python benchmarks/emulator_vs_lava.py --run runs/demo/sast [--samples 200]
    python benchmarks/emulator_vs_lava.py --random conv [--samples 200]     # no training needed
    python benchmarks/emulator_vs_lava.py --random mlp
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sast_deploy.export import read_netx, write_netx
from sast_deploy.model import ModelConfig, build_model
from sast_deploy.quantize import emulate_counts, quantize
from sast_deploy.simulate import simulate_lava


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a trained run directory (its test split is used)")
    src.add_argument("--random", choices=("mlp", "conv"), help="a random network on random spikes")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--time-bins", type=int, default=30, help="T for --random")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp())
    if args.run:
        from sast_deploy.compare import export_run
        from sast_deploy.data import load_dataset
        from sast_deploy.runs import load_run

        _, recipe, _ = load_run(args.run)
        net_path = Path(export_run(args.run, tmp / "net.h5")["net"])
        frames = load_dataset(recipe.data, progress=False)[1].frames[: args.samples]
        what = f"run {args.run}"
    else:
        torch.manual_seed(0)
        shape = (2, 34, 34)
        cfg = ModelConfig(hidden=(128,)) if args.random == "mlp" else ModelConfig(arch="conv", hidden=(), conv_channels=8, conv_stride=2, pool=2)
        model = build_model(cfg, shape, 10)
        with torch.no_grad():  # random weights strong enough to make every layer spike
            for p in model.parameters():
                p.mul_(4.0)
        net_path = write_netx(quantize(model), tmp / "net.h5")
        g = torch.Generator().manual_seed(1)
        frames = (torch.rand(args.samples, args.time_bins, *shape, generator=g) < 0.05).to(torch.uint8)
        what = f"random {args.random} network"

    qnet = read_netx(net_path)
    t0 = time.perf_counter()
    emu = emulate_counts(qnet, frames).numpy()
    emu_s = time.perf_counter() - t0
    sim = simulate_lava(net_path, frames.numpy(), progress=True)
    agree = float(np.mean(np.all(sim.counts == emu, axis=1)))
    n = len(frames)
    print(f"{what}: {n} samples, T={frames.shape[1]}, layers {[q.kind for q in qnet.layers]}")
    print(f"  output spikes per sample (mean): {sim.counts.sum(1).mean():.1f}")
    print(f"  emulator : {n / emu_s:9.1f} samples/s")
    print(f"  Lava     : {sim.samples_per_s:9.1f} samples/s ({sim.timesteps_per_s:.0f} timesteps/s, compile {sim.compile_seconds:.1f} s)")
    print(f"lava_emulator_agreement: {agree:.4f} ({int(round(agree * n))}/{n} samples with identical spike counts)")
    print(f"emulator/Lava samples/s ratio: {(n / emu_s) / sim.samples_per_s:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
