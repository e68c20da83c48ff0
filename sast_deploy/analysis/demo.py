"""What ``make demo`` runs: the paper's effect and the recipe to deploy, side by side.

* the paper's effect: baseline and SAST in the regime where SAST's effect on the transfer gap
  is largest (``train/demo.toml``), and beside it the arctan regime of the first study
  (``train/demo-arctan.toml``);
* the recipe to deploy: ``train/deploy-nmnist.toml``, chosen for the validation accuracy of the
  deployed network (``sast-deploy tune``, then a 3-seed check; README, "Choosing a recipe"),
  trained as it stands.

Every run is then exported, emulated on the whole test split and run on Lava on a subset
(:func:`sast_deploy.deploy.compare.compare_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..training.recipe import Recipe, load_recipe

PAPER_METHODS = ("baseline", "sast")  # each paper recipe is trained with both


@dataclass(frozen=True)
class DemoRun:
    """One run of the demo: its table label, its recipe and its folder (``OUT/<recipe>/<method>``)."""

    label: str
    recipe: Recipe
    path: Path


def _label(recipe: Recipe, role: str) -> str:
    m, opt = recipe.model, recipe.optimizer
    method = {"sast": f"SAST ρ = {opt.rho:g}", "sam": f"SAM ρ = {opt.rho:g}"}.get(opt.name, opt.name)
    return f"{role}{recipe.name}: {m.surrogate} σ, α = {m.alpha:g}, {method}"


def plan_demo(out: str | Path, paper: Sequence[Tuple[Path, Sequence[str]]], deploy: Optional[Path]) -> List[DemoRun]:
    """The demo's runs, every recipe read and checked before the first one trains: each paper
    recipe (path, overrides) with the baseline and SAST, then the recipe to deploy as it stands."""
    out = Path(out)
    runs = []
    for path, overrides in paper:
        for opt in PAPER_METHODS:
            recipe = load_recipe(path, [f"optimizer.name={opt}", *overrides])
            runs.append(DemoRun(_label(recipe, ""), recipe, out / recipe.name / opt))
    if deploy is not None:
        recipe = load_recipe(deploy)
        runs.append(DemoRun(_label(recipe, "to deploy: "), recipe, out / recipe.name / recipe.optimizer.name))
    return runs


def train_demo(runs: Sequence[DemoRun], progress: bool = True, log=print) -> List[Dict[str, object]]:
    """Train (or resume) every run; the metrics of each. Runs on one dataset share its frames."""
    from ..data.datasets import load_dataset
    from ..training.train import train

    metrics, data, data_cfg = [], None, None
    for run in runs:
        if run.recipe.data != data_cfg:
            data, data_cfg = load_dataset(run.recipe.data, progress=progress), run.recipe.data
        log(f"\n== {run.label} ({run.recipe.training.epochs} epochs) -> {run.path}")
        metrics.append(train(run.recipe, run.path, progress=progress, data=data).metrics)
    return metrics


def training_markdown(runs: Sequence[DemoRun], metrics: Sequence[Dict[str, object]]) -> str:
    """The transfer-gap table (test split) of the trained runs, with the validation split's hard accuracy."""
    lines = ["| recipe and method | surrogate acc % | hard acc % | transfer gap pp | validation hard % | train s |",
             "|---|---|---|---|---|---|"]
    for run, m in zip(runs, metrics):
        val = m.get("validation") or {}
        val_hard = f"{val['hard_accuracy']:.2f}" if "hard_accuracy" in val else "-"
        lines.append(f"| {run.label} | {m['surrogate_accuracy']:.2f} | {m['hard_accuracy']:.2f} | "
                     f"{m['transfer_gap_pp']:+.2f} | {val_hard} | {m['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def deploy_demo(runs: Sequence[DemoRun], lava_samples: int, progress: bool = True, log=print) -> List[Tuple[str, dict]]:
    """Export, emulate and simulate every run (``compare_run``); (label, compare.json) rows."""
    from ..deploy.compare import compare_run

    compared = []
    for run in runs:
        log(f"\n== {run.label}: export to Loihi 2 fixed point, emulate the test split, run {lava_samples} samples on Lava")
        compared.append((run.label, compare_run(run.path, samples=lava_samples, progress=progress)))
    return compared
