"""The transfer check that no tuner sees: recipes trained on the embedded ``synthetic-nmnist``,
scored on its test split and on the second digit source (``fontdigits-nmnist``, written once
as an N-MNIST tree and read through the real ``nmnist`` path).

    sast-deploy write-dataset fontdigits-nmnist --out /work/wt/data/fontdigits
    OMP_NUM_THREADS=1 python benchmarks/transfer_check.py --second-source /work/wt/data/fontdigits

Runs go to ``--out`` (default runs/transfer) as ``<recipe>/seed<k>``; finished runs are
skipped and an interrupted one resumes from its checkpoint, so rerunning continues where it
stopped. Each run's scores are written beside it (``transfer.json``, per second source) and reused. Prints a
markdown table, mean ± std over the seeds: surrogate, hard and emulator (deployed, Loihi 2
fixed point; equal to Lava bit for bit) accuracy on the embedded test split and on the second
source, and the transfer gap (embedded emulator − second-source emulator, pp).
``--set`` applies to every row (e.g. ``data.max_train=2000 training.epochs=5`` to scale all
rows down alike).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from sast_deploy.analysis.transfer import deployed_accuracy, evaluate_run_on
from sast_deploy.data.datasets import load_dataset
from sast_deploy.fileio import atomic_write_text
from sast_deploy.training.recipe import load_recipe
from sast_deploy.training.runs import load_run
from sast_deploy.training.train import train

ROOT = Path(__file__).resolve().parent.parent
#: row label -> (run folder, recipe in train/, overrides); train/demo.toml is train/nmnist.toml's
#: regime on the embedded data (checked and printed first)
RECIPES: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "nmnist.toml regime (hardsigmoid α 0.5, SAST ρ 0.5)": ("demo", "demo", ()),
    "same regime, baseline": ("baseline", "demo", ("optimizer.name=baseline",)),
    "same regime, ste": ("ste", "demo", ("optimizer.name=ste",)),
    "sigmoid α 2, baseline": ("sigmoid2-baseline", "demo",
                              ("model.surrogate=sigmoid", "model.alpha=2.0", "optimizer.name=baseline")),
    "sigmoid α 2, SAST ρ 0.05": ("sigmoid2-sast0.05", "demo",
                                 ("model.surrogate=sigmoid", "model.alpha=2.0", "optimizer.name=sast", "optimizer.rho=0.05")),
}
#: the tuner's recipe (``--tuned``, default train/tune-best-nmnist.toml), trained on the embedded
#: data whatever dataset it names
TUNED_LABEL, TUNED_FOLDER = "tuned (tune-best-nmnist.toml)", "tuned"
TUNED_OVERRIDES = ("data.name=synthetic-nmnist", 'data.data_dir=""')
COLUMNS = ("surrogate_accuracy", "hard_accuracy", "emulator_accuracy")


def same_regime(a: str, b: str) -> List[str]:
    """The model, optimizer and training fields where recipes ``a`` and ``b`` differ."""
    ra, rb = (load_recipe(ROOT / "train" / f"{n}.toml").to_dict() for n in (a, b))
    return [f"{sec}.{k}" for sec in ("model", "optimizer", "training")
            for k in sorted(set(ra[sec]) | set(rb[sec])) if ra[sec].get(k) != rb[sec].get(k) and k != "seed"]


def recipe_path(recipe: str) -> Path:
    """A recipe file, or the name of one in train/."""
    return Path(recipe) if recipe.endswith(".toml") else ROOT / "train" / f"{recipe}.toml"


def train_row(recipe: str, overrides: Sequence[str], seed: int, folder: Path, progress: bool) -> None:
    if (folder / "metrics.json").exists():
        return
    r = load_recipe(recipe_path(recipe), [*overrides, f"training.seed={seed}"])
    print(f"training {folder}", file=sys.stderr, flush=True)
    train(r, folder, progress=progress)


def score(folder: Path, second_source: str, progress: bool) -> Dict[str, object]:
    """{"embedded": accuracies, "second": accuracies} of a finished run, cached in its
    transfer.json per second source (a tree's path)."""
    cached_path = folder / "transfer.json"
    cached = json.loads(cached_path.read_text()) if cached_path.exists() else {}
    if second_source in cached:
        return cached[second_source]
    model, recipe, metrics = load_run(folder)
    _, test = load_dataset(recipe.data, progress=progress)
    embedded = {k: float(metrics[k]) for k in COLUMNS[:2]}
    embedded["emulator_accuracy"] = deployed_accuracy(model, test, folder)
    second = evaluate_run_on(folder, ["data.name=nmnist", f"data.data_dir={second_source}"], progress=progress)
    cached[second_source] = {"embedded": embedded, "second": {k: float(second[k]) for k in COLUMNS},
                             "n_embedded": len(test), "n_second": second["n_samples"]}
    atomic_write_text(cached_path, json.dumps(cached, indent=2) + "\n")
    return cached[second_source]


def mean_std(values: Sequence[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def table(rows: Dict[str, List[Dict]]) -> str:
    head = ("| recipe | seeds | embedded surrogate % | embedded hard % | embedded emulator % | "
            "second surrogate % | second hard % | second emulator % | transfer gap pp |")
    lines = [head, "|" + "---|" * 9]
    for label, scores in rows.items():
        if not scores:
            continue
        cells = [mean_std([s[part][k] for s in scores]) for part in ("embedded", "second") for k in COLUMNS]
        gap = mean_std([s["embedded"]["emulator_accuracy"] - s["second"]["emulator_accuracy"] for s in scores])
        lines.append(f"| {label} | {len(scores)} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--second-source", required=True, help="root of the fontdigits N-MNIST tree (write-dataset --out)")
    ap.add_argument("--out", default="runs/transfer")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], help="override applied to every row")
    ap.add_argument("--train-only", action="store_true", help="train every row, score none")
    ap.add_argument("--score-only", action="store_true", help="score and tabulate the finished runs, train none")
    ap.add_argument("--tuned", default=str(ROOT / "train" / "tune-best-nmnist.toml"),
                    help="the tuner's recipe, a row when the file exists (default train/tune-best-nmnist.toml)")
    ap.add_argument("--only", help="train only the rows whose run folder is this (e.g. tuned)")
    ap.add_argument("--shard", default="0/1", help="K/N: train only every N-th run from the K-th (N processes into one --out)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    differ = same_regime("demo", "nmnist")
    print(f"train/demo.toml vs train/nmnist.toml (model, optimizer, training): "
          f"{'same regime' if not differ else 'differ in ' + ', '.join(differ)}")
    recipes = dict(RECIPES)
    if Path(args.tuned).is_file():
        recipes[TUNED_LABEL] = (TUNED_FOLDER, args.tuned, TUNED_OVERRIDES)
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    if not args.score_only:  # seed by seed across the rows, so that an early stop leaves every row a seed
        shard, n_shards = (int(v) for v in args.shard.split("/"))
        jobs = [(seed, row) for seed in seeds for row in recipes.values() if args.only in (None, row[0])]
        for seed, (folder_name, recipe, overrides) in jobs[shard::n_shards]:
            train_row(recipe, [*overrides, *args.set], seed, out / folder_name / f"seed{seed}", not args.quiet)
    rows: Dict[str, List[Dict]] = {label: [] for label in recipes}
    for label, (folder_name, _, _) in recipes.items():
        for seed in seeds:
            folder = out / folder_name / f"seed{seed}"
            if not args.train_only and (folder / "metrics.json").exists():
                rows[label].append(score(folder, args.second_source, not args.quiet))
    if not args.train_only:
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
