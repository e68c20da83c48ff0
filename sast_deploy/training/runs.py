"""Run directories: what training writes and every later stage reads.

    RUN_DIR/checkpoint.pt   after every epoch: epoch, model (tensors), optimizer (tensors and
                            numbers), history, train_seconds, recipe; the resume point
    RUN_DIR/model.pt        final weights: state_dict (tensors), model_config, input_shape,
                            n_classes, recipe, metrics
    RUN_DIR/metrics.json    the metrics again, as JSON (surrogate_accuracy, hard_accuracy in
                            percent, transfer_gap_pp on the test split, validation, history, ...);
                            :func:`read_metrics` reads it back, checked

Every file is written atomically (temporary file, then rename). Run files are data: they hold
only tensors and plain values (dicts, lists, numbers, strings), written with ``torch.save``
and read with ``torch.load(weights_only=True)``, which refuses every other Python object
instead of unpickling it (a pickle can call any function, ``os.system`` included). What is
read is then validated like a recipe (:mod:`sast_deploy.validation`) before anything is
built from it. The writer and the reader of each file sit together here, so the format has
one home.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .recipe import Recipe, recipe_from_dict
from ..errors import RunError, one_line
from ..fileio import atomic_torch_save, atomic_write_text, read_json
from .model import ModelConfig, SpikingNet, build_model
from ..validation import file_data, output_data, validated


@file_data
@dataclass(frozen=True)
class ModelFileHeader:
    """model.pt without its tensors."""

    model_config: ModelConfig
    input_shape: Tuple[int, ...]
    n_classes: int
    recipe: Dict[str, Any]
    metrics: Dict[str, Any] = field(default_factory=dict)


@file_data
@dataclass(frozen=True)
class CheckpointHeader:
    """checkpoint.pt without its tensors. Times in seconds."""

    epoch: int
    history: Tuple[Dict[str, Any], ...]
    train_seconds: float
    recipe: Dict[str, Any]


@output_data
@dataclass(frozen=True)
class ValidationMetrics:
    """metrics.json's ``validation`` block (:mod:`sast_deploy.training.val_metrics`):
    accuracies in percent on the run's validation split; the emulator's are None, and
    ``emulator_error`` the reason, when the network cannot be quantized."""

    surrogate_accuracy: float
    hard_accuracy: float
    emulator_accuracy: Optional[float]
    emulator_synops_per_sample: Optional[float]
    n_samples: int
    class_counts: Tuple[int, ...]
    emulator_error: str = ""


@output_data
@dataclass(frozen=True)
class MetricsFile:
    """The fields of metrics.json every reader may rely on (accuracies in percent, on the test
    split); ``validation`` is None for runs without a validation split (``data.val_fraction =
    0``, or written before there was one)."""

    surrogate_accuracy: float
    hard_accuracy: float
    transfer_gap_pp: float
    history: Tuple[Dict[str, Any], ...]
    validation: Optional[ValidationMetrics] = None


# --- writing --------------------------------------------------------------------------------


def save_checkpoint(path: Path, epoch: int, model: SpikingNet, optimizer: torch.optim.Optimizer,
                    history: List[Dict[str, float]], train_seconds: float, recipe: Recipe) -> None:
    """The resume point after ``epoch`` finished epochs (1-based count); ``train_seconds`` so far."""
    atomic_torch_save(
        {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
         "train_seconds": train_seconds, "recipe": recipe.to_dict()},
        path,
    )


def save_run(out_dir: Path, model: SpikingNet, recipe: Recipe, metrics: Dict[str, object]) -> None:
    """A finished run: model.pt (weights, model config, recipe, metrics) and metrics.json."""
    atomic_torch_save(
        {"state_dict": model.state_dict(), "model_config": asdict(model.config), "input_shape": model.input_shape,
         "n_classes": model.n_classes, "recipe": recipe.to_dict(), "metrics": metrics},
        Path(out_dir) / "model.pt",
    )
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")


# --- reading --------------------------------------------------------------------------------


def load_run(run_dir: str | Path, map_location: str = "cpu") -> Tuple[SpikingNet, Recipe, Dict[str, object]]:
    """(model, recipe, metrics) of a finished run; the model file is read as data, never unpickled."""
    path = Path(run_dir) / "model.pt"
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: run directory not found")
    if not path.is_file():
        raise RunError(f"{path}: no model in this run directory (train it first: sast-deploy train ... --out {run_dir})")
    header, weights = read_model_file(path)
    recipe = saved_recipe(header.recipe, source=str(path))
    try:
        model = build_model(header.model_config, header.input_shape, header.n_classes)
        model.load_state_dict(weights)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise RunError(f"{path}: the weights do not fit the model config ({one_line(exc)})") from None
    model.eval()
    return model.to(map_location), recipe, header.metrics


def read_metrics(run_dir: str | Path) -> Dict[str, Any]:
    """RUN_DIR/metrics.json as a dict, checked against :class:`MetricsFile` (a missing,
    malformed or incomplete file is a RunError naming it and the field)."""
    path = Path(run_dir) / "metrics.json"
    raw = read_json(path, "run metrics")
    if not isinstance(raw, dict):
        raise RunError(f"{path}: run metrics must be a JSON object, got {type(raw).__name__}")
    validated(MetricsFile, raw, str(path), RunError)
    return raw


def saved_recipe(raw: Dict[str, Any], source: str) -> Recipe:
    """The recipe saved in a run file. A run written before ``data.val_fraction`` existed
    trained on every training recording: it reads as ``val_fraction = 0``, not the default."""
    data = raw.get("data")
    if isinstance(data, dict) and "val_fraction" not in data:
        raw = {**raw, "data": {**data, "val_fraction": 0.0}}
    return recipe_from_dict(raw, source=source)


def load_plain(path: Path, what: str) -> Dict[str, Any]:
    """The dict in a torch file of tensors and plain data; never unpickles anything else."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported class" in str(exc) or "Unsupported global" in str(exc):
            raise RunError(
                f"{path}: refused: the {what} holds Python objects besides tensors and plain data "
                f"({_reason(exc)}), and loading those could run code. sast-deploy writes none; "
                f"retrain the run, or re-save its tensors and plain values from a session you trust") from None
        raise RunError(f"{path}: not a readable {what} ({_reason(exc)})") from None
    except EOFError:
        raise RunError(f"{path}: not a readable {what} (empty or cut short)") from None
    except FileNotFoundError:
        raise RunError(f"{path}: {what} not found") from None
    except Exception as exc:  # truncated, empty or random bytes: torch raises many kinds of error
        raise RunError(f"{path}: not a readable {what} ({type(exc).__name__}: {_reason(exc)})") from None
    if not isinstance(blob, dict):
        raise RunError(f"{path}: not a sast-deploy {what} (holds a {type(blob).__name__}, not a dict)")
    return blob


