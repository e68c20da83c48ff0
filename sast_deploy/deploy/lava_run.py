"""A netx file on a run's test split, on Lava's simulator: ``simulate.json``
(``sast-deploy simulate NET.h5 --run RUN_DIR``).

The file is simulated as it is (:func:`sast_deploy.deploy.simulate.simulate_lava` builds netx's
graph from it); the run names the dataset, whose test split gives a seeded class-stratified
subset. simulate.json holds, per sample, the test index, label, prediction and output spike
counts, and the accuracy (percent) and speed of the whole subset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..data.datasets import class_counts, load_dataset, stratified_subset
from ..fileio import atomic_write_text
from ..training.model import predict
from ..training.runs import load_run
from .compare import check_input
from .export import read_netx
from .simulate import SimulatorConfig, simulate_lava

#: the fields of simulate.json that hold one value per sample (the rest summarise the subset)
PER_SAMPLE_FIELDS = ("test_indices", "labels", "predictions", "spike_counts")


def simulate_run(net: str | Path, run_dir: str | Path, samples: int = 500, out: Optional[str | Path] = None,
                 hardware: Optional[str | Path] = None, copies: Optional[int] = None,
                 progress: bool = True) -> Tuple[Dict[str, object], Path]:
    """Simulate the netx file ``net`` on ``samples`` test samples of the run ``run_dir``'s dataset
    (a seeded class-stratified subset; 0: all) and write the result atomically to ``out``
    (default RUN_DIR/simulate.json). ``hardware``: a simulator run config (default
    hardware/lava-sim.toml); ``copies`` as for :func:`simulate_lava`. Returns (the result, its path)."""
    named = {"net": str(net), "run": str(run_dir)}  # as given
    net, run_dir = Path(net), Path(run_dir)
    qnet = read_netx(net)  # a malformed file is refused before the dataset loads
    _, recipe, _ = load_run(run_dir)
    _, test = load_dataset(recipe.data, progress=progress)
    n_classes = recipe.data.spec.n_classes
    check_input(qnet, test, net, n_classes)
    idx = stratified_subset(test.labels.numpy(), samples, recipe.data.subset_seed)
    res = simulate_lava(net, test.frames_at(idx), progress=progress, hardware=SimulatorConfig.load(hardware),
                        copies=copies)
    pred = predict(res.counts)
    labels = test.labels[idx].numpy()
    result = {
        **named, "n_samples": len(idx), "test_indices": idx.tolist(),
        "class_counts": class_counts(labels, n_classes),
        "accuracy": float(100.0 * np.mean(pred == labels)),
        "samples_per_s": res.samples_per_s, "timesteps_per_s": res.timesteps_per_s,
        "compile_seconds": res.compile_seconds, "run_seconds": res.seconds,
        "labels": labels.tolist(), "predictions": pred.tolist(), "spike_counts": res.counts.tolist(),
    }
    path = Path(out) if out else run_dir / "simulate.json"
    atomic_write_text(path, json.dumps(result) + "\n")
    return result, path


def summary(result: Dict[str, object]) -> Dict[str, object]:
    """simulate.json without its per-sample fields: what ``sast-deploy simulate`` prints."""
    return {k: v for k, v in result.items() if k not in PER_SAMPLE_FIELDS}
