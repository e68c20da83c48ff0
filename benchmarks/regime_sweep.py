"""Where does the transfer gap appear? A one-factor-at-a-time sweep around a base recipe.

Each ``--vary key=v1,v2,...`` trains the base recipe with that one field changed, for every
optimizer in ``--optimizers`` (or every ``--method``) and every seed; ``--grid`` instead
varies all keys jointly.
Finished runs are skipped (metrics.json exists), so an interrupted sweep resumes. Prints a
JSON line per run and a markdown table of surrogate accuracy, hard accuracy and transfer gap per run.

    python benchmarks/regime_sweep.py --base train/quick.toml --out runs/sweep \\
        --vary model.alpha=0.25,0.5,1,2 --vary data.n_time_bins=10,30 --optimizers baseline,sast

The surrogate-family sweep (README, "What the studies found")::

    python benchmarks/regime_sweep.py --base train/demo-arctan.toml --out runs/sweep-family --grid \
        --vary model.surrogate=hardsigmoid,sigmoid,arctan --vary model.alpha=0.5,1,2 \
        --method baseline=optimizer.name=baseline --method sast-rho0.1=optimizer.name=sast,optimizer.rho=0.1 \
        --method sast-rho0.3=optimizer.name=sast,optimizer.rho=0.3 --method sast-rho0.5=optimizer.name=sast,optimizer.rho=0.5 \
        --figure runs/sweep-family/gap_vs_rho_by_family.png        # add --shard 0/2 and 1/2 to run two processes
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from sast_deploy.training.recipe import apply_overrides, recipe_from_dict, tomllib
from sast_deploy.analysis.report import family_figure, family_points
from sast_deploy.training.train import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="base recipe (TOML)")
    ap.add_argument("--out", required=True, help="directory for the runs")
    ap.add_argument("--vary", action="append", default=[], help="key=v1,v2,... (TOML literals)")
    ap.add_argument("--set", action="append", default=[], help="override applied to every run")
    ap.add_argument("--optimizers", default="baseline,sast", help="optimizer names (ignored when --method is given)")
    ap.add_argument("--method", action="append", default=[],
                    help="NAME=key=value,key=value: a named set of overrides (e.g. sast-rho0.3=optimizer.name=sast,optimizer.rho=0.3)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--grid", action="store_true", help="vary all keys jointly instead of one at a time")
    ap.add_argument("--shard", default="0/1", help="K/N: train only every N-th run from the K-th (parallel sweeps "
                    "into one --out); finished runs of other shards are still listed")
    ap.add_argument("--figure", help="PNG: transfer gap vs rho, one line per surrogate family and alpha (baseline dashed)")
    args = ap.parse_args(argv)

    base_raw = apply_overrides(tomllib.loads(Path(args.base).read_text()), args.set)
    axes = []
    for v in args.vary:
        key, values = v.split("=", 1)
        axes.append([(key, x) for x in _split(values)])
    if args.grid:
        variants = [list(c) for c in itertools.product(*axes)] if axes else [[]]
    else:
        variants = [[]] + [[kv] for axis in axes for kv in axis]
    methods = dict(_method(m) for m in args.method) or {o: [f"optimizer.name={o}"] for o in args.optimizers.split(",")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shard, n_shards = (int(v) for v in args.shard.split("/"))
    rows, index, runs = [], -1, []  # runs: as report.family_points reads them
    for variant in variants:
        for opt, method_sets in methods.items():
            for seed in args.seeds.split(","):
                sets = [f"{k}={x}" for k, x in variant] + method_sets + [f"training.seed={seed}"]
                recipe = recipe_from_dict(apply_overrides(base_raw, sets), source=args.base)
                tag = "base" if not variant else ",".join(f"{k.split('.')[-1]}={x}" for k, x in variant)
                run_dir = out / f"{tag}__{opt}__s{seed}".replace("/", "_")
                metrics_path = run_dir / "metrics.json"
                index += 1
                if metrics_path.exists():
                    m = json.loads(metrics_path.read_text())
                elif index % n_shards != shard:
                    continue
                else:
                    m = train(recipe, run_dir, progress=False).metrics
                row = {"variant": tag, "method": opt, "seed": int(seed),
                       **{k: m[k] for k in ("surrogate_accuracy", "hard_accuracy", "transfer_gap_pp", "train_seconds")}}
                rows.append(row)
                print(json.dumps(row), flush=True)
                runs.append({"optimizer": recipe.optimizer.name, "rho": recipe.optimizer.rho, "metrics": m,
                             "surrogate": recipe.model.surrogate, "alpha": recipe.model.alpha})
    print("\n| variant | method | seed | surrogate % | hard % | gap pp |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['method']} | {r['seed']} | {r['surrogate_accuracy']:.2f} | "
              f"{r['hard_accuracy']:.2f} | {r['transfer_gap_pp']:+.2f} |")
    if args.figure:
        points = family_points({"sweep": runs})
        print(f"wrote {family_figure(points, Path(args.figure), f'Transfer gap vs ρ per surrogate family (seeds: {args.seeds})')}")
    return 0


def _method(spec: str):
    """'NAME=k=v,k=v' -> (NAME, ['k=v', 'k=v'])."""
    name, _, sets = spec.partition("=")
    return name.strip(), _split(sets)


def _split(values: str):
    # split on commas outside brackets, so model.hidden=[64],[256] works
    parts, depth, cur = [], 0, ""
    for ch in values:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


if __name__ == "__main__":
    sys.exit(main())
