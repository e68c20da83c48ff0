"""Lava simulator samples/s with K network copies in one graph (each copy a different
sample) against K = 1, measured in one run on the same samples, with agreement against the
emulator (fraction of samples with identical output spike counts).

    python benchmarks/batched_simulation.py --run runs/demo/sast --copies 1,4,8,16 [--samples 128]
    python benchmarks/batched_simulation.py --random conv --copies 1,4

Measured (2-core CPU, trained MLP 2312-128-10, T=30, 128 samples): block-diagonal weights
in netx's Dense synapse give 1.96x the samples/s of K = 1 at K = 2, 1.5x at K = 4 and 1.0x at
K = 8 (the Dense model's cost grows with K^2); in netx's Sparse synapse ~1.0x for K = 2..16
(the bit-accurate Sparse model slices its CSR matrix per step at a cost proportional to all
synapses). The default is therefore K = 2.
"""

from __future__ import annotations

import argparse
import tempfile
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
    src.add_argument("--run")
    src.add_argument("--random", choices=("mlp", "conv"))
    ap.add_argument("--copies", default="1,2,4")
    ap.add_argument("--samples", type=int, default=128)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp())
    if args.run:
        from sast_deploy.compare import export_run
        from sast_deploy.data import load_dataset
        from sast_deploy.runs import load_run

        _, recipe, _ = load_run(args.run)
        net = Path(export_run(args.run, tmp / "net.h5")["net"])
        frames = load_dataset(recipe.data, progress=False)[1].frames[: args.samples].numpy()
    else:
        torch.manual_seed(0)
        cfg = ModelConfig(hidden=(128,)) if args.random == "mlp" else ModelConfig(arch="conv", hidden=(), conv_channels=8, conv_stride=2, pool=2)
        model = build_model(cfg, (2, 34, 34), 10)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(4.0)
        net = write_netx(quantize(model), tmp / "net.h5")
        frames = (np.random.default_rng(1).random((args.samples, 30, 2, 34, 34)) < 0.05).astype(np.uint8)
    emu = emulate_counts(read_netx(net), torch.from_numpy(frames)).numpy()
    base = None
    for k in (int(c) for c in args.copies.split(",")):
        res = simulate_lava(net, frames, progress=False, copies=k)
        agree = float(np.mean(np.all(res.counts == emu, axis=1)))
        base = base or res.samples_per_s
        print(f"K={k:3d}: {res.samples_per_s:8.1f} samples/s  ({res.timesteps_per_s:7.1f} graph steps/s)  "
              f"ratio to K=1 {res.samples_per_s / base:5.2f}  agreement with emulator {agree:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
