"""The search space of ``sast-deploy tune``: a TOML file beside the recipes.

::

    name = "tune-nmnist"          # the Optuna study's name (default: the file's stem)
    base = "quick.toml"           # the recipe every trial starts from (beside this file, or a path)
    set = ["data.max_train=2000"] # overrides applied to every trial, as --set takes them
    seed = 0                      # the sampler's seed (each trial's draw is seeded by it and the trial number)
    sampler = "tpe"               # tpe | random | nsga2
    startup_trials = 5            # random trials before TPE models (NSGA-II: its population size)

    [pruning]                     # stop a trial whose validation hard accuracy trails (single objective)
    enabled = true
    startup_trials = 3            # trials that run to the end before any is pruned
    min_epochs = 2                # epochs every trial runs before it can be pruned

    [[param]]                     # categorical: a list of choices (a list may hold lists: model.hidden)
    name = "optimizer.name"
    choices = ["baseline", "sast", "sam", "ste"]
    [[param]]                     # a float (log = true: log-uniform), or an integer with integer = true
    name = "optimizer.rho"
    low = 0.01
    high = 1.0
    log = true
    when = { "optimizer.name" = ["sast", "sam"] }   # searched only where an earlier categorical took these

A space is validated like a recipe (:mod:`sast_deploy.validation`): unknown keys, wrong types,
empty or reversed ranges and conditions on unknown parameters are one error naming the file
and the field, and every value a parameter can take (each choice, each bound) is checked
against the base recipe when the file is read, not an hour into the search.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import tomli_w

from ..training.recipe import Recipe, RecipeError, apply_overrides, canonical, read_toml, recipe_from_dict
from ..validation import file_data, validated

Scalar = Union[bool, int, float, str]
Choice = Union[Scalar, Tuple[Scalar, ...]]
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
SAMPLERS = ("tpe", "random", "nsga2")


class SpaceError(RecipeError):
    """A search-space file is malformed; the message names the file and the field."""


def choice_key(value: Any) -> str:
    """A choice as Optuna stores it when it is not a plain scalar, and how choices compare
    (a TOML list and a tuple are the same choice)."""
    return json.dumps(value, sort_keys=True)


@file_data
@dataclass(frozen=True)
class Param:
    """One searched recipe field (``section.key``): ``choices``, or ``low`` and ``high`` (a
    float; an integer with ``integer = true``; ``log`` samples log-uniformly). ``when`` maps
    earlier categorical parameters to the values under which this one is searched."""

    name: str
    choices: Tuple[Choice, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    integer: bool = False
    when: Dict[str, Tuple[Choice, ...]] = field(default_factory=dict)

    def __post_init__(self):
        where = f"param {self.name!r}"
        if not FIELD_NAME.fullmatch(self.name):
            raise ValueError(f"{where}: name must be a recipe field as section.key (e.g. model.alpha)")
        ranged = self.low is not None or self.high is not None
        if bool(self.choices) == ranged:
            raise ValueError(f"{where}: give either choices or low and high")
        if self.choices:
            if self.log or self.integer:
                raise ValueError(f"{where}: log and integer apply to ranges, not to choices")
            if len({choice_key(c) for c in self.choices}) != len(self.choices):
                raise ValueError(f"{where}: choices repeat a value")
        else:
            self._check_range(where)
        for other, values in self.when.items():
            if not values:
                raise ValueError(f"{where}: when.{other} lists no values")

    def _check_range(self, where: str) -> None:
        if self.low is None or self.high is None:
            raise ValueError(f"{where}: a range needs both low and high")
        if not self.low < self.high:
            raise ValueError(f"{where}: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"{where}: a log range needs low > 0, got {self.low}")
        if self.integer and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"{where}: an integer range needs integer bounds, got {self.low} and {self.high}")

    @property
    def keyed(self) -> bool:
        """Whether Optuna holds this categorical's choices as keys (a choice is a list)."""
        return any(isinstance(c, tuple) for c in self.choices)

    def suggest(self, trial) -> Any:
        """This parameter's value in an Optuna trial (a recipe value: a list choice is a list)."""
        if self.choices:
            if not self.keyed:
                return trial.suggest_categorical(self.name, list(self.choices))
            return self.value_of(trial.suggest_categorical(self.name, [choice_key(c) for c in self.choices]))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def value_of(self, stored: Any) -> Any:
        """The recipe value of what Optuna stored for this parameter."""
        if self.keyed:
            return list(self.choices[[choice_key(c) for c in self.choices].index(stored)])
        return stored

    def bounds(self) -> Tuple[Any, ...]:
        """The values that span this parameter: its choices, or its two bounds."""
        if self.choices:
            return tuple(list(c) if isinstance(c, tuple) else c for c in self.choices)
        return (int(self.low), int(self.high)) if self.integer else (self.low, self.high)


@file_data
@dataclass(frozen=True)
class Pruning:
    enabled: bool = True
    startup_trials: int = 3  # trials that run to the end before any is pruned
    min_epochs: int = 2  # epochs every trial runs before it can be pruned

    def __post_init__(self):
        if self.startup_trials < 0:
            raise ValueError(f"pruning.startup_trials must be >= 0, got {self.startup_trials}")
        if self.min_epochs < 1:
            raise ValueError(f"pruning.min_epochs must be >= 1, got {self.min_epochs}")


