"""Stage 4, evaluation: what a network outputs on a dataset and how that scores.

The readout is the output spike count per class (summed sigma in surrogate mode); the loss is
the cross-entropy of those counts, the prediction their argmax (:func:`sast_deploy.training.model.predict`).
Training scores every epoch with these functions, and so do compare, calibrate, robustness,
the diagnostics and the report.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..data.datasets import FrameDataset
from .model import SpikingNet, predict, spike_counts

Batch = Tuple[torch.Tensor, torch.Tensor]  # frames [B, T, P, H, W] (dataset layout), labels [B]


def time_first(x: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] (dataset layout) -> [T, B, ...] (network layout)."""
    return x.transpose(0, 1)


def minibatches(order: torch.Tensor, batch_size: int) -> List[torch.Tensor]:
    """``order`` (sample indices) cut into consecutive batches; the last one may be short."""
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def loss_on(model: SpikingNet, batch: Batch, mode: str, loss_scale: float) -> torch.Tensor:
    """Cross-entropy of the output spike counts (summed sigma in surrogate mode)."""
    x, y = batch
    counts = spike_counts(model(time_first(x), mode=mode))
    return F.cross_entropy(loss_scale * counts, y)


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


def fraction(hits: torch.Tensor) -> float:
    """The fraction of true elements of a boolean tensor (NaN for none), the exact count over
    the size in float64: a float32 mean turns 45 of 200 into 0.22499999403953552."""
    return int(hits.sum()) / hits.numel() if hits.numel() else float("nan")


def accuracy_pct(counts: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of samples whose prediction from ``counts`` [N, classes] is the label (NaN for
    none): 100 x correct / N, one correctly rounded division."""
    hits = predict(counts) == labels
    return 100 * int(hits.sum()) / hits.numel() if hits.numel() else float("nan")


def evaluate(model: SpikingNet, data: FrameDataset, modes: Sequence[str] = ("surrogate", "hard"), batch_size: int = 512) -> Dict[str, float]:
    """Accuracy (percent) per mode, plus ``transfer_gap_pp`` when both surrogate and hard are asked."""
    result = {f"{m}_accuracy": accuracy_pct(output_counts(model, data, m, batch_size), data.labels) for m in modes}
    if "surrogate" in modes and "hard" in modes:
        result["transfer_gap_pp"] = result["surrogate_accuracy"] - result["hard_accuracy"]
    return result
