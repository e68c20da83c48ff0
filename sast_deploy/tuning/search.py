"""The search: an Optuna study whose trials are ordinary run directories.

    OUT/tune.db                  the study (SQLite; --storage URL: any database Optuna supports)
    OUT/trials/trial-0007/       trial 7: recipe.toml, then what `train` writes (checkpoint.pt,
                                 model.pt, metrics.json), so compare, report and resume work on it
    OUT/tune.md, tune.json       the summary (:mod:`.summary`), best.toml and the figures

A trial trains its recipe through :func:`sast_deploy.training.train.train` and scores the
network it deploys: ``metrics["validation"]["emulator_accuracy"]`` (the bit-exact emulator,
equal to Lava spike for spike), and with the ``synops`` objective also the SynOps per
validation sample. After every epoch it reports the validation hard accuracy, and the
pruner may stop it there (single objective only). The test split is never evaluated:
``train(..., evaluate_test=False)``.

Several processes, on one machine or many, work on one search by sharing the storage; each
runs ``n_trials`` trials. Trial numbers come from the storage, so no two processes train in
the same run directory.

Interrupted trials are retried from their checkpoint: when SIGINT or SIGTERM stops a trial,
it is marked failed and a copy with the same parameters is queued (Optuna's
``RetryHeartbeatStaleTrialCallback``); the next ``tune`` on the storage takes the copy first
and trains it in the original trial's directory, where ``train`` resumes after the last
finished epoch. A process that dies without a word (SIGKILL, a lost machine) stops its
trial's heartbeat; another process marks it failed after the grace period and queues the
same retry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import optuna
from optuna.trial import TrialState

from ..errors import RunError, SastDeployError, Terminated, one_line
from ..fileio import atomic_write_text
from ..signals import deferred_signals
from ..training.recipe import Recipe
from .sampling import make_pruner, make_sampler
from .space import SearchSpace, recipe_toml

HEARTBEAT_S = 60  # a running trial's heartbeat period
GRACE_S = 300  # a trial whose heartbeat is older than this is taken for dead and retried
MAX_RETRIES = 3  # retries of one trial (interrupted or dead) before it stays failed
BASE_ATTR = "sast_deploy.base_recipe"  # study attribute: the base recipe every trial shares
TRIALS_DIR = "trials"
OPEN_LOCK = ".tune-open.lock"


class TuneError(SastDeployError, ValueError):
    """A tune command cannot go on (a storage, a study that does not fit); the message names it."""


class TrialFailed(Exception):
    """A trial ended without a deployable network (training diverged, the network cannot be
    quantized); the reason is its ``error`` attribute. The search goes on."""


@dataclass(frozen=True)
class Objective:
    direction: str  # Optuna's: maximize | minimize
    label: str  # what it is, with its unit
    field: str  # the field of metrics.json's validation block
    axis: str  # its short name on a figure's axis


OBJECTIVES: Dict[str, Objective] = {
    "accuracy": Objective("maximize", "validation accuracy of the deployed network (emulator, %)", "emulator_accuracy",
                          "val accuracy, emulator %"),
    "synops": Objective("minimize", "SynOps per validation sample (emulator)", "emulator_synops_per_sample",
                        "SynOps per val sample"),
}


def parse_objectives(text: str) -> Tuple[str, ...]:
    """'accuracy,synops' -> ('accuracy', 'synops'); unknown or repeated names are a TuneError."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in OBJECTIVES]
    if not names or unknown or len(set(names)) != len(names):
        raise TuneError(f"--objectives {text!r}: give distinct names among {', '.join(OBJECTIVES)}")
    return names


# --- storage and study ------------------------------------------------------------------


def default_storage(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'tune.db').resolve()}"


def shown_url(url: str) -> str:
    """A storage URL without its password, for messages and the summary."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: the error that follows says so
        return url.split("@")[-1]


def retry_callback():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def retried_number(trial: optuna.Trial) -> Optional[int]:
    """The number of the trial this one retries (the first of a chain), or None."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    # several processes write one SQLite file: wait for its lock rather than fail at once
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                              grace_period=GRACE_S, heartbeat_stale_trial_callback=retry_callback())
    except Exception as exc:  # sqlalchemy's errors for a bad URL, a driver that is missing, a refused connection
        raise TuneError(f"--storage {shown_url(url)}: {one_line(exc)}") from None


