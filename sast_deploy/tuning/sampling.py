"""Optuna's samplers and pruner, as a search space names them.

Optuna seeds one random generator per sampler object. Two ``tune`` processes on one storage,
started with the space's seed, would then draw the same random start-up trials and train the
same recipes twice. :class:`TrialSeededSampler` (Optuna has no such option) builds the named
sampler afresh for every trial, seeded by (space seed, trial number): a trial's draw depends
on its number and the finished trials it sees, never on which process runs it. Optuna's
samplers keep no state of their own between trials (they read the history from the
storage), so nothing is lost by rebuilding them.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import optuna
from optuna.samplers import BaseSampler

from .space import Pruning, SearchSpace

SamplerFactory = Callable[[int, int], BaseSampler]  # (seed, startup trials) -> sampler


def _tpe(seed: int, startup: int) -> BaseSampler:
    # multivariate + group: models parameters jointly, per sub-space of a conditional space (rho
    # exists only for sast and sam); constant_liar: processes sharing a storage avoid the points
    # that others are training right now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True,
                                          constant_liar=True)


SAMPLERS: Dict[str, SamplerFactory] = {
    "tpe": _tpe,
    "random": lambda seed, startup: optuna.samplers.RandomSampler(seed=seed),
    "nsga2": lambda seed, startup: optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup)),
}


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s draw under the space's ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """The named sampler, rebuilt and seeded by (seed, trial number) for every trial."""

    def __init__(self, name: str, seed: int, startup_trials: int):
        self._factory = SAMPLERS[name]
        self._seed, self._startup = seed, startup_trials
        self._number: Optional[int] = None
        self._inner = self._factory(seed, startup_trials)

    def _for(self, trial) -> BaseSampler:
        if trial.number != self._number:
            self._number = trial.number
            self._inner = self._factory(trial_seed(self._seed, trial.number), self._startup)
        return self._inner

    def infer_relative_search_space(self, study, trial) -> Dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> Dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values: Optional[Sequence[float]]) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(space: SearchSpace) -> BaseSampler:
    return TrialSeededSampler(space.sampler, space.seed, space.startup_trials)


def make_pruner(pruning: Pruning, n_objectives: int) -> optuna.pruners.BasePruner:
    """The median rule over epochs: a trial whose validation hard accuracy after epoch e (the
    step it reports, from 1) is below the median of earlier trials at epoch e stops, from
    epoch ``min_epochs`` on. None with several objectives, which Optuna does not prune."""
    if not pruning.enabled or n_objectives > 1:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=pruning.startup_trials, n_warmup_steps=pruning.min_epochs)
