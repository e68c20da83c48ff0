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

Runs live in ``OUT/<method>/seed<k>``, so a method name is a slug (letters, digits, '.', '_'
and '-', starting with a letter or digit, no '..'): never a path out of ``OUT``. A study
interrupted mid-way continues with the runs (and epochs) it lacks when started again: a run is
complete when its files are (model.pt readable, metrics.json; compare.json for the comparison).
Each run folder holds ``study-run.json``, the fingerprint of what the study asked of it (the
method and its resolved recipe, or the calibrated source's fingerprint), and a study whose
methods changed is refused on an existing ``--out`` instead of reusing runs of the old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import RunError, SastDeployError, one_line
from ..training.recipe import Recipe, RecipeError, canonical, load_recipe, read_toml
from ..fileio import atomic_write_text, read_json
from ..validation import Seed, Size0, check_ranges, file_data, validated


SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_slug(value: str, field: str) -> None:
    """A ValueError naming ``field`` unless ``value`` is a slug (one path component of at most 100
    characters that cannot leave its folder)."""
    if not SLUG.fullmatch(value) or ".." in value:
        raise ValueError(f"{field} must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit "
                         f"and without '..' (it names a folder), got {value!r}")


@file_data
@dataclass(frozen=True)
class Method:
    name: str  # a slug: the method's runs live in OUT/<name>/seed<k>
    set: Tuple[str, ...] = ()
    calibrate: str = ""  # name of the method whose runs are threshold-calibrated

    def __post_init__(self):
        check_slug(self.name, "method.name")
        if self.calibrate:
            check_slug(self.calibrate, f"method {self.name!r}: calibrate")


@file_data
@dataclass(frozen=True)
class StudyFile:
    """A study TOML file as written (``[[method]]`` tables)."""

    base: str  # the recipe the methods modify
    name: str = ""
    seeds: Tuple[Seed, ...] = (0, 1, 2)
    lava_samples: Size0 = 200  # 0 = the whole test split
    method: Tuple[Method, ...] = ()

    def __post_init__(self):
        check_ranges(self, "")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}")


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


def run_dir(out: str | Path, method: str, seed: int) -> Path:
    """Where a study in ``out`` keeps the run of ``method`` at ``seed`` (the report reads it there)."""
    return Path(out) / method / f"seed{seed}"


INDEX_FILE = "study.json"


@file_data
@dataclass(frozen=True)
class StudyIndex:
    """``OUT/study.json``: the study as :func:`run_study` ran it, for the report to read back."""

    name: str
    base: str
    seeds: Tuple[Seed, ...]
    lava_samples: Size0
    methods: Tuple[Method, ...]


def write_index(out: Path, study: Study) -> None:
    index = StudyIndex(study.name, str(study.base), study.seeds, study.lava_samples, study.methods)
    atomic_write_text(Path(out) / INDEX_FILE, json.dumps(dataclasses.asdict(index), indent=2) + "\n")


def read_index(study_dir: str | Path) -> StudyIndex:
    """A study folder's ``study.json``, validated; a missing or malformed one is a RunError naming it."""
    path = Path(study_dir) / INDEX_FILE
    return validated(StudyIndex, read_json(path, "study index"), str(path), RunError)


FINGERPRINT_NAME = "study-run.json"  # in each run directory: what the study asked of that run


@dataclass(frozen=True)
class PlannedRun:
    """One (method, seed) run of a study: its folder and the fingerprint of what it is (the
    method and its fully resolved recipe, or for a calibration the source run's fingerprint)."""

    method: Method
    seed: int
    path: Path
    fingerprint: str
    recipe: Optional[Recipe] = None  # the resolved recipe of a trained method (None: a calibration)


