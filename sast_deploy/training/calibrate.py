"""Post-hoc threshold calibration: the cheap alternative to SAST that the paper left open.

Per layer, a threshold multiplier is searched on the run's validation split (the same cut as
training's, :func:`sast_deploy.data.datasets.load_splits`; a run trained with
``data.val_fraction = 0`` has none, and a calibration split is carved from its training data
instead: whole source images, never the test split) to maximise hard-spike accuracy;
coordinate ascent over the layers, a few passes. Multipliers live on a log grid
(steps of 2^(1/4)) that starts at 1/16..4 and grows by octaves in a direction for as long as
the best multiplier sits on that edge of it, up to 2^-16..2^8: a hard network that is silent
needs thresholds far below 1, and a search that stops at its own edge is no control. The
output records the grid searched and whether the best multiplier ended on its outer limit.
Only thresholds the Loihi 2 target can represent at the layer's scale are tried: a threshold
whose mantissa rounds to 0 (:func:`sast_deploy.deploy.quantize.threshold_mantissa`) would make
the calibrated network impossible to deploy, so those multipliers are skipped, and the output
names the range skipped per layer (``calibration_out_of_range``).
The result is a new run whose model config carries the multipliers (``model.v_th_scale``),
so evaluation, export and every backend use the calibrated thresholds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.datasets import FrameDataset, load_splits, stratified_subset
from ..errors import RunError
from ..fileio import read_json
from ..lock import run_lock
from .model import SpikingNet, build_model
from .evaluate import evaluate
from .runs import load_run, save_run
from .val_metrics import validation_metrics

STEPS_PER_OCTAVE = 4  # multipliers 2^(k/4): 19 % apart
START_OCTAVES = (-4, 2)  # the first grid: 1/16 .. 4
LIMIT_OCTAVES = (-16, 8)  # the grid grows to at most 2^-16 .. 2^8


@dataclass(frozen=True)
class Calibration:
    """The result of a threshold search: per-layer multipliers, the calibration accuracy (%),
    the multipliers' range searched per layer, per layer whether the best multiplier lies on
    the outer limit of the search (where a wider search might do better), and per layer the
    (lowest, highest) multiplier skipped because the target cannot represent its threshold
    (None: none skipped)."""

    scales: Tuple[float, ...]
    accuracy: float
    searched: Tuple[Tuple[float, float], ...]
    bound_hit: Tuple[bool, ...]
    out_of_range: Tuple[Optional[Tuple[float, float]], ...] = ()


def _octave_grid(lo: int, hi: int) -> List[float]:
    return [2.0 ** (k / STEPS_PER_OCTAVE) for k in range(lo * STEPS_PER_OCTAVE, hi * STEPS_PER_OCTAVE + 1)]


def search_log_scale(accuracy_at: Callable[[float], float], start: float, best: float,
                     representable: Callable[[float], bool] = lambda s: True
                     ) -> Tuple[float, float, Tuple[float, float], bool, Tuple[float, ...]]:
    """Maximise ``accuracy_at`` over the growing log grid, trying only the multipliers that
    are ``representable`` on the target. The current multiplier ``start`` (accuracy ``best``)
    is kept unless another is strictly better (any representable one is, when ``start`` itself
    is not); candidates closest to 1 are tried first, so ties go to the smallest change. The
    grid grows by two octaves on a side while its edge there is representable and scores at
    least the best so far (a plateau, such as a silent network's chance accuracy, is no sign
    of an optimum). Returns (multiplier, accuracy, (lowest, highest) multiplier searched,
    whether the best lies on the outer limit, the multipliers skipped as unrepresentable)."""
    lo, hi = START_OCTAVES
    tried: Dict[float, float] = {}
    skipped: set = set()
    choice = start
    if not representable(start):
        best = -np.inf
    while True:
        for s in sorted(_octave_grid(lo, hi), key=lambda g: abs(np.log2(g))):
            if s in tried or s in skipped:
                continue
            if not representable(s):
                skipped.add(s)
                continue
            tried[s] = accuracy_at(s)
            if tried[s] > best:
                best, choice = tried[s], s
        grow_lo = lo > LIMIT_OCTAVES[0] and tried.get(2.0 ** lo, -np.inf) >= best
        grow_hi = hi < LIMIT_OCTAVES[1] and tried.get(2.0 ** hi, -np.inf) >= best
        if not (grow_lo or grow_hi):
            if not tried:
                raise RunError(f"no threshold multiplier in 2^{lo}..2^{hi} is representable on the target")
            bound = choice in (2.0 ** LIMIT_OCTAVES[0], 2.0 ** LIMIT_OCTAVES[1])
            return choice, best, (min(tried), max(tried)), bound, tuple(sorted(skipped))
        lo, hi = lo - 2 * grow_lo, hi + 2 * grow_hi


def calibration_split(train: FrameDataset, fraction: float = 0.1, seed: int = 0) -> FrameDataset:
    """A calibration subset of the training split: every recording of a random ``fraction``
    of the source images of a generated dataset, or a seeded class-stratified ``fraction`` of
    the recordings of a real one (which has no source ids)."""
    if train.source_ids is None:
        return train.subset(stratified_subset(train.labels.numpy(), max(1, int(round(fraction * len(train)))), seed))
    unique = np.unique(train.source_ids)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(unique, size=max(1, int(round(fraction * len(unique)))), replace=False)
    return train.subset(np.nonzero(np.isin(train.source_ids, chosen))[0])


def _with_scales(model: SpikingNet, scales: Sequence[float]) -> SpikingNet:
    cfg = dataclasses.replace(model.config, v_th_scale=tuple(scales))
    out = build_model(cfg, model.input_shape, model.n_classes)
    out.load_state_dict(model.state_dict())
    return out.eval()


def representable_multipliers(model: SpikingNet, spec=None) -> List[Callable[[float], bool]]:
    """Per layer: whether a threshold multiplier gives a threshold the target (``spec``, the
    default export/loihi2.toml) can represent at the layer's scale, i.e. whose mantissa does
    not round to 0 (:func:`sast_deploy.deploy.quantize.threshold_mantissa`, the quantizer's own rule)."""
    from ..deploy.quantize import load_spec, max_abs_weight, threshold_mantissa

    spec = spec or load_spec()
    v_th = model.config.v_th

    def check(max_abs: float) -> Callable[[float], bool]:
        # a layer whose weights are all zero cannot be deployed at any threshold; quantize names it
        return lambda s: max_abs == 0.0 or threshold_mantissa(max_abs, v_th * s, spec) >= 1

    return [check(max_abs_weight(layer)) for layer in model.layers]


def calibrate_thresholds(model: SpikingNet, calib: FrameDataset, passes: int = 2, spec=None) -> Calibration:
    """Per-layer threshold multipliers maximising hard accuracy on ``calib``, coordinate
    ascent over the layers (:func:`search_log_scale` per layer), among the thresholds the
    target ``spec`` can represent (:func:`representable_multipliers`)."""
    scales = list(model.config.v_th_scale or [1.0] * len(model.layers))
    representable = representable_multipliers(model, spec)
    best = evaluate(_with_scales(model, scales), calib, ("hard",))["hard_accuracy"]
    searched = [(s, s) for s in scales]
    bound_hit = [False] * len(scales)
    skipped: List[set] = [set() for _ in scales]
    for _ in range(passes):
        for i in range(len(scales)):
            def accuracy_at(s: float, i: int = i) -> float:
                trial = scales[:i] + [s] + scales[i + 1:]
                return evaluate(_with_scales(model, trial), calib, ("hard",))["hard_accuracy"]

            scales[i], best, (lo, hi), bound_hit[i], out = search_log_scale(accuracy_at, scales[i], best, representable[i])
            searched[i] = (min(lo, searched[i][0]), max(hi, searched[i][1]))
            skipped[i].update(out)
    out_of_range = tuple((min(k), max(k)) if k else None for k in skipped)
    return Calibration(tuple(scales), best, tuple(searched), tuple(bound_hit), out_of_range)


RUN_FILES = ("model.pt", "checkpoint.pt", "metrics.json")  # a folder holding any of these holds a run


def calibrate_run(run_dir: str | Path, out_dir: str | Path, fraction: float = 0.1, progress: bool = True) -> Dict[str, object]:
    """Calibrate a trained run's thresholds into a new run directory (locked meanwhile); see
    :func:`check_calibration_target` for the directories it refuses. ``fraction`` (of the
    training source images, for a run without a validation split) must lie in (0, 1]."""
    if not 0 < fraction <= 1:  # false for nan; refused before the output folder is locked (made)
        raise RunError(f"calibration fraction must be in (0, 1], got {fraction}")
    with run_lock(out_dir, "calibrate"):
        check_calibration_target(Path(run_dir), Path(out_dir))
        return _calibrate_run(run_dir, Path(out_dir), fraction, progress)


def check_calibration_target(source: Path, out_dir: Path) -> None:
    """A RunError unless ``out_dir`` may receive the calibration of ``source``: it must not be
    ``source`` itself, and a folder that holds a run already is overwritten only when that run
    is an earlier calibration of the same source (its metrics.json says ``calibrated_from`` the
    same folder, and it has no checkpoint.pt, which calibration never writes), so calibrating
    again with another ``--fraction``, or a study resuming, replaces only what calibrate wrote."""
    if out_dir.resolve() == source.resolve():
        raise RunError(f"{out_dir}: --out is the source run itself; calibrate writes a new run (e.g. --out {source}-cal)")
    present = [name for name in RUN_FILES if (out_dir / name).exists() or (out_dir / name).is_symlink()]
    if not present:
        return
    refusal = (f"{out_dir}: holds a run ({', '.join(present)}) that is not an earlier calibration of {source}; "
               f"refusing to overwrite it (choose another --out)")
    if "checkpoint.pt" in present or "metrics.json" not in present:
        raise RunError(refusal)
    earlier = read_json(out_dir / "metrics.json", "metrics file")
    origin = earlier.get("calibrated_from") if isinstance(earlier, dict) else None
    if not isinstance(origin, str) or Path(origin).resolve() != source.resolve():
        raise RunError(refusal)


def _calibrate_run(run_dir: str | Path, out_dir: Path, fraction: float, progress: bool) -> Dict[str, object]:
    model, recipe, metrics = load_run(run_dir)
    splits = load_splits(recipe.data, progress=progress)
    test = splits.test
    # the run's own validation split; a run without one gets the old carve of its training data
    calib = splits.val if splits.val is not None else calibration_split(splits.train, fraction, seed=recipe.training.seed)
    cal = calibrate_thresholds(model, calib)
    scales = cal.scales
    calibrated = _with_scales(model, scales)
    new_recipe = dataclasses.replace(recipe, name=f"{recipe.name}-calibrated",
                                     model=dataclasses.replace(recipe.model, v_th_scale=scales))
    result = evaluate(calibrated, test, ("surrogate", "hard"))
    validation = None if splits.val is None else validation_metrics(calibrated, splits.val, recipe.data.spec.n_classes)
    out = {
        **{k: v for k, v in metrics.items() if k not in ("surrogate_accuracy", "hard_accuracy", "transfer_gap_pp")},
        **result,
        "validation": validation,  # the calibrated network's; its thresholds were fitted on this split
        "recipe": new_recipe.name,
        "calibrated_from": str(run_dir),
        "v_th_scale": list(scales),
        "calibration_split": "validation" if splits.val is not None else f"training carve ({fraction:g} of the sources)",
        "calibration_samples": len(calib),
        "calibration_hard_accuracy": cal.accuracy,
        "calibration_searched": [list(r) for r in cal.searched],  # (lowest, highest) multiplier tried, per layer
        "calibration_bound_hit": list(cal.bound_hit),  # per layer: the best multiplier is on the search's outer limit
        # per layer: (lowest, highest) multiplier skipped because its threshold rounds to 0 on the target, or None
        "calibration_out_of_range": [None if r is None else list(r) for r in cal.out_of_range],
        "uncalibrated_hard_accuracy": metrics.get("hard_accuracy"),
    }
    save_run(Path(out_dir), calibrated, new_recipe, out)
    return out
