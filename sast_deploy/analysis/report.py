"""Stage 9, report: the study's table (mean ± std over seeds), mechanism diagnostics and
figures, from the run directories a study wrote. ``report.md``, ``report.json`` and PNGs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import RunError
from ..fileio import atomic_write_bytes, atomic_write_text, read_json
from .study import Method
from ..validation import file_data, output_data, validated

SHARPNESS_RHO = 0.05  # perturbation norm of the sharpness estimate (weight units), the same for all runs
DIAGNOSTICS_VERSION = 2  # 2: margins in surrogate mode too, band fractions; older caches are recomputed
MODES = (("surrogate_accuracy", "surrogate"), ("hard_accuracy", "hard (float)"),
         ("emulator_accuracy", "hard (Loihi 2 emulator)"), ("lava_accuracy", "Lava simulator (subset)"))


def _ms(values) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return (float("nan"), float("nan"))
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


@file_data
@dataclass(frozen=True)
class StudyIndex:
    """study.json, as :func:`sast_deploy.analysis.study.run_study` writes it."""

    name: str
    base: str
    seeds: Tuple[int, ...]
    lava_samples: int
    methods: Tuple[Method, ...]


@output_data
@dataclass(frozen=True)
class CompareSummary:
    """The fields of compare.json the report reads (accuracies in percent)."""

    emulator_accuracy: float
    lava_accuracy: float
    lava_emulator_agreement: float


@output_data
@dataclass(frozen=True)
class NotDeployed:
    """compare.json of a run the target cannot represent (:func:`sast_deploy.deploy.compare.record_undeployable`)."""

    deployable: bool
    reason: str


def _read_compare(path: Path) -> Dict[str, Any]:
    compared = read_json(path, "comparison")
    deployable = not isinstance(compared, dict) or compared.get("deployable", True) is not False
    validated(CompareSummary if deployable else NotDeployed, compared, str(path), RunError)
    return compared


def deployed(runs: List[dict]) -> List[dict]:
    """The runs whose network the target could represent (compare.json ``deployable`` true or absent)."""
    return [r for r in runs if r["compare"].get("deployable", True)]


@output_data
@dataclass(frozen=True)
class RunMetrics:
    """The fields of a run's metrics the report reads (accuracies in percent, times in s)."""

    surrogate_accuracy: float
    hard_accuracy: float
    transfer_gap_pp: float
    train_seconds: float
    epochs: int
    history: Tuple[Dict[str, Any], ...]


