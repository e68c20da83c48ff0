"""What a search leaves for its user: ``tune.md`` (also printed), ``tune.json``, ``best.toml``
(the best trial's recipe, which ``sast-deploy train --config`` reads as it is) and figures
drawn with Optuna's matplotlib backend (optimisation history, Pareto front with two
objectives, parameter importances). Everything is read from the study's storage, so a
summary written on any machine of a shared search lists every trial."""

from __future__ import annotations

import json
import math
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..fileio import atomic_write_bytes, atomic_write_text
from .space import SearchSpace, recipe_toml

VALIDATION = (("val_surrogate_accuracy", "val surrogate %"), ("val_hard_accuracy", "val hard %"),
              ("val_emulator_accuracy", "val emulator %"))
SYNOPS = "val_emulator_synops_per_sample"


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def _seconds(t: FrozenTrial) -> Optional[float]:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start) / timedelta(seconds=1)


def retries(study_trials: Sequence[FrozenTrial]) -> Dict[int, int]:
    """{failed trial number: number of the trial that retried it}."""
    out = {}
    for t in study_trials:
        history = t.system_attrs.get("retry_history", [])
        if history:
            out[history[-1]] = t.number
    return out


def note(t: FrozenTrial, retried_by: Dict[int, int]) -> str:
    parts = []
    if "failed_trial" in t.system_attrs:
        parts.append(f"retry of trial {t.system_attrs['failed_trial']}")
    if t.state == TrialState.PRUNED:
        parts.append(f"pruned after epoch {t.user_attrs.get('epochs_done', '?')}")
    if t.number in retried_by:
        parts.append(f"interrupted; retried as trial {retried_by[t.number]}")
    elif t.state == TrialState.FAIL:
        parts.append(t.user_attrs.get("error", "failed"))
    return "; ".join(parts)


def params_text(space: SearchSpace, t: FrozenTrial) -> str:
    values = space.values_of(t.params)
    return ", ".join(f"{k.split('.')[-1]}={_value(v)}" for k, v in values.items())


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list) else str(v)


def trial_line(space: SearchSpace, t: FrozenTrial) -> str:
    """One line per finished trial, for the progress output."""
    u = t.user_attrs
    score = (f"val emulator {_pct(u.get('val_emulator_accuracy'))}%, hard {_pct(u.get('val_hard_accuracy'))}%, "
             f"SynOps/sample {_num(u.get(SYNOPS))}")
    why = note(t, {})
    return f"trial {t.number} {t.state.name.lower()}: {score} ({params_text(space, t)})" + (f"; {why}" if why else "")


