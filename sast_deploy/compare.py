"""Stage 8, comparison: float PyTorch, the fixed-point emulator and Lava's simulator, sample by
sample, on a trained run. Writes ``compare.json`` and ``compare.md`` in the run directory.

Accuracies are percent; gaps are percentage points:
  transfer_gap_pp      surrogate − hard (float), full test split
  quantization_gap_pp  hard (float) − Lava, on the samples Lava ran
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .data import FrameDataset, class_counts, load_dataset, stratified_subset
from .export import read_netx, write_netx
from .fileio import atomic_write_text
from .lock import run_lock
from .model import predict
from .quantize import Emulation, Loihi2Spec, QuantizedNet, emulate, quantize
from .simulate import DEFAULT_COPIES, simulate_lava
from .distributed import distributed_context, is_rank_zero
from .errors import RunError
from .evaluate import accuracy_pct, output_counts
from .runs import load_run

DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "export" / "loihi2.toml"


def load_spec(path: Optional[str | Path] = None) -> Loihi2Spec:
    """The target spec of ``path``; without one, export/loihi2.toml (built-in defaults when that is
    absent). A named file that does not exist is an error, never silently the default."""
    if path:
        return Loihi2Spec.from_toml(path)
    return Loihi2Spec.from_toml(DEFAULT_SPEC) if DEFAULT_SPEC.is_file() else Loihi2Spec()


def export_run(run_dir: str | Path, out: Optional[str | Path] = None, spec: Optional[Loihi2Spec] = None) -> Dict[str, object]:
    """Quantize a run and write its netx HDF5 (default RUN_DIR/net.h5) and quantization.json."""
    model, recipe, _ = load_run(run_dir)
    qnet = quantize(model, spec or load_spec())
    out = Path(out) if out else Path(run_dir) / "net.h5"
    write_netx(qnet, out, metadata={"recipe": recipe.name, "n_time_bins": recipe.data.n_time_bins})
    report = {"net": str(out), "target": qnet.spec.name, "layers": qnet.report()}
    atomic_write_text(Path(run_dir) / "quantization.json", json.dumps(report, indent=2) + "\n")
    return report


def check_input(qnet: QuantizedNet, data: FrameDataset, net_path: Path) -> None:
    n_net = int(np.prod(qnet.layers[0].in_shape))
    n_data = int(np.prod(data.input_shape))
    if n_net != n_data:
        raise RunError(
            f"{net_path}: the network takes {n_net} inputs per time step (layer 1 input shape "
            f"{qnet.layers[0].in_shape}), the dataset provides {n_data} ({data.input_shape})"
        )


def precision_suffix(spec: Loihi2Spec) -> str:
    """File-name suffix of a weight precision: '' for the default 8 bits, '-w4' for 4 bits."""
    return "" if spec.weight_bits == 8 else f"-w{spec.weight_bits}"


def compare_run(run_dir: str | Path, samples: int = 500, progress: bool = True, spec: Optional[Loihi2Spec] = None,
                copies: int = DEFAULT_COPIES) -> Dict[str, object]:
    """Writes RUN_DIR/compare.json and compare.md (compare-w4.json etc. below 8 weight bits).
    The run directory is locked meanwhile (rank 0 holds the lock under torchrun)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.pt").is_file():
        load_run(run_dir)  # the error that names what is missing, before a lock creates anything
    with run_lock(run_dir, "compare") if is_rank_zero() else contextlib.nullcontext():
        return _compare_run(run_dir, samples, progress, spec, copies)