@file_data
@dataclass(frozen=True)
class SpaceFile:
    """A search-space TOML file as written."""

    base: str
    name: str = ""
    set: Tuple[str, ...] = ()
    seed: int = 0
    sampler: str = "tpe"
    startup_trials: int = 5
    pruning: Pruning = field(default_factory=Pruning)
    param: Tuple[Param, ...] = ()

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown sampler {self.sampler!r}; known: {', '.join(SAMPLERS)}")
        if self.startup_trials < 1:
            raise ValueError(f"startup_trials must be >= 1, got {self.startup_trials}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: the base recipe (as parsed TOML, with ``set`` applied) and
    the parameters in the order they are drawn."""

    name: str
    path: Path
    base: Path
    base_raw: Mapping[str, Any]
    seed: int
    sampler: str
    startup_trials: int
    pruning: Pruning
    params: Tuple[Param, ...]

    def suggest(self, trial) -> Dict[str, Any]:
        """Draw every parameter whose ``when`` holds; {field: recipe value}."""
        values: Dict[str, Any] = {}
        for p in self.params:
            if self.active(p, values):
                values[p.name] = p.suggest(trial)
        return values

    def values_of(self, params: Mapping[str, Any]) -> Dict[str, Any]:
        """{field: recipe value} of an Optuna trial's stored ``params``."""
        by_name = {p.name: p for p in self.params}
        return {name: by_name[name].value_of(v) for name, v in params.items() if name in by_name}

    @staticmethod
    def active(p: Param, values: Mapping[str, Any]) -> bool:
        return all(k in values and choice_key(values[k]) in {choice_key(c) for c in allowed} for k, allowed in p.when.items())

    def recipe(self, values: Mapping[str, Any], name: str) -> Recipe:
        """The base recipe with ``values`` ({section.key: value}) set, named ``name``."""
        raw = with_fields(self.base_raw, values)
        raw["name"] = name
        recipe = recipe_from_dict(raw, source=f"{self.path} ({name})")
        if recipe.data.val_fraction <= 0:
            raise SpaceError(f"{self.path} ({name}): data.val_fraction must be > 0: trials are scored on the validation split")
        return recipe

    def base_key(self) -> str:
        """The base recipe (with ``set``) as canonical JSON: trials of one study share it."""
        return canonical(self.recipe({}, name="base"))


def with_fields(raw: Mapping[str, Any], values: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of a parsed recipe with nested fields set: {"model.alpha": 2.0} sets raw["model"]["alpha"]."""
    out = json.loads(json.dumps(raw))  # a deep copy of plain data
    for dotted, value in values.items():
        keys = dotted.split(".")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{dotted}: {k} is not a table")
        node[keys[-1]] = value
    return out


def _resolve_base(path: Path, base: str) -> Path:
    for candidate in (path.parent / base, Path(base)):
        if candidate.is_file():
            return candidate
    raise SpaceError(f"{path}: base recipe {base!r} not found (beside the file or as a path)")


def _check_params(path: Path, params: Tuple[Param, ...]) -> None:
    """Unique names; each ``when`` names an earlier categorical and values among its choices."""
    seen: Dict[str, Param] = {}
    for p in params:
        if p.name in seen:
            raise SpaceError(f"{path}: param {p.name!r} is listed twice")
        for other, allowed in p.when.items():
            cond = seen.get(other)
            if cond is None or not cond.choices:
                raise SpaceError(f"{path}: param {p.name!r}: when.{other} must name a categorical param listed before it")
            unknown = [v for v in allowed if choice_key(v) not in {choice_key(c) for c in cond.choices}]
            if unknown:
                raise SpaceError(f"{path}: param {p.name!r}: when.{other} lists {unknown}, not among its choices")
        seen[p.name] = p


def _check_values(space: SearchSpace) -> None:
    """Every value a parameter can take makes a valid recipe (each alone, on the base)."""
    for p in space.params:
        for value in p.bounds():
            try:
                space.recipe({p.name: value}, name=space.name)
            except RecipeError as exc:
                msg = str(exc).split(": ", 1)[-1] if str(exc).startswith(str(space.path)) else str(exc)
                raise SpaceError(f"{space.path}: param {p.name!r} = {choice_key(value)}: {msg}") from None


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space file; errors are one SpaceError naming the file and field."""
    path = Path(path)
    try:
        text = read_toml(path, "search space")
    except RecipeError as exc:
        raise SpaceError(str(exc)) from None
    raw = validated(SpaceFile, text, str(path), SpaceError)
    if not raw.param:
        raise SpaceError(f"{path}: no [[param]] to search")
    _check_params(path, raw.param)
    base = _resolve_base(path, raw.base)
    try:
        base_raw = apply_overrides(read_toml(base, "recipe"), list(raw.set))
    except RecipeError as exc:
        raise SpaceError(f"{path}: set: {exc}") from None
    space = SearchSpace(name=raw.name or path.stem, path=path, base=base, base_raw=base_raw, seed=raw.seed,
                        sampler=raw.sampler, startup_trials=raw.startup_trials, pruning=raw.pruning, params=raw.param)
    try:
        space.recipe({}, name=space.name)
    except RecipeError as exc:
        raise SpaceError(f"{path}: base {base} with set: {exc}") from None
    _check_values(space)
    return space


def recipe_toml(recipe: Recipe, header: str = "") -> str:
    """A recipe as a TOML file ``sast-deploy train --config`` reads back to an equal recipe."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + tomli_w.dumps(recipe.to_dict())
