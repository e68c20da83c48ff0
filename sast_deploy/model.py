"""Stage 2, model: LIF networks on norse's ``SNN`` machinery, one definition for every mode.

A network is a stack of :class:`SpikingLayer` (a synapse: dense, conv or sum-pool; then a
:class:`LIF` population). The same weights run in ``surrogate``, ``hard`` or ``ste`` mode;
the export stage reads the layers as they are, so there is no second copy of the network.
Inputs are time-first spike tensors [T, B, P, H, W]; outputs are spikes [T, B, classes].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from norse.torch.module.snn import SNN

from .functional.lif import SPIKE_MODES, SURROGATES, LIFState, lif_parameters, lif_step
from .validation import file_data

ARCHS = ("mlp", "conv")


@file_data
@dataclass(frozen=True)
class ModelConfig:
    """The model section of a recipe. ``beta`` is the membrane decay per time bin."""

    arch: str = "mlp"
    hidden: Tuple[int, ...] = (128,)  # MLP hidden widths
    beta: float = 0.9
    v_th: float = 1.0
    alpha: float = 2.0  # surrogate slope at threshold: sigma'(0) = alpha / 2 in every family
    surrogate: str = "arctan"  # sigma's family: arctan | sigmoid | hardsigmoid (functional/lif.py)
    init_gain: float = 1.0  # multiplies PyTorch's default (Kaiming-uniform) weight init
    conv_channels: int = 16
    conv_kernel: int = 5
    # Conv defaults are the net that trains in surrogate-forward mode (train/gesture.toml):
    # a pooling LIF with a fixed weight saturates there, and a wide conv output feeding
    # the readout makes it die under Adam, hence stride 4 and no pooling by default.
    conv_stride: int = 4
    pool: int = 0  # sum-pool window (and stride); 0 = no pooling layer
    pool_weight: float = 1.0  # fixed synaptic weight of the pooling layer
    v_th_scale: Tuple[float, ...] = ()  # per-layer threshold multipliers (post-hoc calibration); () = all 1

    def __post_init__(self):
        if self.pool < 0:
            raise ValueError(f"model.pool: the sum-pool window must be >= 0 (0 = none), got {self.pool}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"model.surrogate: unknown surrogate family {self.surrogate!r}; known: {', '.join(SURROGATES)}")
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch: unknown architecture {self.arch!r}; known: {', '.join(ARCHS)}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "v_th_scale", tuple(float(v) for v in self.v_th_scale))
        if any(v <= 0 for v in self.v_th_scale):
            raise ValueError(f"model.v_th_scale: multipliers must be > 0, got {self.v_th_scale}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"model.hidden: widths must be >= 1, got {self.hidden}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"model.beta (membrane decay per step) must be in [0, 1], got {self.beta}")
        if self.v_th <= 0:
            raise ValueError(f"model.v_th must be > 0, got {self.v_th}")
        if self.alpha <= 0:
            raise ValueError(f"model.alpha (surrogate slope) must be > 0, got {self.alpha}")


class LIF(SNN):
    """A population of our LIF neurons over time: norse's ``SNN`` driving :func:`lif_step`."""

    def __init__(self, beta: float, v_th: float, alpha: float, surrogate: str = "arctan"):
        super().__init__(activation=lif_step, state_fallback=self.initial_state,
                         p=lif_parameters(beta, v_th, alpha, surrogate=surrogate), dt=1.0)

    @staticmethod
    def initial_state(currents: torch.Tensor) -> LIFState:
        zeros = torch.zeros_like(currents[0])
        return LIFState(v=zeros, v_pre=zeros)

    def forward(self, currents: torch.Tensor, mode: str = "hard", record_states: bool = False):
        """Spikes [T, ...] for input currents [T, ...]; with ``record_states`` also the
        states [T, ...] (``v`` after reset, ``v_pre`` before)."""
        if mode not in SPIKE_MODES:
            raise ValueError(f"unknown spike mode {mode!r}; known: {', '.join(SPIKE_MODES)}")
        self.p = self.p._replace(method=mode)
        self.record_states = record_states
        return super().forward(currents)

    @property
    def beta(self) -> float:
        return float(1.0 - self.dt * self.p.tau_mem_inv)

    @property
    def v_th(self) -> float:
        return float(self.p.v_th)


class SumPool2d(torch.nn.Module):
    """Sum pooling times a fixed weight (what a Loihi pooling layer computes with one weight)."""

    def __init__(self, kernel: int, weight: float):
        super().__init__()
        self.kernel = kernel
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel) * (self.kernel * self.kernel * self.weight)


