"""A trained run scored on another dataset's test split: surrogate, hard and deployed accuracy.

The transfer check of a recipe: train on one dataset (the embedded ``synthetic-nmnist``), score
on recordings that training, calibration and any tuner never saw (the ``fontdigits-nmnist``
second source written as an N-MNIST tree and read through the real ``nmnist`` path). The other
dataset's frames are made the way the run's were (``n_time_bins``, ``denoise_us``,
``spatial_factor`` come from the run's recipe); only the source changes, so it must have the
same classes and the same input shape as the run's own dataset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Sequence

from ..data.datasets import DataConfig, DataError, load_dataset
from ..validation import validated

#: the fields that make frames out of events: the run's own, whatever dataset it is scored on
FRAME_FIELDS = ("n_time_bins", "denoise_us", "spatial_factor")


def other_data(run_data: DataConfig, overrides: Sequence[str]) -> DataConfig:
    """The data section of the other dataset: ``data.KEY=VALUE`` overrides on defaults, with the
    run's frame fields (:data:`FRAME_FIELDS`); raises :class:`DataError` when it does not fit the
    run (another number of classes, another input shape) or a key is not a data field."""
    from ..training.recipe import apply_overrides

    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("data."):
            raise DataError(f"--data-set {item!r}: only data.KEY=VALUE fields describe the other dataset")
    raw = {"data": {name: getattr(run_data, name) for name in FRAME_FIELDS}}
    raw = apply_overrides(raw, overrides)
    other = validated(DataConfig, raw["data"], "--data-set", DataError, prefix="data")
    for name in FRAME_FIELDS:
        if getattr(other, name) != getattr(run_data, name):
            raise DataError(f"--data-set data.{name}: the run's frames use {getattr(run_data, name)!r}; "
                            f"scoring it on frames made otherwise would not measure transfer")
    if other.spec.n_classes != run_data.spec.n_classes:
        raise DataError(f"data.name: {other.name!r} has {other.spec.n_classes} classes, "
                        f"the run's {run_data.name!r} has {run_data.spec.n_classes}")
    if other.sample_shape() != run_data.sample_shape():
        raise DataError(f"data.name: {other.name!r} gives samples of shape {other.sample_shape()}, "
                        f"the run was trained on {run_data.sample_shape()} ({run_data.name!r})")
    return other


def evaluate_run_on(run_dir: str | Path, overrides: Sequence[str] = (), modes: Sequence[str] = ("surrogate", "hard"),
                    emulator: bool = True, progress: bool = False, spec=None) -> Dict[str, object]:
    """Accuracies (percent) of the run in ``run_dir`` on a test split: its own dataset's, or,
    with ``overrides`` (``data.KEY=VALUE``), another's (:func:`other_data`). Float accuracy per
    mode in ``modes`` (their gap in pp when both), and, with ``emulator``, the deployed network's
    (Loihi 2 fixed point at ``spec``, default export/loihi2.toml; the emulator equals Lava bit
    for bit)."""
    from ..training.evaluate import evaluate
    from ..training.runs import load_run

    model, recipe, _ = load_run(run_dir)
    data = other_data(recipe.data, overrides) if overrides else recipe.data
    _, test = load_dataset(data, progress=progress)
    if len(test) == 0:
        raise DataError(f"{data.name}: empty test split")
    result: Dict[str, object] = {"dataset": data.name, "n_samples": len(test)}
    if overrides:
        result["data"] = dataclasses.asdict(data)
    result.update(evaluate(model, test, modes, recipe.training.eval_batch_size))
    if emulator:
        result["emulator_accuracy"] = deployed_accuracy(model, test, Path(run_dir), spec)
    return result


def deployed_accuracy(model, test, run_dir: Path, spec=None) -> float:
    """Accuracy (percent) of the network quantized to Loihi 2 fixed point, on the emulator."""
    from ..deploy.compare import check_input
    from ..deploy.emulator import emulate_counts
    from ..deploy.quantize import load_spec, quantize
    from ..training.evaluate import accuracy_pct

    qnet = quantize(model, spec or load_spec())
    check_input(qnet, test, run_dir / "model.pt")
    return accuracy_pct(emulate_counts(qnet, test.frames_at(range(len(test)))), test.labels)