def read_model_file(path: Path) -> Tuple[ModelFileHeader, Dict[str, torch.Tensor]]:
    """(header, state_dict) of a model.pt."""
    blob = load_plain(path, "model file")
    header = validated(ModelFileHeader, {k: v for k, v in blob.items() if k != "state_dict"}, str(path), RunError)
    return header, tensors(blob, "state_dict", path)


def read_checkpoint(path: Path) -> Tuple[CheckpointHeader, Dict[str, torch.Tensor], Dict[str, Any]]:
    """(header, model state_dict, optimizer state_dict) of a checkpoint.pt."""
    blob = load_plain(path, "checkpoint")
    plain = {k: v for k, v in blob.items() if k not in ("model", "optimizer")}
    header = validated(CheckpointHeader, plain, str(path), RunError)
    if not isinstance(blob.get("optimizer"), dict):
        raise RunError(f"{path}: field optimizer must be a dict (the optimizer's state)")
    return header, tensors(blob, "model", path), blob["optimizer"]


def tensors(blob: Dict[str, Any], key: str, path: Path) -> Dict[str, torch.Tensor]:
    value = blob.get(key)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise RunError(f"{path}: field {key} must map parameter names to tensors")
    return value


def _reason(exc: BaseException) -> str:
    """The informative part of a loader's message, on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.split("WeightsUnpickler error: ", 1)[-1][:200]