def plan_runs(study: Study, out: Path, seeds: Optional[Sequence[int]] = None) -> List[PlannedRun]:
    """Every selected (seed, method) run with its fingerprint, in the order they run."""
    planned: List[PlannedRun] = []
    for seed in [s for s in study.seeds if seeds is None or s in seeds]:
        by_name = {}
        for m in study.methods:
            what = {"method": m.name, "seed": seed}
            if m.calibrate:
                what["calibrates"] = by_name[m.calibrate].fingerprint
                recipe = None
            else:
                recipe = load_recipe(study.base, [*m.set, f"training.seed={seed}"])
                what["recipe"] = json.loads(canonical(recipe))
            digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
            by_name[m.name] = PlannedRun(m, seed, run_dir(out, m.name, seed), digest, recipe)
            planned.append(by_name[m.name])
    return planned


def check_fingerprints(planned: Sequence[PlannedRun]) -> None:
    """A RecipeError before any work when a run folder holds anything but a run of what the study
    asks now: a changed study (a method's ``set``, the base recipe, a calibration's source) rerun
    into an existing ``--out`` would otherwise reuse runs under labels they do not have."""
    for run in planned:
        if not run.path.exists() or not any(run.path.iterdir()):
            continue
        stored = _stored_fingerprint(run.path / FINGERPRINT_NAME)
        if stored != run.fingerprint:
            why = ("holds no study fingerprint (not written by this study, or by a version before fingerprints)"
                   if stored is None else "was made by a different version of this study (its method, base recipe "
                   "or calibration source changed)")
            raise RecipeError(f"{run.path}: {why}; use a new --out for the changed study, or delete the folder to redo it")


def _stored_fingerprint(path: Path) -> Optional[str]:
    if not path.is_file():
        return None
    saved = read_json(path, "study fingerprint")
    value = saved.get("fingerprint") if isinstance(saved, dict) else None
    if not isinstance(value, str):
        raise RunError(f"{path}: field fingerprint must be a string")
    return value


def run_complete(path: Path) -> bool:
    """Whether a run's files are there and readable: model.pt (read as data and validated) and
    metrics.json. A run missing either is trained (resuming its checkpoint) or calibrated again."""
    from ..training.runs import read_model_file

    try:
        read_model_file(path / "model.pt")
        read_json(path / "metrics.json", "metrics file")
    except SastDeployError:
        return False
    return True


def compare_complete(path: Path) -> bool:
    """Whether the run's compare.json is there and readable."""
    try:
        return isinstance(read_json(path / "compare.json", "comparison"), dict)
    except SastDeployError:
        return False


def run_study(study: Study, out: str | Path, progress: bool = True, log=print,
              seeds: Optional[Sequence[int]] = None) -> List[Path]:
    """Train/calibrate and compare every (seed, method) run that is not finished yet; with
    ``seeds``, only those of the study's seeds (they must be among them). Every run folder is
    checked against the study's fingerprints before any work (:func:`check_fingerprints`)."""
    unknown = sorted(set(seeds or ()) - set(study.seeds))
    if unknown:
        raise RecipeError(f"study {study.name}: seeds {unknown} are not among the study's seeds {list(study.seeds)}")
    from ..training.calibrate import calibrate_run
    from ..deploy.compare import compare_run
    from ..deploy.quantize import QuantizationError
    from ..training.train import train

    out = Path(out)
    planned = plan_runs(study, out, seeds)
    check_fingerprints(planned)
    out.mkdir(parents=True, exist_ok=True)
    write_index(out, study)
    done = []
    for run in planned:
        m, d = run.method, run.path
        redone = not run_complete(d)
        if redone:
            log(f"[{study.name}] {m.name} seed {run.seed}: {'calibrate' if m.calibrate else 'train'} -> {d}")
            atomic_write_text(d / FINGERPRINT_NAME, json.dumps({"fingerprint": run.fingerprint, "method": m.name,
                                                                "seed": run.seed}, indent=2) + "\n")
            if m.calibrate:
                calibrate_run(run_dir(out, m.calibrate, run.seed), d, progress=progress)
            else:
                train(run.recipe, d, progress=progress)
        if redone or not compare_complete(d):
            try:
                compare_run(d, samples=study.lava_samples, progress=progress)
            except QuantizationError as exc:  # recorded in compare.json by compare_run; the study goes on
                log(f"[{study.name}] {m.name} seed {run.seed}: cannot be deployed ({one_line(exc)}); recorded in {d / 'compare.json'}")
        done.append(d)
    return done
