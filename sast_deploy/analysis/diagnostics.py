"""Mechanism diagnostics the SAST paper argues for but does not measure, per trained run.

* spectral norm of each weight matrix (the state-stability condition);
* mean input-gradient norm of the surrogate loss (the local proposition);
* sharpness: the largest loss increase over perturbations of norm rho, along the gradient
  and along a few random directions;
* membrane margins (v' - theta) / theta over all neuron-steps, in hard and in surrogate
  mode: the fraction of "fence-sitters" within +-10 % of threshold, and per layer the
  fractions below, inside and above the band |v' - theta| < 1/alpha (the hard sigmoid's
  support: below it sigma is exactly 0, above it exactly 1; the other families have the
  same slope there, and their tails outside it).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from ..data.datasets import FrameDataset
from ..training.model import SpikingNet
from ..training.evaluate import loss_on, time_first


def spectral_norms(model: SpikingNet) -> List[float]:
    """Largest singular value of each layer's weight matrix (conv kernels flattened per output channel)."""
    out = []
    for layer in model.layers:
        w = getattr(layer.synapse, "weight", None)
        if isinstance(w, torch.Tensor):
            out.append(float(torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1), ord=2)))
        else:  # sum-pool: a fixed scalar weight
            out.append(float(w) * layer.synapse.kernel)
    return out


def input_gradient_norm(model: SpikingNet, data: FrameDataset, n: int = 256, loss_scale: float = 1.0) -> float:
    """Mean over samples of ||d loss / d input|| (surrogate-forward loss, binary input frames)."""
    x, y = data[list(range(min(n, len(data))))]
    x = x.clone().requires_grad_(True)
    per_sample = torch.nn.functional.cross_entropy(
        loss_scale * model(time_first(x), mode="surrogate").sum(0), y, reduction="sum")
    (grad,) = torch.autograd.grad(per_sample, x)
    return float(grad.reshape(len(x), -1).norm(dim=1).mean())


def sharpness(model: SpikingNet, data: FrameDataset, rho: float, n: int = 512, n_random: int = 3,
              loss_scale: float = 1.0, seed: int = 0) -> Dict[str, float]:
    """max over perturbations eps (||eps|| = rho) of L(w + eps) - L(w), surrogate-forward
    loss on ``n`` samples: along the gradient and along ``n_random`` random directions."""
    batch = data[list(range(min(n, len(data))))]
    params = [p for p in model.parameters()]
    model.zero_grad()
    base = loss_on(model, batch, "surrogate", loss_scale)
    grads = torch.autograd.grad(base, params)
    gen = torch.Generator().manual_seed(seed)
    directions = {"gradient": list(grads)}
    for i in range(n_random):
        directions[f"random{i}"] = [torch.randn(p.shape, generator=gen) for p in params]
    rises = {}
    with torch.no_grad():
        for name, d in directions.items():
            norm = torch.sqrt(sum((t ** 2).sum() for t in d))
            for p, t in zip(params, d):
                p.add_(t * (rho / norm))
            rises[name] = float(loss_on(model, batch, "surrogate", loss_scale) - base.detach())
            for p, t in zip(params, d):
                p.sub_(t * (rho / norm))
    return {"sharpness": max(rises.values()), "gradient_direction": rises["gradient"],
            "random_max": max(v for k, v in rises.items() if k != "gradient")}


@torch.no_grad()
def membrane_margins(model: SpikingNet, data: FrameDataset, mode: str = "hard", n: int = 256, bins: int = 121) -> Dict[str, object]:
    """Histogram of (v' - theta) / theta over all neuron-steps of all layers in ``mode``, the
    fence-sitter fraction (|margin| < 0.1), and per layer the fractions of neuron-steps
    below / inside / above the band |v' - theta| < 1/alpha."""
    x, _ = data[list(range(min(n, len(data))))]
    edges = np.linspace(-3.0, 3.0, bins + 1)
    hist = np.zeros(bins)
    total, fence, band = 0, 0, []
    half_width = 1.0 / model.config.alpha  # in potential units
    for layer, (_, v_pre) in zip(model.layers, model.forward_all(time_first(x), mode=mode)):
        d = (v_pre - layer.lif.v_th).flatten().numpy()
        m = d / layer.lif.v_th
        hist += np.histogram(np.clip(m, edges[0], edges[-1]), bins=edges)[0]
        total += m.size
        fence += int(np.sum(np.abs(m) < 0.1))
        band.append({"below": float(np.mean(d <= -half_width)), "inside": float(np.mean(np.abs(d) < half_width)),
                     "above": float(np.mean(d >= half_width))})
    return {"mode": mode, "edges": edges.tolist(), "density": (hist / max(total, 1)).tolist(),
            "fence_sitter_fraction": fence / max(total, 1), "band_half_width": half_width,
            "band_half_width_margin": half_width / model.config.v_th, "band_per_layer": band}


def diagnose(model: SpikingNet, train_data: FrameDataset, test_data: FrameDataset, rho: float, loss_scale: float = 1.0) -> Dict[str, object]:
    return {
        "spectral_norms": spectral_norms(model),
        "input_gradient_norm": input_gradient_norm(model, test_data, loss_scale=loss_scale),
        **sharpness(model, train_data, rho, loss_scale=loss_scale),
        "margins": membrane_margins(model, test_data, "hard"),
        "margins_surrogate": membrane_margins(model, test_data, "surrogate"),
    }
