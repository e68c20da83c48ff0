"""Per-step wall time of SAST against the baseline (one forward-backward pass), measured in
one run on the same model, data and thread settings. Expected ratio: near 2.0 (SAST does two
forward-backward passes per step; the perturbation itself is cheap).

    python benchmarks/sast_step_time.py [--steps 30] [--batch 128] [--time-bins 30] [--hidden 128] [--perturb-every 1,2,5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sast_deploy.training.model import ModelConfig, build_model
from sast_deploy.training.optim import SAST
from sast_deploy.training.train import plain_step, reuse_step, sast_step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per method (after 3 warm-up steps)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--time-bins", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--density", type=float, default=0.05, help="input spike density (synthetic-nmnist: ~0.05)")
    ap.add_argument("--perturb-every", default="1", help="k values of LookSAM-style SAST to time, e.g. 1,2,5")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    shape = (2, 34, 34)
    cfg = ModelConfig(hidden=(args.hidden,))
    g = torch.Generator().manual_seed(1)

    def batch():
        x = (torch.rand(args.batch, args.time_bins, *shape, generator=g) < args.density).float()
        return x, torch.randint(0, 10, (args.batch,), generator=g)

    batches = [batch() for _ in range(8)]
    ks = [int(k) for k in args.perturb_every.split(",")]
    base_model = build_model(cfg, shape, 10)
    adam = torch.optim.Adam(base_model.parameters(), lr=1e-3)
    models = {k: build_model(cfg, shape, 10) for k in ks}
    sasts = {}
    for k, m in models.items():
        m.load_state_dict(base_model.state_dict())
        sasts[k] = SAST(m.parameters(), rho=0.3, lr=1e-3)

    def base_step(i):
        plain_step(base_model, adam, batches[i % 8], "surrogate", 1.0)

    def sast_fn(k):
        def step(i):
            fn = sast_step if i % k == 0 else reuse_step
            fn(models[k], sasts[k], batches[i % 8], batches[(i + 3) % 8], "surrogate", 1.0)
        return step

    methods = [("baseline", base_step)] + [(f"sast k={k}", sast_fn(k)) for k in ks]
    times = {name: [] for name, _ in methods}
    for i in range(3):  # warm-up
        for _, fn in methods:
            fn(i)
    for i in range(args.steps):  # interleaved, so drifts in machine load hit all alike
        for name, fn in methods:
            t0 = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - t0)

    # mean, not median: with k > 1 the steps alternate between two costs
    mean = {k: statistics.mean(v) for k, v in times.items()}
    print(f"MLP 2312-{args.hidden}-10, T={args.time_bins}, batch {args.batch}, {torch.get_num_threads()} threads, {args.steps} steps each")
    for name, _ in methods:
        print(f"  {name:10s} mean {1000 * mean[name]:8.1f} ms/step   ({args.batch / mean[name]:7.0f} samples/s)")
    for k in ks:
        label = "SAST/baseline" if k == 1 else f"SAST(k={k})/baseline"
        print(f"{label} per-step wall-time ratio: {mean[f'sast k={k}'] / mean['baseline']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
