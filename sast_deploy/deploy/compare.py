"""Stage 8, comparison: float PyTorch, the fixed-point emulator and Lava's simulator, sample by
sample: :func:`compare` in memory (a model, its netx file, a test split), :func:`compare_run` on a
trained run, which writes ``compare.json`` and ``compare.md`` in the run directory.

Accuracies are percent; gaps are percentage points:
  transfer_gap_pp      surrogate − hard (float), full test split
  quantization_gap_pp  hard (float) − Lava, on the samples Lava ran

A run whose network the target cannot represent (a QuantizationError) is recorded as such:
compare.json holds ``"deployable": false`` and the ``reason``, and the error is raised on.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..data.datasets import FrameDataset, class_counts, load_dataset, stratified_subset
from .emulator import Emulation, emulate
from .export import precision_suffix, read_netx, write_run_netx
from .layers import layer_kind
from ..fileio import atomic_write_text
from ..lock import run_lock
from ..training.model import SpikingNet, predict
from .quantize import Loihi2Spec, QuantizationError, QuantizedNet, load_spec, quantize
from .simulate import SimulationResult, simulate_lava, simulate_quantized
from ..distributed import distributed_context, is_rank_zero, rank_bounds
from ..errors import RunError, one_line
from ..training.evaluate import accuracy_pct, fraction, output_counts
from ..training.runs import load_run


def check_input(qnet: QuantizedNet, data: FrameDataset, net_path: Path, n_classes: Optional[int] = None) -> None:
    """A RunError naming ``net_path`` unless the network takes the dataset's frames (as many
    inputs per time step; a conv first layer the same (polarity, height, width) shape) and, with
    ``n_classes``, has one output neuron per class of the run's dataset."""
    n_net = int(np.prod(qnet.layers[0].in_shape))
    n_data = int(np.prod(data.input_shape))
    if n_net != n_data:
        raise RunError(
            f"{net_path}: the network takes {n_net} inputs per time step (layer 1 input shape "
            f"{qnet.layers[0].in_shape}), the dataset provides {n_data} ({data.input_shape})"
        )
    if layer_kind(qnet.layers[0].kind).is_spatial and tuple(qnet.layers[0].in_shape) != tuple(data.input_shape):
        raise RunError(f"{net_path}: the network's first layer takes frames of shape {tuple(qnet.layers[0].in_shape)}, "
                       f"the dataset's are {tuple(data.input_shape)} (polarity, height, width)")
    if n_classes is not None and qnet.n_classes != n_classes:
        raise RunError(f"{net_path}: the network has {qnet.n_classes} output neurons, the run's dataset has "
                       f"{n_classes} classes (one output neuron per class)")


