"""Stage 2, model: LIF networks built as norse builds them, one definition for every mode.

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

from ..functional.lif import SPIKE_MODES, SURROGATES, LIFState, lif_initial_state, lif_parameters, lif_step
from .footprint import MAX_HIDDEN_LAYERS, check_parameters
from ..validation import Count, Fraction, Positive, Size0, check_ranges, file_data

ARCHS = ("mlp", "conv")


@file_data
@dataclass(frozen=True)
class ModelConfig:
    """The model section of a recipe. ``beta`` is the membrane decay per time bin."""

    arch: str = "mlp"
    hidden: Tuple[Count, ...] = (128,)  # MLP hidden widths
    beta: Fraction = 0.9
    v_th: Positive = 1.0
    alpha: Positive = 2.0  # surrogate slope at threshold: sigma'(0) = alpha / 2 in every family
    surrogate: str = "arctan"  # sigma's family: arctan | sigmoid | hardsigmoid (functional/lif.py)
    init_gain: Positive = 1.0  # multiplies PyTorch's default (Kaiming-uniform) weight init
    conv_channels: Count = 16
    conv_kernel: Count = 5
    # Conv defaults are the net that trains in surrogate-forward mode (train/gesture.toml):
    # a pooling LIF with a fixed weight saturates there, and a wide conv output feeding
    # the readout makes it die under Adam, hence stride 4 and no pooling by default.
    conv_stride: Count = 4
    pool: Size0 = 0  # sum-pool window (and stride); 0 = no pooling layer
    pool_weight: Positive = 1.0  # fixed synaptic weight of the pooling layer
    v_th_scale: Tuple[Positive, ...] = ()  # per-layer threshold multipliers (post-hoc calibration); () = all 1

    def __post_init__(self):
        if len(self.hidden) > MAX_HIDDEN_LAYERS:  # first: a list of millions is refused before it is walked
            raise ValueError(f"model.hidden has {len(self.hidden)} layers; at most {MAX_HIDDEN_LAYERS} are supported")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"model.surrogate: unknown surrogate family {self.surrogate!r}; known: {', '.join(SURROGATES)}")
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch: unknown architecture {self.arch!r}; known: {', '.join(ARCHS)}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "v_th_scale", tuple(float(v) for v in self.v_th_scale))
        check_ranges(self, "model")


class LIF(torch.nn.Module):
    """A population of our LIF neurons over time: :func:`lif_step` looped over the time bins
    (norse's split: a pure step function, a small module that holds its parameters ``p``)."""

    def __init__(self, beta: float, v_th: float, alpha: float, surrogate: str = "arctan"):
        super().__init__()
        self.p = lif_parameters(beta, v_th, alpha, surrogate)

    def forward(self, currents: torch.Tensor, mode: str = "hard", record_states: bool = False) -> Tuple[torch.Tensor, LIFState]:
        """Spikes [T, ...] for input currents [T, ...], and the state after the last step; with
        ``record_states`` the states of every step [T, ...] instead (``v`` after reset,
        ``v_pre`` before)."""
        if mode not in SPIKE_MODES:
            raise ValueError(f"unknown spike mode {mode!r}; known: {', '.join(SPIKE_MODES)}")
        state = lif_initial_state(currents[0])
        spikes, states = [], []
        for current in currents:
            z, state = lif_step(current, state, self.p, mode)
            spikes.append(z)
            if record_states:
                states.append(state)
        if record_states:
            state = LIFState(v=torch.stack([s.v for s in states]), v_pre=torch.stack([s.v_pre for s in states]))
        return torch.stack(spikes), state

    @property
    def beta(self) -> float:
        return self.p.beta

    @property
    def v_th(self) -> float:
        return self.p.v_th

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SumPool2d(torch.nn.Module):
    """Sum pooling times a fixed weight (what a Loihi pooling layer computes with one weight)."""

    def __init__(self, kernel: int, weight: float):
        super().__init__()
        self.kernel = kernel
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel) * (self.kernel * self.kernel * self.weight)


class SpikingLayer(torch.nn.Module):
    """synapse (time-distributed) -> LIF. ``kind`` is 'dense', 'conv' or 'pool': how the layer
    is deployed (a key of :data:`sast_deploy.deploy.layers.LAYER_KINDS`)."""

    def __init__(self, kind: str, synapse: torch.nn.Module, lif: LIF):
        super().__init__()
        self.kind = kind
        self.synapse = synapse
        self.lif = lif

    def currents(self, spikes: torch.Tensor) -> torch.Tensor:
        """Synaptic currents for all time steps at once ([T, B, ...] -> [T, B, ...])."""
        t, b = spikes.shape[:2]
        if isinstance(self.synapse, torch.nn.Linear):  # takes feature vectors: (C, H, W) maps are flattened
            return self.synapse(spikes.reshape(t, b, -1))
        out = self.synapse(spikes.reshape(t * b, *spikes.shape[2:]))
        return out.reshape(t, b, *out.shape[1:])

    def forward(self, spikes: torch.Tensor, mode: str = "hard", record_states: bool = False):
        return self.lif(self.currents(spikes), mode=mode, record_states=record_states)


Synapses = List[Tuple[str, torch.nn.Module]]  # (kind, synapse) per layer, input to readout


def dense_synapses(width: int, c: ModelConfig, n_classes: int) -> Synapses:
    """The hidden dense layers of ``c.hidden`` and the readout, after ``width`` inputs."""
    widths = [width, *c.hidden, n_classes]
    return [("dense", torch.nn.Linear(w_in, w_out, bias=False)) for w_in, w_out in zip(widths, widths[1:])]


def mlp_synapses(c: ModelConfig, input_shape: Tuple[int, ...], n_classes: int) -> Synapses:
    return dense_synapses(int(np.prod(input_shape)), c, n_classes)


def conv_synapses(c: ModelConfig, input_shape: Tuple[int, ...], n_classes: int) -> Synapses:
    """conv -> optional sum-pool -> the dense layers (their width found by a probe)."""
    p, hgt, wid = input_shape
    layers: Synapses = [("conv", torch.nn.Conv2d(p, c.conv_channels, c.conv_kernel, stride=c.conv_stride, bias=False))]
    if c.pool > 0:
        layers.append(("pool", SumPool2d(c.pool, c.pool_weight)))
    with torch.no_grad():
        probe = torch.zeros(1, p, hgt, wid)
        for _, synapse in layers:
            probe = synapse(probe)
    return layers + dense_synapses(int(np.prod(probe.shape)), c, n_classes)


class SpikingNet(torch.nn.Module):
    """A feed-forward stack of spiking layers; the last one is the spiking readout."""

    def __init__(self, config: ModelConfig, input_shape: Sequence[int], n_classes: int):
        super().__init__()
        self.config = c = config
        self.input_shape = tuple(int(s) for s in input_shape)
        self.n_classes = n_classes
        synapses = (mlp_synapses if c.arch == "mlp" else conv_synapses)(c, self.input_shape, n_classes)
        scales = c.v_th_scale or (1.0,) * len(synapses)
        if len(scales) != len(synapses):
            raise ValueError(f"model.v_th_scale has {len(c.v_th_scale)} entries, the network {len(synapses)} layers")
        self.layers = torch.nn.ModuleList(SpikingLayer(kind, synapse, LIF(c.beta, c.v_th * scale, c.alpha, c.surrogate))
                                          for (kind, synapse), scale in zip(synapses, scales))
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
    """The network of ``config``; one whose shapes do not fit or whose weights would not fit in
    memory is refused before anything is allocated (:mod:`sast_deploy.training.footprint`)."""
    check_parameters(config, input_shape, n_classes)
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