def best_trials(study: optuna.Study) -> List[FrozenTrial]:
    """The best trial (one objective), or the Pareto front, most accurate first (two)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))


def trial_rows(space: SearchSpace, study: optuna.Study) -> List[Dict[str, Any]]:
    trials = study.get_trials(deepcopy=False)
    retried_by = retries(trials)
    return [{"number": t.number, "state": t.state.name, "params": space.values_of(t.params),
             "values": t.values, "seconds": _seconds(t), "note": note(t, retried_by),
             **{k: t.user_attrs.get(k) for k in ("run_dir", "host", "epochs_done", "train_seconds", SYNOPS,
                                                  *(f for f, _ in VALIDATION))}}
            for t in trials]


def _counts(rows: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    return {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}


def _wall(study: optuna.Study) -> Optional[float]:
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)) / timedelta(seconds=1) if starts and ends else None


def summary_markdown(space: SearchSpace, study: optuna.Study, objectives: Sequence[str], storage: str,
                     rows: Sequence[Dict[str, Any]], best: Sequence[FrozenTrial]) -> str:
    from .search import OBJECTIVES

    c = _counts(rows)
    trial_time = sum(r["seconds"] or 0.0 for r in rows)
    pruning = ("off: Optuna does not prune multi-objective studies" if len(objectives) > 1 else
               f"median rule on validation hard accuracy from epoch {space.pruning.min_epochs}, "
               f"after {space.pruning.startup_trials} finished trials" if space.pruning.enabled else "off")
    lines = [f"# sast-deploy tune: {space.name}", "",
             f"Study `{space.name}` in `{storage}`; search space `{space.path}` on `{space.base}`; sampler "
             f"{space.sampler} (seed {space.seed}); pruning {pruning}.",
             "Objectives: " + "; ".join(f"{OBJECTIVES[o].label}, {OBJECTIVES[o].direction}d" for o in objectives) + ".",
             "Every number is on the validation split; the test split was not evaluated.", "",
             "| trials | complete | pruned | failed | running or waiting | trial time s (sum) | wall time s |",
             "|---|---|---|---|---|---|---|",
             f"| {len(rows)} | {c['COMPLETE']} | {c['PRUNED']} | {c['FAIL']} | {c['RUNNING'] + c['WAITING']} | "
             f"{trial_time:.0f} | {_num(_wall(study))} |", ""]
    lines += _best_section(space, objectives, best)
    if len(objectives) == 1 and best:
        front = sorted(accuracy_synops_study(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))).best_trials,
                       key=lambda t: -t.values[0])
        lines += ["Accuracy-SynOps front of the finished trials (`pareto_front.png`; the search optimised accuracy alone):", "",
                  "| trial | val emulator % | SynOps/sample | parameters |", "|---|---|---|---|"]
        lines += [f"| {t.user_attrs.get('number', '?')} | {_pct(t.values[0])} | {_num(t.values[1])} | "
                  f"{params_text(space, t)} |" for t in front] + [""]
    lines += ["## All trials", "", "| trial | state | parameters | " + " | ".join(h for _, h in VALIDATION)
              + " | SynOps/sample | epochs | seconds | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={_value(v)}" for k, v in r["params"].items())
        lines.append(f"| {r['number']} | {r['state'].lower()} | {params} | "
                     + " | ".join(_pct(r[f]) for f, _ in VALIDATION)
                     + f" | {_num(r[SYNOPS])} | {r['epochs_done'] or '-'} | {_num(r['seconds'])} | {r['note'] or '-'} |")
    return "\n".join(lines) + "\n"


def _best_section(space: SearchSpace, objectives: Sequence[str], best: Sequence[FrozenTrial]) -> List[str]:
    if not best:
        return ["No trial has finished yet: no best recipe.", ""]
    top = best[0]
    u = top.user_attrs
    lines = ["## Best trial" if len(best) == 1 else "## Pareto front (accuracy vs SynOps)", "",
             f"Trial {top.number} (`{u.get('run_dir', '?')}`), written as `best.toml`"
             + (" (the front's most accurate trial)" if len(best) > 1 else "") + ": validation accuracy "
             f"surrogate {_pct(u.get('val_surrogate_accuracy'))} %, hard {_pct(u.get('val_hard_accuracy'))} %, "
             f"deployed (emulator) {_pct(u.get('val_emulator_accuracy'))} %; {_num(u.get(SYNOPS))} SynOps per sample.", "",
             "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {_value(v)} |" for k, v in space.values_of(top.params).items()]
    if len(best) > 1:
        lines += ["", "| trial | val emulator % | SynOps/sample | parameters |", "|---|---|---|---|"]
        lines += [f"| {t.number} | {_pct(t.values[0])} | {_num(t.values[1])} | {params_text(space, t)} |" for t in best]
    return lines + [""]


def best_recipe_toml(space: SearchSpace, trial: FrozenTrial, storage: str) -> str:
    """The best trial's recipe, rebuilt from its parameters in the storage (the trial's
    folder may be on another machine of a shared search)."""
    recipe = space.recipe(space.values_of(trial.params), name=f"{space.name}-best")
    u = trial.user_attrs
    return recipe_toml(recipe, (
        f"The best recipe of the search {space.name} ({space.path}), trial {trial.number} in {storage}.\n"
        f"Validation accuracy: surrogate {_pct(u.get('val_surrogate_accuracy'))} %, hard {_pct(u.get('val_hard_accuracy'))} %, "
        f"deployed (emulator) {_pct(u.get('val_emulator_accuracy'))} %; {_num(u.get(SYNOPS))} SynOps per sample.\n"
        f"sast-deploy train --config best.toml --out RUN_DIR"))


def _save(axes, path: Path) -> Path:
    """The figure of Optuna's Axes (or array of Axes) as a PNG."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig = np.ravel(axes)[0].figure
    fig.set_size_inches(8, 4.5)
    fig.tight_layout()
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def accuracy_synops_study(complete: Sequence[FrozenTrial]) -> optuna.Study:
    """The finished trials of a single-objective search as an in-memory two-objective study
    (accuracy, SynOps per sample), for Optuna's Pareto-front figure: the accuracy-energy
    trade-off among the recipes the search trained (it optimised accuracy alone)."""
    from .search import OBJECTIVES

    front = optuna.create_study(directions=[OBJECTIVES[o].direction for o in ("accuracy", "synops")])
    front.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                user_attrs={**t.user_attrs, "number": t.number},
                                                values=[t.user_attrs["val_emulator_accuracy"], t.user_attrs[SYNOPS]])
                      for t in complete if t.user_attrs.get(SYNOPS) is not None])
    return front