def _compare_run(run_dir: Path, samples: int, progress: bool, spec: Optional[Loihi2Spec], copies: int) -> Dict[str, object]:
    spec = spec or load_spec()
    # Under torchrun the process group is created only after Lava has run: Lava forks its
    # process models, and forking a process that already runs gloo's threads is unsafe.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    model, recipe, metrics = load_run(run_dir)
    suffix = precision_suffix(spec)
    net_path = run_dir / f"net{suffix}.h5"
    if not net_path.exists() or net_path.stat().st_mtime < (run_dir / "model.pt").stat().st_mtime:
        export_run(run_dir, net_path, spec)  # on every rank: the export is deterministic and written atomically
    qnet = read_netx(net_path, spec)
    _, test = load_dataset(recipe.data, progress=progress)
    check_input(qnet, test, net_path)
    labels = test.labels
    sur = output_counts(model, test, "surrogate")
    hard = output_counts(model, test, "hard")
    # under torchrun each rank emulates and simulates its contiguous slice; rank 0 gathers
    lo, hi = _shard(len(test), rank, world)
    local_emulation = emulate(qnet, test.frames_at(range(lo, hi)), progress=progress and rank == 0)
    lava_idx = stratified_subset(labels.numpy(), samples, recipe.data.subset_seed)  # all when samples = 0
    n = len(lava_idx)
    lo, hi = _shard(n, rank, world)
    part = simulate_lava(net_path, test.frames_at(lava_idx[lo:hi]).numpy(), progress=progress and rank == 0, copies=copies) if hi > lo else None
    if world > 1:
        distributed_context(torch.device("cpu"))
    emulation = Emulation.merge(_gather(local_emulation, world))
    emu = emulation.counts
    parts = [p for p in _gather(part, world) if p is not None]
    lava = torch.from_numpy(np.concatenate([p.counts for p in parts]))
    lava_seconds = max(p.seconds for p in parts)  # the ranks run side by side
    emu_sub, hard_sub, y_sub = emu[lava_idx], hard[lava_idx], labels[lava_idx]
    result = {
        "run": str(run_dir),
        "weight_bits": spec.weight_bits,
        "n_samples": n,
        "n_test": len(test),
        "lava_class_counts": class_counts(y_sub, recipe.data.spec.n_classes),  # the seeded class-stratified subset Lava ran
        "surrogate_accuracy": accuracy_pct(sur, labels),
        "hard_accuracy": accuracy_pct(hard, labels),
        "emulator_accuracy": accuracy_pct(emu, labels),
        "transfer_gap_pp": accuracy_pct(sur, labels) - accuracy_pct(hard, labels),
        "emulator_quantization_gap_pp": accuracy_pct(hard, labels) - accuracy_pct(emu, labels),
        "hard_accuracy_lava_subset": accuracy_pct(hard_sub, y_sub),
        "emulator_accuracy_lava_subset": accuracy_pct(emu_sub, y_sub),
        "lava_accuracy": accuracy_pct(lava, y_sub),
        "quantization_gap_pp": accuracy_pct(hard_sub, y_sub) - accuracy_pct(lava, y_sub),
        "lava_emulator_agreement": float((lava == emu_sub).all(dim=1).float().mean()),
        "lava_emulator_prediction_agreement": float((predict(lava) == predict(emu_sub)).float().mean()),
        "lava_hard_prediction_agreement": float((predict(lava) == predict(hard_sub)).float().mean()),
        "emulator_hard_count_agreement": float((emu == hard).all(dim=1).float().mean()),
        "ranks": world,
        "lava_samples_per_s": n / lava_seconds,
        "lava_timesteps_per_s": sum(p.timesteps for p in parts) / lava_seconds,
        "lava_compile_seconds": max(p.compile_seconds for p in parts),
        **emulation.activity(),  # SynOps and spike rates over the full test split (emulator)
    }
    if rank == 0:
        atomic_write_text(run_dir / f"compare{suffix}.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(run_dir / f"compare{suffix}.md", compare_markdown([(run_dir.name, result)]))
    return result


def _shard(n: int, rank: int, world: int):
    per = -(-n // world)
    return min(n, rank * per), min(n, (rank + 1) * per)


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


def precision_table(run_dirs, bits=(8, 6, 4), progress: bool = False) -> Dict[str, object]:
    """Hard-spike accuracy of the quantized emulator at each weight precision, per run and as
    mean ± std per optimizer (full test split)."""
    import statistics

    rows = []
    for run in run_dirs:
        model, recipe, metrics = load_run(run)
        _, test = load_dataset(recipe.data, progress=progress)
        row = {"run": str(run), "optimizer": recipe.optimizer.name, "hard_float": metrics.get("hard_accuracy")}
        for b in bits:
            e = emulate(quantize(model, dataclasses.replace(load_spec(), weight_bits=b)), test.frames)
            row[f"w{b}"] = accuracy_pct(e.counts, test.labels)
            row[f"synops_w{b}"] = e.synops_per_sample
        rows.append(row)
    summary = {}
    for opt in sorted({r["optimizer"] for r in rows}):
        group = [r for r in rows if r["optimizer"] == opt]
        summary[opt] = {}
        for key in ["hard_float"] + [f"w{b}" for b in bits] + [f"synops_w{b}" for b in bits]:
            vals = [r[key] for r in group]
            summary[opt][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return {"bits": list(bits), "runs": rows, "summary": summary}


def precision_markdown(table: Dict[str, object]) -> str:
    bits = table["bits"]
    head = "| method | runs | hard float % | " + " | ".join(f"hard {b}-bit %" for b in bits) + " | " + " | ".join(f"SynOps/sample {b}-bit" for b in bits) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(bits))]
    for opt, s in table["summary"].items():
        n = sum(1 for r in table["runs"] if r["optimizer"] == opt)
        cells = [f"{s['hard_float'][0]:.2f} ± {s['hard_float'][1]:.2f}"]
        cells += [f"{s[f'w{b}'][0]:.2f} ± {s[f'w{b}'][1]:.2f}" for b in bits]
        cells += [f"{s[f'synops_w{b}'][0]:.0f} ± {s[f'synops_w{b}'][1]:.0f}" for b in bits]
        lines.append(f"| {opt} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