def compare_run(run_dir: str | Path, samples: int = 500, progress: bool = True, spec: Optional[Loihi2Spec] = None,
                copies: Optional[int] = None) -> Dict[str, object]:
    """Writes RUN_DIR/compare.json and compare.md (compare-w4.json etc. below 8 weight bits).
    The run directory is locked meanwhile (rank 0 holds the lock under torchrun)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.pt").is_file():
        load_run(run_dir)  # the error that names what is missing, before a lock creates anything
    spec = spec or load_spec()
    with run_lock(run_dir, "compare") if is_rank_zero() else contextlib.nullcontext():
        try:
            return _compare_run(run_dir, samples, progress, spec, copies)
        except QuantizationError as exc:
            if is_rank_zero():
                record_undeployable(run_dir, spec, exc)
            raise


def record_undeployable(run_dir: Path, spec: Loihi2Spec, exc: QuantizationError) -> Dict[str, object]:
    """compare.json (and .md) of a run the target cannot represent: ``deployable`` false and the
    reason, so that a study records the run and goes on."""
    suffix = precision_suffix(spec)
    result = {"run": str(run_dir), "weight_bits": spec.weight_bits, "deployable": False, "reason": one_line(exc)}
    atomic_write_text(run_dir / f"compare{suffix}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(run_dir / f"compare{suffix}.md", f"{run_dir.name}: cannot be deployed ({result['reason']})\n")
    return result


def _compare_run(run_dir: Path, samples: int, progress: bool, spec: Loihi2Spec, copies: Optional[int]) -> Dict[str, object]:
    """The run quantized once; that QuantizedNet is written to RUN_DIR/net.h5 (the deliverable,
    rewritten on every compare, so it always matches the model and every field of ``spec``),
    emulated on the full test split and handed to Lava for a class-stratified subset."""
    # Under torchrun the process group is created only after Lava has run: Lava forks its
    # process models, and forking a process that already runs gloo's threads is unsafe.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    model, recipe, _ = load_run(run_dir)
    qnet = quantize(model, spec)
    suffix = precision_suffix(spec)
    net_path = run_dir / f"net{suffix}.h5"
    if rank == 0:
        write_run_netx(qnet, run_dir, net_path, {"recipe": recipe.name, "n_time_bins": recipe.data.n_time_bins})
    _, test = load_dataset(recipe.data, progress=progress)
    check_input(qnet, test, net_path, recipe.data.spec.n_classes)
    lava_idx = stratified_subset(test.labels.numpy(), samples, recipe.data.subset_seed)  # all when samples = 0
    result = {"run": str(run_dir), "weight_bits": spec.weight_bits, "deployable": True,
              **_comparison(model, qnet, net_path, test, lava_idx, rank, world, progress, copies)}
    if rank == 0:
        atomic_write_text(run_dir / f"compare{suffix}.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(run_dir / f"compare{suffix}.md", compare_markdown([(run_dir.name, result)]))
    return result


def compare(model: SpikingNet, net: str | Path, test: FrameDataset, samples: int = 500, subset_seed: int = 0,
            progress: bool = True, copies: Optional[int] = None) -> Dict[str, object]:
    """The float ``model``, the emulator and Lava, sample by sample, in memory: the netx file
    ``net`` (``model`` exported, e.g. with :func:`sast_deploy.deploy.export.write_netx`) is
    emulated on all of ``test`` and simulated on Lava on a class-stratified subset of ``samples``
    (0: all; seeded by ``subset_seed``). Returns compare.json's fields (without ``run``,
    ``weight_bits`` and ``deployable``): accuracies in percent, gaps in percentage points,
    agreements as fractions of samples, Lava's speed, SynOps. Writes nothing
    (:func:`compare_run` does the same for a run directory and writes compare.json)."""
    net_path = Path(net)
    qnet = read_netx(net_path)
    check_input(qnet, test, net_path, model.n_classes)  # one output neuron per output of the float model
    lava_idx = stratified_subset(test.labels.numpy(), samples, subset_seed)
    return _comparison(model, qnet, net_path, test, lava_idx, 0, 1, progress, copies)


def _comparison(model: SpikingNet, qnet: QuantizedNet, net_path: Path, test: FrameDataset, lava_idx: np.ndarray,
                rank: int, world: int, progress: bool, copies: Optional[int]) -> Dict[str, object]:
    """compare.json's measurements: ``qnet`` (the network in ``net_path``) emulated on all of
    ``test``, ``net_path`` simulated on Lava on ``lava_idx``, both against the float ``model``.
    Under torchrun each rank emulates and simulates its contiguous slice; rank 0 gathers."""
    emulation, lava = _emulate_and_simulate(qnet, net_path, test, lava_idx, rank, world, progress, copies)
    return {
        "n_samples": len(lava_idx),
        "n_test": len(test),
        "lava_class_counts": class_counts(test.labels[lava_idx], qnet.n_classes),  # the subset Lava ran
        **_accuracies(model, test, emulation.counts, lava_idx, torch.from_numpy(np.concatenate([p.counts for p in lava]))),
        "ranks": world,
        **_lava_speed(lava, len(lava_idx)),
        **emulation.activity(),  # SynOps and spike rates over the full test split (emulator)
    }


def _emulate_and_simulate(qnet: QuantizedNet, net_path: Path, test: FrameDataset, lava_idx: np.ndarray, rank: int,
                          world: int, progress: bool, copies: Optional[int]) -> Tuple[Emulation, List[SimulationResult]]:
    """This rank's slices (of the test split for the emulator, of ``lava_idx`` for Lava), then,
    under torchrun, every rank's: the emulation of the full test split and Lava's results in
    sample order. Rank 0 simulates the file it wrote, ``net_path``; the others, which cannot
    wait for it (no process group before Lava has run), a temporary export of the same ``qnet``."""
    lo, hi = rank_bounds(len(test), rank, world)
    emulation = emulate(qnet, test.frames_at(range(lo, hi)), progress=progress and rank == 0)
    lo, hi = rank_bounds(len(lava_idx), rank, world)
    part = None
    if hi > lo:
        frames, kwargs = test.frames_at(lava_idx[lo:hi]), {"progress": progress and rank == 0, "copies": copies}
        part = simulate_lava(net_path, frames, **kwargs) if rank == 0 else simulate_quantized(qnet, frames, **kwargs)
    if world > 1:
        distributed_context(torch.device("cpu"))
    return Emulation.merge(_gather(emulation, world)), [p for p in _gather(part, world) if p is not None]


def _accuracies(model: SpikingNet, test: FrameDataset, emu: torch.Tensor, lava_idx: np.ndarray,
                lava: torch.Tensor) -> Dict[str, float]:
    """Accuracies (%), gaps (pp) and agreements (fractions of samples) of the float network in
    both spike modes, the emulator's counts ``emu`` (full test split) and Lava's ``lava`` (the
    samples ``lava_idx``)."""
    labels = test.labels
    sur, hard = output_counts(model, test, "surrogate"), output_counts(model, test, "hard")
    emu_sub, hard_sub, y_sub = emu[lava_idx], hard[lava_idx], labels[lava_idx]
    return {
        "surrogate_accuracy": accuracy_pct(sur, labels),
        "hard_accuracy": accuracy_pct(hard, labels),
        "emulator_accuracy": accuracy_pct(emu, labels),
        "transfer_gap_pp": accuracy_pct(sur, labels) - accuracy_pct(hard, labels),
        "emulator_quantization_gap_pp": accuracy_pct(hard, labels) - accuracy_pct(emu, labels),
        "hard_accuracy_lava_subset": accuracy_pct(hard_sub, y_sub),
        "emulator_accuracy_lava_subset": accuracy_pct(emu_sub, y_sub),
        "lava_accuracy": accuracy_pct(lava, y_sub),
        "quantization_gap_pp": accuracy_pct(hard_sub, y_sub) - accuracy_pct(lava, y_sub),
        "lava_emulator_agreement": fraction((lava == emu_sub).all(dim=1)),
        "lava_emulator_prediction_agreement": fraction(predict(lava) == predict(emu_sub)),
        "lava_hard_prediction_agreement": fraction(predict(lava) == predict(hard_sub)),
        "emulator_hard_count_agreement": fraction((emu == hard).all(dim=1)),
    }


def _lava_speed(parts: List[SimulationResult], n_samples: int) -> Dict[str, float]:
    seconds = max(p.seconds for p in parts)  # the ranks run side by side
    return {
        "lava_samples_per_s": n_samples / seconds,
        "lava_timesteps_per_s": sum(p.timesteps for p in parts) / seconds,
        "lava_compile_seconds": max(p.compile_seconds for p in parts),
        "lava_copies_per_graph": max(p.copies for p in parts),
    }


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def compare_markdown(rows) -> str:
    lines = [
        "| run | weight bits | surrogate % | hard float % | hard quantized (emulator) % | Lava % (n) | hard float on Lava subset % | "
        "Lava = emulator (spike counts) | Lava = hard float (predictions) | transfer gap pp | quantization gap pp | SynOps/sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['weight_bits']} | {r['surrogate_accuracy']:.2f} | {r['hard_accuracy']:.2f} | {r['emulator_accuracy']:.2f} | "
            f"{r['lava_accuracy']:.2f} ({r['n_samples']}) | {r['hard_accuracy_lava_subset']:.2f} | "
            f"{r['lava_emulator_agreement']:.4f} | {r['lava_hard_prediction_agreement']:.4f} | "
            f"{r['transfer_gap_pp']:+.2f} | {r['quantization_gap_pp']:+.2f} | {r['synops_per_sample']:.0f} |"
        )
    return "\n".join(lines) + "\n"
