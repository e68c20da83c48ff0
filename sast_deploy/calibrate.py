"""Post-hoc threshold calibration: the cheap alternative to SAST that the paper left open.

Per layer, a threshold multiplier is searched on a calibration split carved from the
*training* data (whole source images, never the test split) to maximise hard-spike
accuracy; coordinate ascent over the layers, a few passes. The result is a new run whose
model config carries the multipliers (``model.v_th_scale``), so evaluation, export and
every backend use the calibrated thresholds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from .data import FrameDataset, load_dataset
from .lock import run_lock
from .model import SpikingNet, build_model
from .train import evaluate, load_run, save_run

DEFAULT_GRID = tuple(np.round(np.arange(0.2, 1.51, 0.1), 2))


def calibration_split(train: FrameDataset, fraction: float = 0.1, seed: int = 0) -> FrameDataset:
    """A calibration subset of the training split: every recording of a random ``fraction``
    of the source images (all samples when the dataset has no source ids)."""
    sources = train.source_ids if train.source_ids is not None else np.arange(len(train))
    unique = np.unique(sources)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(unique, size=max(1, int(round(fraction * len(unique)))), replace=False)
    idx = np.nonzero(np.isin(sources, chosen))[0]
    return FrameDataset(train.frames[idx].numpy(), train.labels[idx].numpy(), sources[idx])


def _with_scales(model: SpikingNet, scales: Sequence[float]) -> SpikingNet:
    cfg = dataclasses.replace(model.config, v_th_scale=tuple(scales))
    out = build_model(cfg, model.input_shape, model.n_classes)
    out.load_state_dict(model.state_dict())
    return out.eval()


def calibrate_thresholds(model: SpikingNet, calib: FrameDataset, grid: Sequence[float] = DEFAULT_GRID,
                         passes: int = 2) -> Tuple[Tuple[float, ...], float]:
    """Per-layer threshold multipliers maximising hard accuracy on ``calib`` (ties: the
    multiplier closest to 1). Returns (multipliers, calibration accuracy in percent)."""
    scales = list(model.config.v_th_scale or [1.0] * len(model.layers))
    best = evaluate(_with_scales(model, scales), calib, ("hard",))["hard_accuracy"]
    for _ in range(passes):
        for i in range(len(scales)):
            for s in sorted(grid, key=lambda g: abs(g - 1.0)):
                trial = scales.copy()
                trial[i] = float(s)
                acc = evaluate(_with_scales(model, trial), calib, ("hard",))["hard_accuracy"]
                if acc > best:
                    best, scales = acc, trial
    return tuple(scales), best


def calibrate_run(run_dir: str | Path, out_dir: str | Path, fraction: float = 0.1, progress: bool = True) -> Dict[str, object]:
    """Calibrate a trained run's thresholds into a new run directory (locked meanwhile)."""
    with run_lock(out_dir, "calibrate"):
        return _calibrate_run(run_dir, Path(out_dir), fraction, progress)


def _calibrate_run(run_dir: str | Path, out_dir: Path, fraction: float, progress: bool) -> Dict[str, object]:
    model, recipe, metrics = load_run(run_dir)
    train, test = load_dataset(recipe.data, progress=progress)
    calib = calibration_split(train, fraction, seed=recipe.training.seed)
    scales, calib_acc = calibrate_thresholds(model, calib)
    calibrated = _with_scales(model, scales)
    new_recipe = dataclasses.replace(recipe, name=f"{recipe.name}-calibrated",
                                     model=dataclasses.replace(recipe.model, v_th_scale=scales))
    result = evaluate(calibrated, test, ("surrogate", "hard"))
    out = {
        **{k: v for k, v in metrics.items() if k not in ("surrogate_accuracy", "hard_accuracy", "transfer_gap_pp")},
        **result,
        "recipe": new_recipe.name,
        "calibrated_from": str(run_dir),
        "v_th_scale": list(scales),
        "calibration_samples": len(calib),
        "calibration_hard_accuracy": calib_acc,
        "uncalibrated_hard_accuracy": metrics.get("hard_accuracy"),
    }
    save_run(Path(out_dir), calibrated, new_recipe, out)
    return out
