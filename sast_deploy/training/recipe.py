"""Training recipes: TOML files in ``train/``, validated into frozen dataclasses.

A recipe has four sections::

    name = "nmnist-mlp-sast"
    [data]        # sast_deploy.data.datasets.DataConfig   (dataset, n_time_bins, transforms)
    [model]       # sast_deploy.training.model.ModelConfig (arch, widths, beta, v_th, alpha)
    [optimizer]   # OptimConfig (sast | sam | baseline | ste, lr, rho)
    [training]    # TrainConfig (epochs, batch_size, seed, ...)

Recipes are validated by :mod:`sast_deploy.validation` (strict types, no unknown keys, finite
numbers; errors name the file and the field); ``--set section.key=value`` overrides any
field (values are TOML literals: ``--set model.hidden=[256]``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # Python 3.10, the version Lava requires
    import tomli as tomllib

from ..data.datasets import DataConfig
from ..errors import SastDeployError
from .model import ModelConfig
from ..validation import file_data, validated

OPTIMIZERS = ("sast", "sam", "baseline", "ste")
FLOAT32_MAX = 3.4028234663852886e38  # torch trains in float32: larger settings overflow in the optimizer


class RecipeError(SastDeployError, ValueError):
    """A recipe is malformed; the message names the file and the field."""


@file_data
@dataclass(frozen=True)
class OptimConfig:
    """``sast``: SAM on the surrogate-forward loss with independent B, B'; ``sam``: B' = B;
    ``baseline``: surrogate-forward loss, base optimizer only; ``ste``: hard-forward loss with
    the surrogate family's derivative as gradient, base optimizer only."""

    name: str = "sast"
    lr: float = 1e-3
    rho: float = 0.05
    delta: float = 1e-12
    weight_decay: float = 0.0
    perturb_every: int = 1  # sast/sam: recompute eps every k steps, reuse it in between (LookSAM-style)
    adaptive: bool = False  # sast/sam: ASAM's radius relative to each weight's magnitude (optim.SAST)

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name: unknown optimizer {self.name!r}; known: {', '.join(OPTIMIZERS)}")
        if not 0 < self.lr <= FLOAT32_MAX:
            raise ValueError(f"optimizer.lr must be > 0 and a float32 (<= {FLOAT32_MAX:.3g}), got {self.lr}")
        if not 0 <= self.rho <= FLOAT32_MAX:
            raise ValueError(f"optimizer.rho must be >= 0 and a float32 (<= {FLOAT32_MAX:.3g}), got {self.rho}")
        if self.perturb_every < 1:
            raise ValueError(f"optimizer.perturb_every must be >= 1, got {self.perturb_every}")

    @property
    def train_mode(self) -> str:
        """Spike mode of the training forward pass."""
        return "ste" if self.name == "ste" else "surrogate"

    @property
    def sharpness_aware(self) -> bool:
        return self.name in ("sast", "sam")


@file_data
@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    loss_scale: float = 1.0  # logits = loss_scale * output spike counts
    eval_batch_size: int = 512
    device: str = "cpu"  # cpu | cuda | auto

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"training.epochs must be >= 1, got {self.epochs}")
        if not abs(self.loss_scale) <= FLOAT32_MAX:
            raise ValueError(f"training.loss_scale must be a float32 (|x| <= {FLOAT32_MAX:.3g}), got {self.loss_scale}")
        if self.batch_size < 1:
            raise ValueError(f"training.batch_size must be >= 1, got {self.batch_size}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"training.device must be cpu, cuda or auto, got {self.device!r}")


@file_data
@dataclass(frozen=True)
class Recipe:
    name: str = "recipe"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    training: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def recipe_from_dict(raw: Mapping[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a parsed recipe; every error names ``source`` and the offending field."""
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{source}: a recipe must be a table, got {type(raw).__name__}")
    raw = {"name": Path(source).stem, **raw}
    return validated(Recipe, raw, source, RecipeError)


def canonical(recipe: Recipe) -> str:
    """The recipe as sorted JSON: equal for equal recipes however they were read (tuples or lists)."""
    return json.dumps(recipe.to_dict(), sort_keys=True)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string: --set data.name=nmnist


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``section.key=value`` overrides (nested: ``data.synthetic.seed=3``) to a copy of a raw
    recipe (a deep copy: the caller's nested tables are never changed)."""
    raw = copy.deepcopy(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected section.key=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {k} is not a table")
        node[keys[-1]] = _parse_value(text.strip())
    return raw


def read_toml(path: str | Path, what: str = "recipe") -> Dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a RecipeError naming it."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: {what} file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc})") from exc


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    raw = read_toml(path, "recipe")
    return recipe_from_dict(apply_overrides(raw, overrides), source=str(path))