class SpikingLayer(torch.nn.Module):
    """synapse (time-distributed) -> LIF. ``kind`` is 'dense', 'conv' or 'pool'."""

    def __init__(self, kind: str, synapse: torch.nn.Module, lif: LIF):
        super().__init__()
        self.kind = kind
        self.synapse = synapse
        self.lif = lif

    def currents(self, spikes: torch.Tensor) -> torch.Tensor:
        """Synaptic currents for all time steps at once ([T, B, ...] -> [T, B, ...])."""
        t, b = spikes.shape[:2]
        if self.kind == "dense":
            return self.synapse(spikes.reshape(t, b, -1))
        out = self.synapse(spikes.reshape(t * b, *spikes.shape[2:]))
        return out.reshape(t, b, *out.shape[1:])

    def forward(self, spikes: torch.Tensor, mode: str = "hard", record_states: bool = False):
        return self.lif(self.currents(spikes), mode=mode, record_states=record_states)


class SpikingNet(torch.nn.Module):
    """A feed-forward stack of spiking layers; the last one is the spiking readout."""

    def __init__(self, config: ModelConfig, input_shape: Sequence[int], n_classes: int):
        super().__init__()
        self.config = config
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes = n_classes
        c = config

        def lif() -> LIF:
            return LIF(c.beta, c.v_th, c.alpha, c.surrogate)

        layers: List[SpikingLayer] = []
        if c.arch == "mlp":
            width = int(np.prod(self.input_shape))
            for h in c.hidden:
                layers.append(SpikingLayer("dense", torch.nn.Linear(width, h, bias=False), lif()))
                width = h
        else:
            p, hgt, wid = self.input_shape
            conv = torch.nn.Conv2d(p, c.conv_channels, c.conv_kernel, stride=c.conv_stride, bias=False)
            layers.append(SpikingLayer("conv", conv, lif()))
            if c.pool > 0:
                layers.append(SpikingLayer("pool", SumPool2d(c.pool, c.pool_weight), lif()))
            with torch.no_grad():
                probe = torch.zeros(1, p, hgt, wid)
                for layer in layers:
                    probe = layer.synapse(probe)
                width = int(np.prod(probe.shape))
            for h in c.hidden:
                layers.append(SpikingLayer("dense", torch.nn.Linear(width, h, bias=False), lif()))
                width = h
        layers.append(SpikingLayer("dense", torch.nn.Linear(width, n_classes, bias=False), lif()))
        self.layers = torch.nn.ModuleList(layers)
        if c.v_th_scale:
            if len(c.v_th_scale) != len(layers):
                raise ValueError(f"model.v_th_scale has {len(c.v_th_scale)} entries, the network {len(layers)} layers")
            for layer, scale in zip(layers, c.v_th_scale):
                layer.lif.p = layer.lif.p._replace(v_th=c.v_th * scale)
        if c.init_gain != 1.0:
            with torch.no_grad():
                for p_ in self.parameters():
                    p_.mul_(c.init_gain)

    def forward(self, x: torch.Tensor, mode: str = "hard") -> torch.Tensor:
        """Output spikes [T, B, classes] for input spikes [T, B, P, H, W]."""
        if tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"input has shape {tuple(x.shape[2:])} per time step, the network expects {self.input_shape}")
        for layer in self.layers:
            x, _ = layer(x, mode=mode)
        return x

    def forward_all(self, x: torch.Tensor, mode: str = "hard") -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per layer: (spikes [T, B, ...], membrane potential before spike and reset [T, B, ...])."""
        out = []
        for layer in self.layers:
            x, states = layer(x, mode=mode, record_states=True)
            out.append((x, states.v_pre))
        return out


def build_model(config: ModelConfig, input_shape: Sequence[int], n_classes: int) -> SpikingNet:
    return SpikingNet(config, input_shape, n_classes)


def non_finite_parameters(model: torch.nn.Module) -> List[str]:
    """Names of the parameters that hold NaN or inf (an exported network must have none)."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]


def spike_counts(output_spikes: torch.Tensor) -> torch.Tensor:
    """Readout: spikes summed over time [T, B, C] -> [B, C] (summed sigma in surrogate mode)."""
    return output_spikes.sum(0)


def predict(counts: Union[torch.Tensor, np.ndarray]) -> Union[torch.Tensor, np.ndarray]:
    """The prediction rule of every backend: argmax of the output spike counts, ties broken by
    the lowest class index (an all-silent output predicts class 0)."""
    if isinstance(counts, np.ndarray):
        return np.argmax(counts, axis=-1)  # numpy returns the first maximal index
    return torch.argmax(counts, dim=-1)  # so does torch (documented since 1.7)