def _cache_key(cache: Path) -> Optional[tuple]:
    """(radius, version) of cached diagnostics (None: no usable cache, recompute)."""
    try:
        value = json.loads(cache.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (value.get("sharpness_rho"), value.get("version")) if isinstance(value, dict) else None


def collect(study_dir: str | Path, diagnostics: bool = True) -> Dict[str, object]:
    """Per method: the runs' metrics, comparisons and diagnostics (cached in each run)."""
    from ..data.datasets import load_dataset
    from .diagnostics import diagnose
    from ..training.runs import load_run

    study_dir = Path(study_dir)
    index = read_json(study_dir / "study.json", "study index")
    validated(StudyIndex, index, str(study_dir / "study.json"), RunError)
    methods = {}
    for m in index["methods"]:
        runs = []
        for seed in index["seeds"]:
            d = study_dir / m["name"] / f"seed{seed}"
            if not (d / "compare.json").exists():
                continue  # not finished: the report covers what exists
            model, recipe, metrics = load_run(d)
            validated(RunMetrics, metrics, str(d / "model.pt"), RunError, prefix="metrics")
            compared = _read_compare(d / "compare.json")
            run = {"seed": seed, "dir": str(d), "metrics": metrics, "compare": compared,
                   "rho": recipe.optimizer.rho, "optimizer": recipe.optimizer.name,
                   "surrogate": recipe.model.surrogate, "alpha": recipe.model.alpha}
            if diagnostics:
                cache = d / "diagnostics.json"
                if _cache_key(cache) != (SHARPNESS_RHO, DIAGNOSTICS_VERSION):
                    train, test = load_dataset(recipe.data, progress=False)
                    # one radius for every method, so that sharpness compares across methods
                    diag = diagnose(model, train, test, SHARPNESS_RHO, recipe.training.loss_scale)
                    atomic_write_text(cache, json.dumps({"sharpness_rho": SHARPNESS_RHO, "version": DIAGNOSTICS_VERSION, **diag}) + "\n")
                run["diagnostics"] = json.loads(cache.read_text())
            runs.append(run)
        if runs:
            methods[m["name"]] = runs
    if not methods:
        raise RunError(f"{study_dir}: no finished runs (run sast-deploy study first)")
    return {"study": index, "methods": methods}


def summarize(data: Dict[str, object]) -> List[Dict[str, object]]:
    base = data["methods"].get("baseline")
    base_time = statistics.mean(r["metrics"]["train_seconds"] for r in base) if base else None
    rows = []
    for name, runs in data["methods"].items():
        row = {"method": name, "seeds": len(runs)}
        for key in ("surrogate_accuracy", "hard_accuracy", "transfer_gap_pp"):
            row[key] = _ms([r["metrics"][key] for r in runs])
        ok = deployed(runs)  # the deployed modes average the runs that could be deployed
        row["not_deployable"] = len(runs) - len(ok)
        row["emulator_accuracy"] = _ms([r["compare"]["emulator_accuracy"] for r in ok])
        row["lava_accuracy"] = _ms([r["compare"]["lava_accuracy"] for r in ok])
        row["lava_emulator_agreement"] = min((r["compare"]["lava_emulator_agreement"] for r in ok), default=float("nan"))
        t = statistics.mean(r["metrics"]["train_seconds"] for r in runs)
        row["train_time_vs_baseline"] = t / base_time if base_time else float("nan")
        if all("diagnostics" in r for r in runs):
            d = [r["diagnostics"] for r in runs]
            row["spectral_norm_max"] = _ms([max(x["spectral_norms"]) for x in d])
            row["input_gradient_norm"] = _ms([x["input_gradient_norm"] for x in d])
            row["sharpness"] = _ms([x["sharpness"] for x in d])
            row["fence_sitters"] = _ms([x["margins"]["fence_sitter_fraction"] for x in d])
        rows.append(row)
    return rows


def markdown(rows: List[Dict[str, object]], data: Dict[str, object]) -> str:
    f = lambda ms, d=2: f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"  # noqa: E731
    lines = [f"# Transfer-gap study: {data['study']['name']}", "",
             f"Base recipe `{data['study']['base']}`; mean ± std over seeds; accuracies in %, gaps in pp; "
             f"Lava on a seeded class-stratified subset of {data['study']['lava_samples']} test samples.", "",
             "| method | seeds | surrogate | hard (float) | transfer gap | hard (Loihi 2 emulator) | Lava | Lava = emulator (min) | train time vs baseline |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = f"{r['seeds']} ({r['not_deployable']} not deployable)" if r["not_deployable"] else f"{r['seeds']}"
        lines.append(f"| {r['method']} | {seeds} | {f(r['surrogate_accuracy'])} | {f(r['hard_accuracy'])} | "
                     f"{f(r['transfer_gap_pp'])} | {f(r['emulator_accuracy'])} | {f(r['lava_accuracy'])} | "
                     f"{r['lava_emulator_agreement']:.4f} | {r['train_time_vs_baseline']:.2f} |")
    failed = not_deployable(data)
    if failed:
        lines += ["", "## Runs that cannot be deployed", "",
                  "Their float accuracies count in the table above; the emulator and Lava columns average the others.", "",
                  "| method | seed | reason |", "|---|---|---|"]
        lines += [f"| {x['method']} | {x['seed']} | {x['reason']} |" for x in failed]
    if all("sharpness" in r for r in rows):
        lines += ["", "## Mechanism diagnostics", "",
                  f"| method | max spectral norm | input-gradient norm | sharpness (loss rise at ‖ε‖ = {SHARPNESS_RHO}) | fence-sitters (\\|v'−θ\\|/θ < 0.1) |",
                  "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {f(r['spectral_norm_max'])} | {f(r['input_gradient_norm'], 3)} | "
                         f"{f(r['sharpness'], 4)} | {f(r['fence_sitters'], 4)} |")
    return "\n".join(lines) + "\n"


def not_deployable(data: Dict[str, object]) -> List[Dict[str, object]]:
    """Per run that cannot be deployed: method, seed, run directory and the reason."""
    return [{"method": name, "seed": r["seed"], "dir": r["dir"], "reason": r["compare"]["reason"]}
            for name, runs in data["methods"].items() for r in runs if not r["compare"].get("deployable", True)]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def family_points(methods: Dict[str, List[dict]]) -> Dict[str, Dict[float, List[float]]]:
    """Transfer gaps (pp) per surrogate family ("hardsigmoid α=0.5") and per rho of the SAST
    runs, rho 0 being the plain baseline, one value per seed. Calibrated runs and runs with
    more epochs than the family's shortest (the compute-matched baseline) are left out."""
    runs = [r for rs in methods.values() for r in rs
            if r["optimizer"] in ("sast", "baseline") and "calibrated_from" not in r["metrics"]]
    family = lambda r: f"{r['surrogate']} α={r['alpha']:g}"  # noqa: E731
    epochs: Dict[str, int] = {}
    for r in runs:
        epochs[family(r)] = min(epochs.get(family(r), r["metrics"]["epochs"]), r["metrics"]["epochs"])
    points: Dict[str, Dict[float, List[float]]] = {}
    for r in runs:
        if r["metrics"]["epochs"] == epochs[family(r)]:
            rho = r["rho"] if r["optimizer"] == "sast" else 0.0
            points.setdefault(family(r), {}).setdefault(rho, []).append(r["metrics"]["transfer_gap_pp"])
    return points


def family_figure(points: Dict[str, Dict[float, List[float]]], path: Path, title: str) -> Path:
    """Gap against rho, one line per surrogate family (mean ± std over seeds); each family's
    baseline (rho = 0) is a dashed line of its colour, as rho = 0 has no place on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.4))
    all_rhos = sorted({rho for by_rho in points.values() for rho in by_rho if rho > 0})
    for i, (family, by_rho) in enumerate(sorted(points.items())):
        rhos = sorted(rho for rho in by_rho if rho > 0)
        color = f"C{i % 10}"
        if rhos:
            ax.errorbar(rhos, [np.mean(by_rho[r]) for r in rhos], yerr=[np.std(by_rho[r]) for r in rhos],
                        marker="o", capsize=3, color=color, label=family)
        if 0.0 in by_rho:
            ax.axhline(np.mean(by_rho[0.0]), color=color, linestyle="--", label=None if rhos else f"{family} (baseline only)")
    ax.plot([], [], color="gray", linestyle="--", label="dashed: that family's baseline")
    if all_rhos:
        ax.set_xscale("log")
        ax.set_xticks(all_rhos, [f"{rho:g}" for rho in all_rhos])
        ax.minorticks_off()
    ax.set_xlabel("SAST perturbation radius ρ (weight units, log scale)")
    ax.set_ylabel("transfer gap (pp): surrogate − hard accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: clear of the lines
    fig.tight_layout()
    return _save(fig, path)


def _margin_figure(methods: Dict[str, List[dict]], path: Path) -> Path:
    """Margin densities per method in surrogate and hard mode, with the band |v' - θ| < 1/α
    (the hard sigmoid's support) and the fence-sitter band shaded, and the per-layer fractions
    below / inside / above the band in the legend."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True)
    for ax, key, mode in ((axes[0], "margins_surrogate", "surrogate-forward"), (axes[1], "margins", "hard spikes")):
        half = None
        for name, runs in methods.items():
            d = [r["diagnostics"][key] for r in runs]
            edges = np.asarray(d[0]["edges"])
            dens = np.mean([x["density"] for x in d], axis=0)
            layers = len(d[0]["band_per_layer"])
            split = " | ".join(
                "L{}: {:.0f}/{:.0f}/{:.0f}".format(i + 1, *(100 * np.mean([x["band_per_layer"][i][k] for x in d])
                                                            for k in ("below", "inside", "above")))
                for i in range(layers))
            ax.step(edges[:-1], dens, where="post", label=f"{name} (% below/in/above band: {split})")
            half = d[0]["band_half_width_margin"]
        ax.axvspan(-half, half, color="gray", alpha=0.12, label="band |v'−θ| < 1/α (hard sigmoid's support)")
        ax.axvspan(-0.1, 0.1, color="red", alpha=0.15, label="fence-sitters (|v'−θ|/θ < 0.1)")
        ax.set_yscale("log")
        ax.set_xlabel("membrane margin (v' − θ) / θ, all layers and steps (clipped to ±3)")
        ax.set_title(f"Membrane margins on test data, {mode}")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: clear of the curves
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of neuron-steps per bin")
    fig.tight_layout()
    return _save(fig, path)


def _rho_axis(ax, rhos: Sequence[float]) -> None:
    """A log axis of the SAST radius, labelled at the radii that were run (not at decades)."""
    ax.set_xscale("log")
    ax.set_xticks(rhos, [f"{rho:g}" for rho in rhos])
    ax.minorticks_off()
    ax.set_xlabel("SAST perturbation radius ρ (weight units, log scale)")


def gap_vs_rho_figure(methods: Dict[str, List[dict]], sast: List[Tuple[float, str]], path: Path) -> Path:
    """Transfer gap (pp) and hard-spike accuracy (%) against rho: SAST per radius (mean ± std
    and each seed), the baseline as a band."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rhos = [rho for rho, _ in sast]
    for ax, key, label in ((axes[0], "transfer_gap_pp", "transfer gap (pp)"), (axes[1], "hard_accuracy", "hard-spike accuracy (%)")):
        vals = [[r["metrics"][key] for r in methods[name]] for _, name in sast]
        ax.errorbar(rhos, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], marker="o", capsize=3, label="SAST (mean ± std over seeds)")
        for rho, v in zip(rhos, vals):
            ax.scatter([rho] * len(v), v, s=10, color="gray", alpha=0.6)
        if "baseline" in methods:
            b = [r["metrics"][key] for r in methods["baseline"]]
            ax.axhspan(np.mean(b) - np.std(b), np.mean(b) + np.std(b), color="C1", alpha=0.2)
            ax.axhline(np.mean(b), color="C1", label="baseline (mean ± std)")
        _rho_axis(ax, rhos)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Transfer gap and hard-spike accuracy vs ρ (test split)")
    fig.tight_layout()
    return _save(fig, path)


def accuracy_by_mode_figure(rows: List[Dict[str, object]], path: Path) -> Path:
    """Test accuracy (%) per method in each evaluation mode of :data:`MODES`, mean ± std."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 5.2))
    width = 0.2
    x = np.arange(len(rows))
    for i, (key, label) in enumerate(MODES):
        means = [r[key][0] for r in rows]
        stds = [r[key][1] for r in rows]
        ax.bar(x + (i - 1.5) * width, means, width, yerr=stds, capsize=2, label=label)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    # bars start at 0: a cut axis would exaggerate differences and hide the error bars' ends
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.3))  # below the labels, clear of the bars
    ax.set_title("Accuracy per evaluation mode (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def training_curves_figure(methods: Dict[str, List[dict]], names: List[str], path: Path) -> Path:
    """Accuracy (%) per epoch of the methods ``names``, surrogate and hard: the mean over
    seeds, and their range as a band. Validation accuracy when every run's history has it
    (runs with a validation split), test accuracy otherwise (runs from before it, or
    ``data.val_fraction = 0``)."""
    import matplotlib.pyplot as plt

    rows = [h for name in names for r in methods[name] for h in r["metrics"]["history"]]
    prefix, split = ("val_", "validation") if rows and all("val_hard_accuracy" in h for h in rows) else ("", "test")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "surrogate_accuracy", "surrogate-forward"), (axes[1], "hard_accuracy", "hard spikes")):
        for name in names:
            hist = [[h[prefix + key] for h in r["metrics"]["history"] if prefix + key in h] for r in methods[name]]
            if not all(hist):
                continue  # runs of both kinds in one method: their curves do not share a split
            n = min(len(h) for h in hist)
            arr = np.array([h[:n] for h in hist])
            ax.plot(np.arange(1, n + 1), arr.mean(0), marker=".", label=name)
            ax.fill_between(np.arange(1, n + 1), arr.min(0), arr.max(0), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_title(f"{split} accuracy, {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"{split} accuracy (%) (mean, band: seed range)")
    fig.tight_layout()
    return _save(fig, path)


def _all_family_points(data: Dict[str, object]) -> Dict[str, Dict[float, List[float]]]:
    """:func:`family_points` of this study joined with those of the studies passed with --also."""
    points = family_points(data["methods"])
    for other in data.get("also", []):
        for family, by_rho in family_points(other["methods"]).items():
            for rho, gaps in by_rho.items():
                points.setdefault(family, {}).setdefault(rho, []).extend(gaps)
    return points


def figures(data: Dict[str, object], rows: List[Dict[str, object]], out: Path) -> List[Path]:
    """The report's PNGs in ``out``: gap vs rho (when SAST ran), accuracy per mode, membrane
    margins of the baseline and the SAST with the smallest mean gap (when diagnosed),
    training curves, and gap vs rho per surrogate family."""
    import matplotlib

    matplotlib.use("Agg")
    methods = data["methods"]
    sast = sorted(((runs[0]["rho"], name) for name, runs in methods.items() if runs[0]["optimizer"] == "sast"))
    best = min(sast, key=lambda s: np.mean([r["metrics"]["transfer_gap_pp"] for r in methods[s[1]]]))[1] if sast else None
    paths = [gap_vs_rho_figure(methods, sast, out / "gap_vs_rho.png")] if sast else []
    paths.append(accuracy_by_mode_figure(rows, out / "accuracy_by_mode.png"))
    if "baseline" in methods and best and all("diagnostics" in r for r in methods["baseline"] + methods[best]):
        paths.append(_margin_figure({n: methods[n] for n in ("baseline", best)}, out / "membrane_margins.png"))
    paths.append(training_curves_figure(methods, [n for n in ("baseline", best) if n in methods], out / "training_curves.png"))
    points = _all_family_points(data)
    if any(rho > 0 for by_rho in points.values() for rho in by_rho):
        paths.append(family_figure(points, out / "gap_vs_rho_by_family.png",
                                   "Transfer gap vs ρ per surrogate family (mean ± std over seeds)"))
    return paths


def write_report(study_dir: str | Path, out: str | Path, diagnostics: bool = True,
                 also: Sequence[str | Path] = ()) -> Dict[str, object]:
    """The study's report in ``out``; the runs of the studies in ``also`` join the figure of
    the gap against rho per surrogate family."""
    out = Path(out)
    data = collect(study_dir, diagnostics)  # before the output folder exists: a bad study leaves none
    data["also"] = [collect(d, diagnostics=False) for d in also]
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(data)
    pngs = figures(data, rows, out)
    md = markdown(rows, data) + "\n## Figures\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.json", json.dumps({"study": data["study"], "rows": rows, "not_deployable": not_deployable(data),
                                                       "also": [d["study"]["name"] for d in data["also"]]}, indent=2) + "\n")
    return {"md": out / "report.md", "json": out / "report.json", "figures": pngs, "rows": rows}
