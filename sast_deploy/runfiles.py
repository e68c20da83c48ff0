"""Run files are data: ``model.pt`` and ``checkpoint.pt`` hold only tensors and plain values
(dicts, lists, numbers, strings), written with ``torch.save`` and read with
``torch.load(weights_only=True)``, which refuses every other Python object instead of
unpickling it (a pickle can call any function, ``os.system`` included). What is read is
then validated like a recipe (:mod:`sast_deploy.validation`) before anything is built from it.

    model.pt       state_dict (tensors), model_config, input_shape, n_classes, recipe, metrics
    checkpoint.pt  epoch, model (tensors), optimizer (tensors and numbers), history,
                   train_seconds, recipe
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from .errors import RunError
from .model import ModelConfig
from .validation import file_data, validated


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