@contextlib.contextmanager
def _opening(out: Path) -> Iterator[None]:
    """Processes starting together on one machine create the tables and the study one at a
    time (concurrent CREATE TABLEs on a fresh SQLite file fail)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / OPEN_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_study(space: SearchSpace, out: Path, url: str, objectives: Optional[Sequence[str]]) -> Tuple[optuna.Study, Tuple[str, ...]]:
    """The space's study in the storage, created or continued; (study, its objectives). A
    study on another base recipe, or with other objectives, is a TuneError."""
    with _opening(out):
        storage = open_storage(url)
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}.get(space.name)
        if objectives is None:
            objectives = ("accuracy",) if existing is None else _objectives_of(existing.directions)
        directions = [OBJECTIVES[o].direction for o in objectives]
        if existing is not None and [d.name.lower() for d in existing.directions] != directions:
            raise TuneError(f"study {space.name!r} in {shown_url(url)} has {len(existing.directions)} objective(s) "
                            f"({_objectives_of(existing.directions)}), not {list(objectives)}; "
                            f"give the same --objectives, or another --out or --storage")
        study = optuna.create_study(storage=storage, study_name=space.name, directions=directions, load_if_exists=True,
                                    sampler=make_sampler(space), pruner=make_pruner(space.pruning, len(directions)))
        base = study.user_attrs.get(BASE_ATTR)
        if base is None:
            study.set_user_attr(BASE_ATTR, space.base_key())
            study.set_user_attr("objectives", list(objectives))
        elif base != space.base_key():
            raise TuneError(f"{space.path}: study {space.name!r} in {shown_url(url)} was searched on another base recipe "
                            f"(base or set changed); use another --out or --storage, or name the space differently")
    return study, tuple(objectives)


def _objectives_of(directions) -> Tuple[str, ...]:
    by_direction = [[n for n, o in OBJECTIVES.items() if o.direction == d.name.lower()][0] for d in directions]
    return tuple(by_direction)


# --- one trial --------------------------------------------------------------------------


def trial_dir_name(number: int) -> str:
    return f"trial-{number:04d}"


class TrialRunner:
    """Optuna's objective: one trial, trained into its run directory."""

    def __init__(self, space: SearchSpace, out: Path, objectives: Sequence[str], progress: bool,
                 log: Callable[[str], None]):
        self.space, self.out, self.objectives = space, out, tuple(objectives)
        self.progress, self.log = progress, log
        self.running: Optional[int] = None  # the trial this process trains now (its number)
        self._data: Dict[str, Any] = {}

    def data(self, recipe: Recipe):
        """The recipe's splits, loaded once per data configuration (trials share them)."""
        from ..data.datasets import load_splits

        key = json.dumps(recipe.to_dict()["data"], sort_keys=True, default=list)
        if key not in self._data:
            self._data = {key: load_splits(recipe.data, progress=self.progress)}  # one at a time in memory
        return self._data[key]

    def __call__(self, trial: optuna.Trial) -> Tuple[float, ...]:
        self.running = trial.number
        origin = retried_number(trial)
        number = trial.number if origin is None else origin
        run_dir = self.out / TRIALS_DIR / trial_dir_name(number)
        values = self.space.suggest(trial)
        recipe = self.space.recipe(values, name=f"{self.space.name}-{trial_dir_name(number)}")
        trial.set_user_attr("run_dir", str(run_dir.relative_to(self.out)))
        trial.set_user_attr("host", socket.gethostname())
        atomic_write_text(run_dir / "recipe.toml", recipe_toml(
            recipe, f"trial {number} of the search {self.space.name} ({self.space.path}); "
                    f"sast-deploy train --config {run_dir / 'recipe.toml'} --out RUN_DIR trains it again"))
        metrics = self._train(trial, recipe, run_dir)
        return self._score(trial, metrics)

    def _train(self, trial: optuna.Trial, recipe: Recipe, run_dir: Path) -> Dict[str, Any]:
        from ..deploy.quantize import QuantizationError
        from ..training.train import train

        try:
            return train(recipe, run_dir, progress=self.progress, data=self.data(recipe), log=self.log,
                         epoch_callback=self._epoch_callback(trial), evaluate_test=False).metrics
        except (RunError, QuantizationError) as exc:  # diverged, or a network that cannot be deployed
            trial.set_user_attr("error", one_line(exc))
            raise TrialFailed(one_line(exc)) from None

    def _epoch_callback(self, trial: optuna.Trial):
        prune = len(self.objectives) == 1  # Optuna does not prune multi-objective studies

        def after_epoch(epoch: int, row: Dict[str, float]) -> None:
            trial.set_user_attr("epochs_done", epoch)
            for k in ("val_surrogate_accuracy", "val_hard_accuracy"):
                trial.set_user_attr(k, row[k])
            if prune:
                trial.report(row["val_hard_accuracy"], step=epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: validation hard accuracy {row['val_hard_accuracy']:.2f}%")

        return after_epoch

    def _score(self, trial: optuna.Trial, metrics: Dict[str, Any]) -> Tuple[float, ...]:
        val = metrics["validation"]
        trial.set_user_attr("train_seconds", metrics["train_seconds"])
        for k in ("surrogate_accuracy", "hard_accuracy", "emulator_accuracy", "emulator_synops_per_sample"):
            trial.set_user_attr(f"val_{k}", val[k])
        if val["emulator_accuracy"] is None:
            reason = f"not deployable: {val.get('emulator_error', 'the network cannot be quantized')}"
            trial.set_user_attr("error", reason)
            raise TrialFailed(reason)
        return tuple(float(val[OBJECTIVES[o].field]) for o in self.objectives)


# --- the search -------------------------------------------------------------------------


def requeue_interrupted(study: optuna.Study, number: int) -> Optional[int]:
    """Mark trial ``number`` (stopped by a signal) failed and queue its retry; the retry's
    number is assigned when a process takes it. Returns ``number`` when a retry was queued."""
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state != TrialState.FAIL:
        return None  # it finished before the signal
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    retry_callback()(study, trial)
    return number if len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before else None


@dataclass
class TuneResult:
    study: optuna.Study
    objectives: Tuple[str, ...]
    storage: str
    written: Dict[str, Path]


def tune(space: SearchSpace, out: str | Path, n_trials: int, objectives: Optional[Sequence[str]] = None,
         storage: Optional[str] = None, progress: bool = True, log: Callable[[str], None] = print) -> TuneResult:
    """Run ``n_trials`` trials of the space's study (created, or continued), then write the
    summary of every trial in the storage (:func:`.summary.write_summary`)."""
    from tqdm import tqdm

    from .summary import trial_line, write_summary

    if n_trials < 0:
        raise TuneError(f"--n-trials must be >= 0, got {n_trials}")
    out = Path(out)
    created = not out.exists()
    url = storage or default_storage(out)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported here, one line each
    try:
        try:
            study, objectives = open_study(space, out, url, objectives)
        except TuneError:
            if created and {p.name for p in out.iterdir()} <= {OPEN_LOCK}:  # leave no folder behind a refusal
                shutil.rmtree(out)
            raise
        runner = TrialRunner(space, out, objectives, progress, log)
        with tqdm(total=n_trials, desc=f"tune {space.name}", unit="trial", disable=not progress or n_trials == 0) as bar:
            def after_trial(study: optuna.Study, trial) -> None:
                runner.running = None
                bar.update(1)
                if progress:
                    tqdm.write(trial_line(space, trial))

            try:
                if n_trials:
                    study.optimize(runner, n_trials=n_trials, catch=(TrialFailed,), callbacks=[after_trial])
            except (KeyboardInterrupt, Terminated):
                if runner.running is not None:
                    with deferred_signals():
                        if requeue_interrupted(study, runner.running) is not None:
                            log(f"trial {runner.running} interrupted: queued for a retry, which resumes after its last finished epoch")
                raise
        written = write_summary(study, space, out, objectives, shown_url(url))
    finally:
        optuna.logging.set_verbosity(verbosity)
    return TuneResult(study, objectives, shown_url(url), written)
