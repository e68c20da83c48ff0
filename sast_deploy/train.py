"""Stage 4, training and evaluation: the SAST loop, the baselines, and both evaluation modes.

Run directory layout (written atomically: temporary file, then rename)::

    RUN_DIR/checkpoint.pt   after every epoch (model, optimizer, history): resume point
    RUN_DIR/model.pt        final weights, model config, recipe, metrics
    RUN_DIR/metrics.json    surrogate_accuracy, hard_accuracy (percent), transfer_gap_pp, history

B and B' are drawn from two independent shuffles of the training set, each seeded from
(seed, epoch, stream), so an interrupted run resumed at an epoch boundary continues
exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .config import Recipe, RecipeError, canonical, recipe_from_dict
from .errors import RunError, one_line
from .fileio import atomic_torch_save, atomic_write_text
from .lock import run_lock
from .data import FrameDataset, class_counts, load_dataset
from .model import SpikingNet, build_model, non_finite_parameters, predict, spike_counts
from .optim import SAST
from .runfiles import read_checkpoint, read_model_file

Batch = Tuple[torch.Tensor, torch.Tensor]


# --- steps -----------------------------------------------------------------------------


def time_first(x: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] (dataset layout) -> [T, B, ...] (network layout)."""
    return x.transpose(0, 1)


def loss_on(model: SpikingNet, batch: Batch, mode: str, loss_scale: float) -> torch.Tensor:
    """Cross-entropy of the output spike counts (summed sigma in surrogate mode)."""
    x, y = batch
    counts = spike_counts(model(time_first(x), mode=mode))
    return F.cross_entropy(loss_scale * counts, y)


def sast_step(model: SpikingNet, opt: SAST, batch: Batch, batch_prime: Batch, mode: str, loss_scale: float) -> float:
    """One SAST step: g on B, perturb, gradient at w + eps on B', restore, base step.
    Pass ``batch_prime = batch`` for plain SAM. Returns the loss on B at w."""
    loss = loss_on(model, batch, mode, loss_scale)
    loss.backward()
    opt.first_step(zero_grad=True)
    loss_on(model, batch_prime, mode, loss_scale).backward()
    opt.second_step(zero_grad=True)
    return float(loss.detach())


def reuse_step(model: SpikingNet, opt: SAST, batch: Batch, batch_prime: Batch, mode: str, loss_scale: float) -> float:
    """A SAST step that reuses the last perturbation direction: one forward-backward pass at
    w + eps on B'. Returns that loss (the loss at w is not computed)."""
    if not opt.reuse_step():
        return sast_step(model, opt, batch, batch_prime, mode, loss_scale)
    loss = loss_on(model, batch_prime, mode, loss_scale)
    loss.backward()
    opt.second_step(zero_grad=True)
    return float(loss.detach())


def plain_step(model: SpikingNet, opt: torch.optim.Optimizer, batch: Batch, mode: str, loss_scale: float) -> float:
    opt.zero_grad()
    loss = loss_on(model, batch, mode, loss_scale)
    loss.backward()
    opt.step()
    return float(loss.detach())


