"""Stage 4, training: the SAST loop and its baselines, resumable at every epoch boundary.

A run is written to a run directory (:mod:`sast_deploy.training.runs`): ``checkpoint.pt`` after every
epoch, ``model.pt`` and ``metrics.json`` at the end. Every epoch is scored on the validation
split (``data.val_fraction`` of the training recordings, :func:`sast_deploy.data.datasets.load_splits`);
the test split is evaluated once, after the last epoch (with ``data.val_fraction = 0`` there is
no validation split and every epoch is scored on the test split, as before). Evaluation lives in
:mod:`sast_deploy.training.evaluate`, devices and ranks in :mod:`sast_deploy.distributed`.

B and B' are drawn from two independent shuffles of the training set, each seeded from
(seed, epoch, stream), so an interrupted run resumed at an epoch boundary continues
exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .recipe import Recipe, RecipeError, canonical
from ..data.datasets import DatasetSplits, FrameDataset, class_counts, load_splits, split_validation
from ..distributed import distributed_context, is_rank_zero, rank_slice, resolve_device
from ..errors import RunError, one_line
from .footprint import check_training
from .evaluate import Batch, evaluate, loss_on, minibatches
from ..lock import run_lock
from .model import SpikingNet, build_model, non_finite_parameters
from .optim import SAST
from .runs import read_checkpoint, save_checkpoint, save_run, saved_recipe
from .val_metrics import validation_metrics

History = List[Dict[str, float]]
#: ``epoch_callback(epoch, row)``: called on rank 0 after epoch ``epoch`` (1-based, = row["epoch"])
#: is checkpointed, with that epoch's history row; an exception it raises ends the run, resumably
EpochCallback = Callable[[int, Dict[str, float]], None]
#: what ``train(data=...)`` takes: the three splits, or (training recordings, test) of
#: :func:`sast_deploy.data.datasets.load_dataset`, from which the validation split is cut
TrainData = Union[DatasetSplits, Tuple[FrameDataset, FrameDataset]]


# --- steps -----------------------------------------------------------------------------


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
    """One step of the base optimizer on B (baseline: surrogate forward; ste: hard forward)."""
    opt.zero_grad()
    loss = loss_on(model, batch, mode, loss_scale)
    loss.backward()
    opt.step()
    return float(loss.detach())


@dataclass(frozen=True)
class TrainStep:
    """The step of a recipe's optimizer. ``run(model, opt, i, B, B')`` takes the step's index
    in its epoch and returns (loss, forward-backward passes it took)."""

    run: Callable[[torch.nn.Module, torch.optim.Optimizer, int, Batch, Batch], Tuple[float, int]]
    independent_b_prime: bool  # SAST draws B' from its own shuffle; SAM and the plain steps use B


def make_step(recipe: Recipe) -> TrainStep:
    """The step kind, chosen once per run: SAST or SAM (recomputing eps every
    ``perturb_every`` steps and reusing it in between), or a plain base-optimizer step."""
    o, mode, scale = recipe.optimizer, recipe.optimizer.train_mode, recipe.training.loss_scale
    if not o.sharpness_aware:
        return TrainStep(lambda model, opt, i, b, b_prime: (plain_step(model, opt, b, mode, scale), 1), False)

    def sharpness_aware(model, opt, i, b, b_prime):
        if i % o.perturb_every == 0:
            return sast_step(model, opt, b, b_prime, mode, scale), 2
        # one pass: step 0 of every epoch is a full step, so there is always an eps to reuse
        return reuse_step(model, opt, b, b_prime, mode, scale), 1

    return TrainStep(sharpness_aware, independent_b_prime=o.name == "sast")


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    o = recipe.optimizer
    if o.sharpness_aware:
        return SAST(model.parameters(), torch.optim.Adam, rho=o.rho, delta=o.delta, adaptive=o.adaptive, lr=o.lr,
                    weight_decay=o.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def epoch_order(n: int, seed: int, epoch: int, stream: int) -> torch.Tensor:
    """The shuffle of stream 0 (B) or 1 (B') in an epoch; independent streams, reproducible."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0]))
    return torch.randperm(n, generator=g)


def epoch_batches(n: int, seed: int, epoch: int, batch_size: int, rank: int, world: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (B, B') sample indices for every step of an epoch: global minibatches of
    ``batch_size`` x ``world``, identical on all ranks, of which each rank takes its slice."""
    streams = [[rank_slice(b, rank, world) for b in minibatches(epoch_order(n, seed, epoch, stream), batch_size * world)]
               for stream in (0, 1)]
    return list(zip(*streams))


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


# --- resume ----------------------------------------------------------------------------


def _checkpoint_matches(saved: dict, recipe: Recipe, path: Path) -> None:
    try:
        same = canonical(saved_recipe(saved, source=str(path))) == canonical(recipe)
    except RecipeError:
        same = False
    if not same:
        raise RunError(
            f"{path}: the checkpoint was written by a different recipe; use a new --out directory "
            f"or delete the checkpoint to start over"
        )


def _resume(ckpt_path: Path, recipe: Recipe, net: SpikingNet, opt: torch.optim.Optimizer) -> Tuple[History, float]:
    """Load a checkpoint into ``net`` and ``opt``; (history, training seconds). The history has
    one row per finished epoch."""
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
    return [dict(row) for row in header.history], header.train_seconds


# --- one epoch -------------------------------------------------------------------------


@dataclass
class Trainer:
    """What every epoch of a run shares. ``net`` is the network, ``model`` the module the
    steps run (``net``, or ``net`` wrapped in DistributedDataParallel)."""

    recipe: Recipe
    net: SpikingNet
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    step: TrainStep
    train_set: FrameDataset
    val_set: Optional[FrameDataset]  # None: data.val_fraction = 0, epochs are scored on the test split
    test_set: FrameDataset
    device: torch.device
    rank: int
    world: int
    ckpt_path: Path
    progress: bool

    def batch(self, idx: torch.Tensor) -> Batch:
        return tuple(v.to(self.device) for v in self.train_set[idx])


def run_epoch(tr: Trainer, epoch: int) -> Tuple[float, int, float]:
    """One pass over the training set: (mean loss, forward-backward passes, seconds)."""
    from tqdm import tqdm

    t = tr.recipe.training
    tr.model.train()
    steps = epoch_batches(len(tr.train_set), t.seed, epoch, t.batch_size, tr.rank, tr.world)
    losses, passes = [], 0
    t0 = time.perf_counter()
    for i, (idx_b, idx_bp) in enumerate(tqdm(steps, desc=f"epoch {epoch + 1}", leave=False,
                                              disable=not tr.progress or tr.rank > 0, unit="step")):
        batch = tr.batch(idx_b)
        batch_prime = tr.batch(idx_bp) if tr.step.independent_b_prime else batch
        loss, n = tr.step.run(tr.model, tr.opt, i, batch, batch_prime)
        losses.append(loss)
        passes += n
        check_finite(loss, tr.net, epoch, i, tr.ckpt_path)
    return sum(losses) / len(losses), passes, time.perf_counter() - t0


def epoch_row(tr: Trainer, epoch: int, loss: float, passes: Optional[int], train_seconds: float) -> Dict[str, float]:
    """The history row of ``epoch`` (0-based): its mean loss, the accuracies (percent) after it
    on the validation split (``val_surrogate_accuracy``, ``val_hard_accuracy``,
    ``val_transfer_gap_pp``; on the test split, unprefixed, when there is no validation split),
    and ``passes`` and ``train_seconds`` of the whole run so far (per rank)."""
    from tqdm import tqdm

    row = {"epoch": epoch + 1, "train_loss": loss, "train_seconds": train_seconds, "forward_backward_passes": passes}
    scored, prefix = (tr.test_set, "") if tr.val_set is None else (tr.val_set, "val_")
    accuracies = evaluate(tr.net, scored, ("surrogate", "hard"), tr.recipe.training.eval_batch_size)
    row.update({prefix + k: v for k, v in accuracies.items()})
    if tr.progress and tr.rank == 0:
        tqdm.write(
            f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  {prefix or 'test_'}surrogate {accuracies['surrogate_accuracy']:.2f}%  "
            f"hard {accuracies['hard_accuracy']:.2f}%  gap {accuracies['transfer_gap_pp']:+.2f} pp"
        )
    return row


# --- the run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedRun:
    """What :func:`train` returns: the trained network (on the CPU, in eval mode, as
    :func:`sast_deploy.training.runs.load_run` reads it back), ``metrics`` as written to
    metrics.json (accuracies in percent, the gap in percentage points, the per-epoch history)
    and the run directory holding both."""

    model: SpikingNet
    metrics: Dict[str, object]
    run_dir: Path


def train(
    recipe: Recipe,
    out_dir: str | Path,
    progress: bool = True,
    resume: bool = True,
    data: Optional[TrainData] = None,
    log: Callable[[str], None] = print,
    epoch_callback: Optional[EpochCallback] = None,
    evaluate_test: bool = True,
) -> TrainedRun:
    """Train a recipe into ``out_dir``; returns the trained network, the metrics written to
    metrics.json and the run directory (:class:`TrainedRun`). The run directory is locked while
    training (see :mod:`sast_deploy.lock`; rank 0 holds it).

    ``data``: the splits (default: :func:`sast_deploy.data.datasets.load_splits` of the
    recipe); a (training recordings, test) pair has its validation split cut by the recipe.
    ``epoch_callback(epoch, row)`` is called on rank 0 after each epoch's checkpoint is written,
    ``epoch`` 1-based, ``row`` a copy of that epoch's history row (``val_surrogate_accuracy``,
    ``val_hard_accuracy`` in percent, ...); an exception it raises propagates and leaves the run
    resumable from that checkpoint (an Optuna pruner raises ``TrialPruned`` there).
    ``evaluate_test=False`` leaves the test split unread (its accuracies in metrics.json are
    NaN, ``test_evaluated`` false): the tuner's trials choose on the validation split alone."""
    out_dir = Path(out_dir)
    check_training(recipe)  # before the run directory, the lock and the data
    with run_lock(out_dir, "train") if is_rank_zero() else contextlib.nullcontext():
        model, metrics = _train(recipe, out_dir, progress, resume, data, log, epoch_callback, evaluate_test)
    return TrainedRun(model=model, metrics=metrics, run_dir=out_dir)


def _datasets(recipe: Recipe, data: Optional[TrainData], progress: bool) -> DatasetSplits:
    if data is None:
        splits = load_splits(recipe.data, progress=progress)
    elif isinstance(data, DatasetSplits):
        splits = data
    else:
        splits = split_validation(*data, recipe.data)
    if len(splits.train) == 0 or len(splits.test) == 0:
        raise RunError(f"dataset {recipe.data.name}: empty split (train {len(splits.train)}, test {len(splits.test)})")
    return splits


def _trainer(recipe: Recipe, out_dir: Path, device: torch.device, data: DatasetSplits, progress: bool) -> Trainer:
    """The network (the same initial weights on every rank), its optimizer and step."""
    rank, world = distributed_context(device)
    torch.manual_seed(recipe.training.seed)
    net = build_model(recipe.model, data.train.input_shape, recipe.data.spec.n_classes).to(device)
    model = net
    if world > 1:
        # Both SAST phases all-reduce their gradient through DDP's backward hook: the
        # perturbation uses the global g (not each rank's own, as m-sharpness variants do
        # under no_sync) and the update the global gradient at w + eps.
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return Trainer(recipe=recipe, net=net, model=model, opt=make_optimizer(model, recipe), step=make_step(recipe),
                   train_set=data.train, val_set=data.val, test_set=data.test, device=device, rank=rank, world=world,
                   ckpt_path=out_dir / "checkpoint.pt", progress=progress)


def _train(recipe: Recipe, out_dir: Path, progress: bool, resume: bool, data: Optional[TrainData],
           log: Callable[[str], None], epoch_callback: Optional[EpochCallback],
           evaluate_test: bool = True) -> Tuple[SpikingNet, Dict[str, object]]:
    from tqdm import tqdm

    device = resolve_device(recipe.training.device)  # before the data: a bad device fails fast
    tr = _trainer(recipe, out_dir, device, _datasets(recipe, data, progress), progress)
    if not evaluate_test and tr.val_set is None:
        raise RunError(f"{recipe.name}: a run that leaves the test split unread needs a validation split "
                       f"(data.val_fraction > 0)")
    epochs = recipe.training.epochs
    history: History = []
    train_seconds = 0.0
    if resume and tr.ckpt_path.exists():
        history, train_seconds = _resume(tr.ckpt_path, recipe, tr.net, tr.opt)
        log(f"resuming {out_dir} after epoch {len(history)}/{epochs}")
    # None: resumed from a checkpoint written before passes were counted (its epochs' are unknown)
    passes = history[-1].get("forward_backward_passes") if history else 0
    for epoch in tqdm(range(len(history), epochs), desc=f"train {recipe.name}", disable=not progress,
                      initial=len(history), total=epochs, unit="epoch"):
        loss, epoch_passes, seconds = run_epoch(tr, epoch)
        passes = None if passes is None else passes + epoch_passes
        train_seconds += seconds
        history.append(epoch_row(tr, epoch, loss, passes, train_seconds))
        if tr.rank == 0:
            save_checkpoint(tr.ckpt_path, epoch + 1, tr.net, tr.opt, history, train_seconds, recipe)
            if epoch_callback is not None:
                epoch_callback(epoch + 1, dict(history[-1]))
    metrics = final_metrics(tr, history, train_seconds, evaluate_test)
    if tr.rank == 0:
        save_run(out_dir, tr.net, recipe, metrics)
    return tr.net.cpu().eval(), metrics


def final_metrics(tr: Trainer, history: History, train_seconds: float, evaluate_test: bool = True) -> Dict[str, object]:
    """metrics.json: the final network's test accuracies (percent; the test split's only
    evaluation when there is a validation split), its ``validation`` block
    (:func:`sast_deploy.training.val_metrics.validation_metrics`; None without a validation
    split), sizes, cost (seconds and forward-backward passes, per rank) and the history."""
    last = history[-1]
    if tr.val_set is None:
        test, validation = last, None
    else:
        test = (evaluate(tr.net, tr.test_set, ("surrogate", "hard"), tr.recipe.training.eval_batch_size) if evaluate_test
                else dict.fromkeys(("surrogate_accuracy", "hard_accuracy", "transfer_gap_pp"), float("nan")))
        float_accuracies = {k: last[f"val_{k}"] for k in ("surrogate_accuracy", "hard_accuracy")}
        validation = validation_metrics(tr.net, tr.val_set, tr.recipe.data.spec.n_classes, float_accuracies)
    return {
        "recipe": tr.recipe.name,
        "optimizer": tr.recipe.optimizer.name,
        "surrogate_accuracy": test["surrogate_accuracy"],
        "hard_accuracy": test["hard_accuracy"],
        "transfer_gap_pp": test["transfer_gap_pp"],
        "validation": validation,
        "test_evaluated": evaluate_test,
        "n_test": len(tr.test_set),
        "n_train": len(tr.train_set),
        "train_class_counts": class_counts(tr.train_set.labels, tr.recipe.data.spec.n_classes),
        "test_class_counts": class_counts(tr.test_set.labels, tr.recipe.data.spec.n_classes),
        "epochs": tr.recipe.training.epochs,
        "train_seconds": train_seconds,
        "world_size": tr.world,
        "forward_backward_passes": last.get("forward_backward_passes"),
        "history": history,
    }