def write_figures(study: optuna.Study, out: Path, objectives: Sequence[str], log: Callable[[str], None],
                  seed: int = 0) -> Dict[str, Path]:
    """history.png, pareto_front.png (accuracy vs SynOps: the search's front with two
    objectives, else that of its finished trials), param_importances.png; a figure the trials
    cannot support yet (importances need two finished trials) is skipped with a line."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    from .search import OBJECTIVES

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    first = OBJECTIVES[objectives[0]].axis
    target = None if len(objectives) == 1 else (lambda t: t.values[0])
    figures = {"history": lambda: ovm.plot_optimization_history(study, target=target, target_name=first)}
    front = study if len(objectives) > 1 else accuracy_synops_study(complete)
    figures["pareto_front"] = lambda: ovm.plot_pareto_front(
        front, target_names=[OBJECTIVES[o].axis for o in ("accuracy", "synops")])
    if len(complete) >= 2:
        # fANOVA: the share of the objective's variance each parameter explains, whichever
        # way the objective points (Optuna's default evaluator ranks for low values)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        figures["param_importances"] = lambda: ovm.plot_param_importances(study, evaluator=evaluator, target=target,
                                                                         target_name=first)
    written = {}
    for name, draw in figures.items():
        if not complete:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # "few trials per regime": the figure says as much
                written[name] = _save(draw(), out / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. no parameter shared by all trials
            log(f"figure {name} skipped: {exc}")
    return written


def write_summary(study: optuna.Study, space: SearchSpace, out: Path, objectives: Sequence[str], storage: str,
                  log: Callable[[str], None] = print) -> Dict[str, Path]:
    """tune.md, tune.json, best.toml (when a trial finished) and the figures in ``out``."""
    rows = trial_rows(space, study)
    best = best_trials(study)
    md = summary_markdown(space, study, objectives, storage, rows, best)
    written = {"md": out / "tune.md", "json": out / "tune.json"}
    atomic_write_text(written["md"], md)
    atomic_write_text(written["json"], json.dumps({
        "study": space.name, "storage": storage, "space": str(space.path), "objectives": list(objectives),
        "best": [t.number for t in best], "wall_seconds": _wall(study), "trials": rows}, indent=2, default=str) + "\n")
    if best:
        written["best"] = out / "best.toml"
        atomic_write_text(written["best"], best_recipe_toml(space, best[0], storage))
    written.update(write_figures(study, out, objectives, log, space.seed))
    return written