def make_optimizer(model: SpikingNet, recipe: Recipe) -> torch.optim.Optimizer:
    o = recipe.optimizer
    if o.sharpness_aware:
        return SAST(model.parameters(), torch.optim.Adam, rho=o.rho, delta=o.delta, adaptive=o.adaptive, lr=o.lr,
                    weight_decay=o.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def epoch_order(n: int, seed: int, epoch: int, stream: int) -> torch.Tensor:
    """The shuffle of stream 0 (B) or 1 (B') in an epoch; independent streams, reproducible."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0]))
    return torch.randperm(n, generator=g)


def minibatches(order: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RunError("training.device = cuda, but no CUDA device is available (use cpu or auto)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def distributed_context(device: torch.device) -> Tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) the process group is created here:
    gloo on CPU, nccl on CUDA."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def rank_slice(global_batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of a global minibatch (equal parts; the last global batch may be short)."""
    per = -(-len(global_batch) // world)
    return global_batch[rank * per : (rank + 1) * per]


# --- evaluation ------------------------------------------------------------------------


@torch.no_grad()
def output_counts(model: SpikingNet, data: FrameDataset, mode: str, batch_size: int = 512, device=None) -> torch.Tensor:
    """Output spike counts [N, classes] over a dataset (summed sigma in surrogate mode)."""
    model.eval()
    device = device or next(model.parameters()).device
    out = []
    for idx in minibatches(torch.arange(len(data)), batch_size):
        x, _ = data[idx]
        out.append(spike_counts(model(time_first(x.to(device)), mode=mode)).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.n_classes)


def accuracy_pct(counts: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((predict(counts) == labels).float().mean()) if len(labels) else float("nan")


def evaluate(model: SpikingNet, data: FrameDataset, modes: Sequence[str] = ("surrogate", "hard"), batch_size: int = 512) -> Dict[str, float]:
    """Accuracy (percent) per mode, plus ``transfer_gap_pp`` when both surrogate and hard are asked."""
    result = {f"{m}_accuracy": accuracy_pct(output_counts(model, data, m, batch_size), data.labels) for m in modes}
    if "surrogate" in modes and "hard" in modes:
        result["transfer_gap_pp"] = result["surrogate_accuracy"] - result["hard_accuracy"]
    return result


# --- the NaN/inf guard ------------------------------------------------------------------


def check_finite(loss: float, net: SpikingNet, epoch: int, step: int, ckpt_path: Path) -> None:
    """Stop training at the first non-finite loss or weight (0-based ``epoch`` and ``step``).
    Nothing of the diverged epoch is saved: the checkpoint keeps the last good epoch and no
    model.pt is written."""
    bad = [] if math.isfinite(loss) else [f"loss {loss}"]
    bad += [f"weights {name}" for name in non_finite_parameters(net)]
    if bad:
        kept = f"{ckpt_path} keeps the last good epoch" if ckpt_path.exists() else "no epoch finished, nothing was saved"
        raise RunError(f"training diverged at epoch {epoch + 1}, step {step + 1}: non-finite {', '.join(bad)}; "
                       f"{kept}, no model.pt written (lower optimizer.lr or training.loss_scale)")


# --- the loop --------------------------------------------------------------------------


def _checkpoint_matches(saved: dict, recipe: Recipe, path: Path) -> None:
    try:
        same = canonical(recipe_from_dict(saved, source=str(path))) == canonical(recipe)
    except RecipeError:
        same = False
    if not same:
        raise RunError(
            f"{path}: the checkpoint was written by a different recipe; use a new --out directory "
            f"or delete the checkpoint to start over"
        )


def _resume(ckpt_path: Path, recipe: Recipe, net: SpikingNet, opt: torch.optim.Optimizer) -> Tuple[List[Dict[str, float]], int, float]:
    """Load a checkpoint into ``net`` and ``opt``; (history, epochs done, training seconds)."""
    header, weights, optimizer_state = read_checkpoint(ckpt_path)
    _checkpoint_matches(header.recipe, recipe, ckpt_path)
    if not 0 <= header.epoch <= recipe.training.epochs or len(header.history) != header.epoch:
        raise RunError(f"{ckpt_path}: field epoch = {header.epoch} does not fit the recipe's {recipe.training.epochs} "
                       f"epochs and its history of {len(header.history)}; pass --restart to start over")
    try:
        net.load_state_dict(weights)
        opt.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{ckpt_path}: the checkpoint does not fit the recipe's model ({one_line(exc)}); "
                       f"pass --restart to start over") from None
    return [dict(row) for row in header.history], header.epoch, header.train_seconds


def train(
    recipe: Recipe,
    out_dir: str | Path,
    progress: bool = True,
    resume: bool = True,
    data: Optional[Tuple[FrameDataset, FrameDataset]] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    """Train a recipe into ``out_dir``; returns the metrics written to metrics.json. The run
    directory is locked while training (see :mod:`sast_deploy.lock`; rank 0 holds it)."""
    out_dir = Path(out_dir)
    with run_lock(out_dir, "train") if is_rank_zero() else contextlib.nullcontext():
        return _train(recipe, out_dir, progress, resume, data, log)


def is_rank_zero() -> bool:
    """Rank 0 under torchrun (RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _train(recipe: Recipe, out_dir: Path, progress: bool, resume: bool,
           data: Optional[Tuple[FrameDataset, FrameDataset]], log: Callable[[str], None]) -> Dict[str, object]:
    from tqdm import tqdm

    t = recipe.training
    device = resolve_device(t.device)
    train_set, test_set = data if data is not None else load_dataset(recipe.data, progress=progress)
    if len(train_set) == 0 or len(test_set) == 0:
        raise RunError(f"dataset {recipe.data.name}: empty split (train {len(train_set)}, test {len(test_set)})")

    rank, world = distributed_context(device)
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    net = build_model(recipe.model, train_set.input_shape, recipe.data.spec.n_classes).to(device)
    model = net
    if world > 1:
        # Both SAST phases all-reduce their gradient through DDP's backward hook: the
        # perturbation uses the global g (not each rank's own, as m-sharpness variants do
        # under no_sync) and the update the global gradient at w + eps.
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model, recipe)
    history: List[Dict[str, float]] = []
    start_epoch, train_seconds = 0, 0.0

    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        history, start_epoch, train_seconds = _resume(ckpt_path, recipe, net, opt)
        log(f"resuming {out_dir} after epoch {start_epoch}/{t.epochs}")

    mode = recipe.optimizer.train_mode
    n = len(train_set)
    passes_per_step = 2 if recipe.optimizer.sharpness_aware else 1
    for epoch in tqdm(range(start_epoch, t.epochs), desc=f"train {recipe.name}", disable=not progress,
                      initial=start_epoch, total=t.epochs, unit="epoch"):
        model.train()
        # global minibatches of batch_size x world, identical on all ranks; each rank takes its slice
        batches_b = [rank_slice(b, rank, world) for b in minibatches(epoch_order(n, t.seed, epoch, 0), t.batch_size * world)]
        batches_bp = [rank_slice(b, rank, world) for b in minibatches(epoch_order(n, t.seed, epoch, 1), t.batch_size * world)]
        losses = []
        t0 = time.perf_counter()
        every = recipe.optimizer.perturb_every
        for step, (idx_b, idx_bp) in enumerate(tqdm(list(zip(batches_b, batches_bp)), desc=f"epoch {epoch + 1}",
                                                     leave=False, disable=not progress or rank > 0, unit="step")):
            batch = tuple(v.to(device) for v in train_set[idx_b])
            if recipe.optimizer.sharpness_aware:
                batch_prime = tuple(v.to(device) for v in train_set[idx_bp]) if recipe.optimizer.name == "sast" else batch
                sast_fn = sast_step if step % every == 0 else reuse_step
                losses.append(sast_fn(model, opt, batch, batch_prime, mode, t.loss_scale))
            else:
                losses.append(plain_step(model, opt, batch, mode, t.loss_scale))
            check_finite(losses[-1], net, epoch, step, ckpt_path)
        train_seconds += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "train_seconds": train_seconds}
        row.update(evaluate(net, test_set, ("surrogate", "hard"), t.eval_batch_size))
        history.append(row)
        if progress and rank == 0:
            tqdm.write(
                f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  surrogate {row['surrogate_accuracy']:.2f}%  "
                f"hard {row['hard_accuracy']:.2f}%  gap {row['transfer_gap_pp']:+.2f} pp"
            )
        if rank == 0:
            atomic_torch_save(
                {"epoch": epoch + 1, "model": net.state_dict(), "optimizer": opt.state_dict(), "history": history,
                 "train_seconds": train_seconds, "recipe": recipe.to_dict()},
                ckpt_path,
            )

    final = history[-1] if history else evaluate(net, test_set, ("surrogate", "hard"), t.eval_batch_size)
    metrics = {
        "recipe": recipe.name,
        "optimizer": recipe.optimizer.name,
        "surrogate_accuracy": final["surrogate_accuracy"],
        "hard_accuracy": final["hard_accuracy"],
        "transfer_gap_pp": final["transfer_gap_pp"],
        "n_test": len(test_set),
        "n_train": len(train_set),
        "train_class_counts": class_counts(train_set.labels, recipe.data.spec.n_classes),
        "test_class_counts": class_counts(test_set.labels, recipe.data.spec.n_classes),
        "epochs": t.epochs,
        "train_seconds": train_seconds,
        "world_size": world,
        "forward_backward_passes": t.epochs * sum(  # per rank
            passes_per_step if (s % recipe.optimizer.perturb_every == 0 or not recipe.optimizer.sharpness_aware) else 1
            for s in range(len(minibatches(torch.arange(n), t.batch_size * world)))),
        "history": history,
    }
    if rank == 0:
        save_run(out_dir, net, recipe, metrics)
    return metrics


def save_run(out_dir: Path, model: SpikingNet, recipe: Recipe, metrics: Dict[str, object]) -> None:
    atomic_torch_save(
        {"state_dict": model.state_dict(), "model_config": asdict(model.config), "input_shape": model.input_shape,
         "n_classes": model.n_classes, "recipe": recipe.to_dict(), "metrics": metrics},
        Path(out_dir) / "model.pt",
    )
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def load_run(run_dir: str | Path, map_location: str = "cpu") -> Tuple[SpikingNet, Recipe, Dict[str, object]]:
    """(model, recipe, metrics) of a finished run; the model file is read as data
    (:mod:`sast_deploy.runfiles`), never unpickled."""
    path = Path(run_dir) / "model.pt"
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: run directory not found")
    if not path.is_file():
        raise RunError(f"{path}: no model in this run directory (train it first: sast-deploy train ... --out {run_dir})")
    header, weights = read_model_file(path)
    recipe = recipe_from_dict(header.recipe, source=str(path))
    try:
        model = build_model(header.model_config, header.input_shape, header.n_classes)
        model.load_state_dict(weights)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise RunError(f"{path}: the weights do not fit the model config ({one_line(exc)})") from None
    model.eval()
    return model.to(map_location), recipe, header.metrics
