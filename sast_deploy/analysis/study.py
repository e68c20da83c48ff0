"""The transfer-gap study: several methods x several seeds on one base recipe, each run
trained (or calibrated), then compared (emulator on the full test split, Lava on a subset).

A study file (``train/study-*.toml``)::

    name = "nmnist"
    base = "demo.toml"          # a recipe in train/ (or a path)
    seeds = [0, 1, 2]
    lava_samples = 200
    [[method]]
    name = "baseline"
    set = ["optimizer.name=baseline"]
    [[method]]
    name = "baseline-calibrated"
    calibrate = "baseline"      # post-hoc threshold calibration of that method's runs

Runs live in ``OUT/<method>/seed<k>``; a study interrupted mid-way continues with the runs
(and epochs) it lacks when started again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..training.recipe import RecipeError, load_recipe, read_toml
from ..fileio import atomic_write_text
from ..validation import file_data, validated


@file_data
@dataclass(frozen=True)
class Method:
    name: str
    set: Tuple[str, ...] = ()
    calibrate: str = ""  # name of the method whose runs are threshold-calibrated


@file_data
@dataclass(frozen=True)
class StudyFile:
    """A study TOML file as written (``[[method]]`` tables)."""

    base: str  # the recipe the methods modify
    name: str = ""
    seeds: Tuple[int, ...] = (0, 1, 2)
    lava_samples: int = 200
    method: Tuple[Method, ...] = ()


@dataclass(frozen=True)
class Study:
    name: str
    base: Path
    seeds: Tuple[int, ...] = (0, 1, 2)
    lava_samples: int = 200
    methods: Tuple[Method, ...] = field(default_factory=tuple)


def load_study(path: str | Path) -> Study:
    path = Path(path)
    raw = validated(StudyFile, read_toml(path, "study"), str(path), RecipeError)
    base = Path(raw.base)
    if not base.is_file():
        base = path.parent / raw.base
    methods = raw.method
    names = [m.name for m in methods]
    if len(set(names)) != len(names) or not names:
        raise RecipeError(f"{path}: method names must be unique and at least one is needed, got {names}")
    for m in methods:
        if m.calibrate and m.calibrate not in names[: names.index(m.name)]:
            raise RecipeError(f"{path}: method {m.name!r} calibrates {m.calibrate!r}, which must be listed before it")
        try:
            load_recipe(base, list(m.set))  # validate every override now, not an hour into the study
        except RecipeError as exc:
            raise RecipeError(f"{path}: method {m.name!r}: {exc}") from None
    return Study(raw.name or path.stem, base, raw.seeds, raw.lava_samples, tuple(methods))


def run_dir(out: Path, method: str, seed: int) -> Path:
    return Path(out) / method / f"seed{seed}"


def run_study(study: Study, out: str | Path, progress: bool = True, log=print,
              seeds: Optional[Sequence[int]] = None) -> List[Path]:
    """Train/calibrate and compare every (seed, method) run that is not finished yet; with
    ``seeds``, only those of the study's seeds (they must be among them)."""
    unknown = sorted(set(seeds or ()) - set(study.seeds))
    if unknown:
        raise RecipeError(f"study {study.name}: seeds {unknown} are not among the study's seeds {list(study.seeds)}")
    from ..training.calibrate import calibrate_run
    from ..deploy.compare import compare_run
    from ..deploy.quantize import QuantizationError
    from ..errors import one_line
    from ..training.train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.json", json.dumps({
        "name": study.name, "base": str(study.base), "seeds": list(study.seeds), "lava_samples": study.lava_samples,
        "methods": [{"name": m.name, "set": list(m.set), "calibrate": m.calibrate} for m in study.methods]}, indent=2) + "\n")
    done = []
    for seed in [s for s in study.seeds if seeds is None or s in seeds]:
        for m in study.methods:
            d = run_dir(out, m.name, seed)
            if not (d / "metrics.json").exists():
                log(f"[{study.name}] {m.name} seed {seed}: {'calibrate' if m.calibrate else 'train'} -> {d}")
                if m.calibrate:
                    calibrate_run(run_dir(out, m.calibrate, seed), d, progress=progress)
                else:
                    recipe = load_recipe(study.base, [*m.set, f"training.seed={seed}"])
                    train(recipe, d, progress=progress)
            if not (d / "compare.json").exists():
                try:
                    compare_run(d, samples=study.lava_samples, progress=progress)
                except QuantizationError as exc:  # recorded in compare.json by compare_run; the study goes on
                    log(f"[{study.name}] {m.name} seed {seed}: cannot be deployed ({one_line(exc)}); recorded in {d / 'compare.json'}")
            done.append(d)
    return done
