"""Stage 5, quantization: a trained network in Loihi 2 fixed point, and its bit-exact emulator.

Each LIF layer maps onto Lava's ``PyLifModelBitAcc`` fed by a Dense (``PyDenseModelBitAcc``)
or Conv (``PyConvModelFixed``) process, as lava-dl netx builds them:

* weights: signed ``weight_bits`` mantissas (8 by default), ``w_int = round(w * scale)``;
* threshold: ``vth_mant = round(v_th * scale)`` (compared as v > vth << 6), same scale, so
  the layer computes the float layer's function scaled by ``scale``;
* current decay: ``iDecay = 4096`` (netx du = 4095): no synaptic current, as in training;
* voltage decay: ``vDecay = round(4096 (1 - beta))``.

The scale of a layer is the largest that keeps every weight inside the mantissa range and
the threshold inside 17 bits. The sum-pool layer is a depthwise convolution with one weight
(netx 0.6.0 has no pool layer). :class:`FixedPointNet` runs exactly this arithmetic on
integer tensors, batched over samples; Lava's simulator cross-checks it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SastDeployError
from .functional.lif import LOIHI_STATE_BITS, decay_to_fixed_point, lif_step_fixed_point
from .model import SpikingNet, non_finite_parameters
from .validation import file_data, validated



class QuantizationError(SastDeployError, ValueError):
    """The network cannot be represented on the target; the message names the layer and field."""


@file_data
@dataclass(frozen=True)
class Loihi2Spec:
    """A Loihi 2 export target (``export/loihi2.toml``)."""

    name: str = "loihi2"
    weight_bits: int = 8  # signed weight mantissa bits
    vth_bits: int = 17  # unsigned threshold mantissa bits
    state_bits: int = 24  # signed u and v
    i_decay: int = 4096  # netx iDecay: 4096 = no synaptic current

    def __post_init__(self):
        if not 2 <= self.weight_bits <= 8:
            raise QuantizationError(f"weight_bits must be in 2..8, got {self.weight_bits}")
        if not 1 <= self.vth_bits <= 24 or not 2 <= self.state_bits <= 32:
            raise QuantizationError(f"vth_bits must be in 1..24 and state_bits in 2..32, got {self.vth_bits}, {self.state_bits}")
        if not 0 <= self.i_decay <= 4096:
            raise QuantizationError(f"i_decay must be in 0..4096, got {self.i_decay}")

    @classmethod
    def from_toml(cls, path: str | Path) -> "Loihi2Spec":
        from .config import read_toml

        return validated(cls, read_toml(path, "target spec"), str(path), QuantizationError)

    @property
    def weight_max(self) -> int:
        return (1 << (self.weight_bits - 1)) - 1

    @property
    def vth_max(self) -> int:
        return (1 << self.vth_bits) - 1


@dataclass
class QuantizedLayer:
    """One layer in fixed point. Weights: dense [out, in]; conv/pool [out, in/groups, kH, kW]."""

    kind: str
    weight: np.ndarray  # int64 mantissas
    vth_mant: int
    v_decay: int
    i_decay: int
    scale: float  # mantissa units per float weight unit
    in_shape: Tuple[int, ...]  # (C, H, W) or (N,)
    out_shape: Tuple[int, ...]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    groups: int = 1
    n_clipped: int = 0
    mean_abs_error: float = 0.0  # mean |w - w_int / scale| in float weight units


@dataclass
class QuantizedNet:
    layers: List[QuantizedLayer]
    input_shape: Tuple[int, int, int]
    n_classes: int
    spec: Loihi2Spec = field(default_factory=Loihi2Spec)

    def report(self) -> List[Dict[str, object]]:
        """Per layer: scale, clipped weights, mean |quantization error|, out-of-range warnings."""
        rows = []
        for i, q in enumerate(self.layers):
            fan_in = int(np.abs(q.weight).reshape(q.weight.shape[0], -1).sum(1).max())
            worst_u = fan_in << 6  # every input spiking at once, all weights at their magnitude
            warnings = []
            if q.vth_mant > self.spec.vth_max:
                warnings.append(f"vth_mant {q.vth_mant} exceeds {self.spec.vth_bits} bits")
            if worst_u >= 1 << (self.spec.state_bits - 1):
                warnings.append(f"worst-case input {worst_u} can exceed the {self.spec.state_bits}-bit state (wraps)")
            rows.append({
                "layer": i, "kind": q.kind, "shape": list(q.weight.shape), "scale": q.scale,
                "vth_mant": q.vth_mant, "v_decay": q.v_decay, "i_decay": q.i_decay,
                "weight_min": int(q.weight.min()), "weight_max": int(q.weight.max()),
                "clipped_weights": q.n_clipped, "mean_abs_quant_error": q.mean_abs_error,
                "worst_case_input": worst_u, "warnings": warnings,
            })
        return rows


def _quantize_weights(w: np.ndarray, v_th: float, spec: Loihi2Spec, layer: str) -> Tuple[np.ndarray, int, float, int, float]:
    max_abs = float(np.abs(w).max())
    if max_abs == 0.0:
        raise QuantizationError(f"{layer}: all weights are zero (nothing to deploy; netx cannot load it either)")
    scale = spec.weight_max / max_abs
    scale = min(scale, spec.vth_max / v_th)  # the threshold must fit its mantissa
    w_int = np.rint(w * scale).astype(np.int64)
    n_clipped = int(np.sum((w_int > spec.weight_max) | (w_int < -spec.weight_max - 1)))
    w_int = np.clip(w_int, -spec.weight_max - 1, spec.weight_max)
    vth_mant = int(round(v_th * scale))
    if vth_mant < 1:
        raise QuantizationError(f"{layer}: threshold rounds to 0 at scale {scale:.3g}")
    err = float(np.mean(np.abs(w - w_int / scale)))
    return w_int, vth_mant, scale, n_clipped, err


def quantize(model: SpikingNet, spec: Loihi2Spec = Loihi2Spec()) -> QuantizedNet:
    """Map every layer of a trained network to Loihi 2 fixed point."""
    bad = non_finite_parameters(model)
    if bad:
        raise QuantizationError(f"non-finite weights in {', '.join(bad)}: a diverged network cannot be exported")
    layers: List[QuantizedLayer] = []
    shape: Tuple[int, ...] = model.input_shape
    for i, layer in enumerate(model.layers):
        lif = layer.lif
        dv = decay_to_fixed_point(lif.beta)
        name = f"layer {i} ({layer.kind})"
        if layer.kind == "dense":
            w = layer.synapse.weight.detach().double().numpy()
            w_int, vth, scale, clipped, err = _quantize_weights(w, lif.v_th, spec, name)
            in_shape = (int(np.prod(shape)),)
            out_shape: Tuple[int, ...] = (w.shape[0],)
            layers.append(QuantizedLayer("dense", w_int, vth, dv, spec.i_decay, scale, in_shape, out_shape, n_clipped=clipped, mean_abs_error=err))
        elif layer.kind == "conv":
            conv = layer.synapse
            w = conv.weight.detach().double().numpy()
            w_int, vth, scale, clipped, err = _quantize_weights(w, lif.v_th, spec, name)
            out_shape = _conv_out(shape, w.shape[0], w.shape[2:], conv.stride, conv.padding)
            layers.append(QuantizedLayer("conv", w_int, vth, dv, spec.i_decay, scale, tuple(shape), out_shape,
                                         stride=tuple(conv.stride), padding=tuple(conv.padding), groups=conv.groups,
                                         n_clipped=clipped, mean_abs_error=err))
        elif layer.kind == "pool":
            k, channels = layer.synapse.kernel, shape[0]
            w = np.full((channels, 1, k, k), float(layer.synapse.weight))
            w_int, vth, scale, clipped, err = _quantize_weights(w, lif.v_th, spec, name)
            out_shape = _conv_out(shape, channels, (k, k), (k, k), (0, 0))
            layers.append(QuantizedLayer("pool", w_int, vth, dv, spec.i_decay, scale, tuple(shape), out_shape,
                                         stride=(k, k), groups=channels, n_clipped=clipped, mean_abs_error=err))
        else:
            raise QuantizationError(f"{name}: no Loihi 2 mapping for layer kind {layer.kind!r}")
        shape = out_shape
    return QuantizedNet(layers, model.input_shape, model.n_classes, spec)


def _conv_out(shape, channels, kernel, stride, padding) -> Tuple[int, int, int]:
    _, h, w = shape
    return (
        int(channels),
        (h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
        (w + 2 * padding[1] - kernel[1]) // stride[1] + 1,
    )


# --- netx's weight pipeline --------------------------------------------------------------


def netx_dense_weights(w: np.ndarray) -> Tuple[np.ndarray, int]:
    """The weights a netx Dense process actually holds, and its weight exponent.

    netx (lava/lib/dl/netx/utils.py ``optimize_weight_bits``) rescales the integer weights to
    use 8 bits, and PyDenseModelBitAcc then clips and truncates them by the sign mode it
    re-derives (lava/utils/weightutils.py); its output is (W_stored @ s) shifted by
    weight_exp (a floor on the sum). For mixed-sign matrices this is lossless; it is not for
    some all-inhibitory ones, which is why the emulator applies exactly this pipeline.
    """
    w = np.asarray(w).astype(np.int64)
    mx, mn = w.max(), w.min()
    if mx > 254 and mn < 0:
        w = np.clip(w, -256, 254)
        mx = w.max()
    if mn < -256 and mx > 0:
        w = np.clip(w, -256, 254)
        mn = w.min()
    if mx < 0:
        signed, scale = 0, -256 / mn
    elif mn >= 0:
        if mx == 0:
            raise QuantizationError("all weights are zero: netx cannot load this layer")
        signed, scale = 0, 255 / mx
    else:
        signed = 1
        scale = min(127 / mx if mx > 0 else np.inf, -128 / mn)
    scale_bits = int(np.floor(np.log2(scale)) + signed)
    n = 8
    while n > 0 and np.sum(np.abs(w / 2**n - np.round(w / 2**n))) != 0:
        n -= 1
    n -= signed
    num_weight_bits, weight_exp = 8 - scale_bits - n, -scale_bits
    ws = (np.left_shift(w, scale_bits) if scale_bits >= 0 else np.zeros_like(w)).astype(np.int64)
    mode = "exc" if ws.min() >= 0 else ("inh" if ws.max() <= 0 else "mix")
    if mode == "inh":
        ws = -np.clip(-ws, 0, 255)
    elif mode == "exc":
        ws = np.clip(ws, 0, 255)
    else:
        ws = np.clip(ws, -256, 255)
    drop = 8 - num_weight_bits + (mode == "mix")
    ws = -((-ws >> drop) << drop) if mode == "inh" else (ws >> drop) << drop
    return ws, weight_exp


# --- the emulator --------------------------------------------------------------------------


def _wrap(x: torch.Tensor, bits: int) -> torch.Tensor:
    half = 1 << (bits - 1)
    return torch.remainder(x + half, 2 * half) - half


def exact_float_dtype(worst_sum: int, layer: str = "layer") -> torch.dtype:
    """The narrowest float type in which every sum of integers whose magnitudes add up to at
    most ``worst_sum`` is exact, in any order: float32 represents every integer up to 2^24
    exactly, float64 every integer up to 2^53, so no partial sum is ever rounded."""
    if worst_sum <= 1 << 24:
        return torch.float32
    if worst_sum <= 1 << 53:
        return torch.float64
    raise QuantizationError(f"{layer}: sums up to {worst_sum} exceed float64's exact integers")


class _DenseSynapse:
    """A Dense synapse as netx and ``PyDenseModelBitAcc`` run it: W_stored @ s, shifted by
    weight_exp (a floor). Event-driven: each (sample, step) row adds the weight columns of
    its spiking inputs only (``embedding_bag``'s sum over the spiking input indices), so the
    work is proportional to the input spikes, not to the inputs.

    Exact: the stored weights are integers and every partial sum is an integer of magnitude
    at most n_in * max|w|, held in :func:`exact_float_dtype` (float32 for the 2312-128 layer:
    2312 * 256 < 2^24)."""

    def __init__(self, q: QuantizedLayer, name: str):
        ws, self.weight_exp = netx_dense_weights(q.weight)
        dtype = exact_float_dtype(ws.shape[1] * int(np.abs(ws).max()), name)
        self.columns = torch.from_numpy(np.ascontiguousarray(ws.T)).to(dtype)  # [n_in, n_out]: row j = column j of W

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        """s [M, ...] integer spikes -> int64 synaptic input [M, n_out]."""
        s = s.reshape(s.shape[0], -1)
        if s.numel() and (int(s.max()) > 1 or int(s.min()) < 0):  # graded input: a plain product
            a = (s.to(torch.float64) @ self.columns.to(torch.float64)).to(torch.int64)  # exact below 2^53
        else:
            rows, cols = s.nonzero(as_tuple=True)  # row-major, so each row's spikes are contiguous
            offsets = torch.searchsorted(rows, torch.arange(s.shape[0]))
            a = F.embedding_bag(cols, self.columns, offsets, mode="sum").to(torch.int64)
        return a << self.weight_exp if self.weight_exp > 0 else a >> -self.weight_exp


class _ConvSynapse:
    """Conv or sum-pool as ``PyConvModelFixed``: raw integer weights, no truncation, output
    wrapped to 24 bits. Exact in :func:`exact_float_dtype` of fan_in * max|w| (torch's float
    conv sums integers only)."""

    def __init__(self, q: QuantizedLayer, name: str):
        self.q = q
        fan_in = int(np.prod(q.weight.shape[1:]))
        self.weight = torch.from_numpy(q.weight).to(exact_float_dtype(fan_in * int(np.abs(q.weight).max()), name))

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        a = F.conv2d(s.to(self.weight.dtype), self.weight, stride=self.q.stride, padding=self.q.padding, groups=self.q.groups)
        return _wrap(a.to(torch.int64), LOIHI_STATE_BITS)


class FixedPointNet:
    """Bit-exact PyTorch emulation of the exported network as Lava runs it.

    Spike counts are those of the Lava graph over each sample's window: the one-step delay
    each Lava layer adds shifts spikes in time but does not change any layer's input
    sequence, so the emulator runs the layers without delays, and each layer's synaptic
    input for all T steps of a batch at once (only the LIF update is sequential in time).
    Synaptic inputs are integer sums computed exactly in floating point (see
    :class:`_DenseSynapse` and :class:`_ConvSynapse`); the LIF update is int64.
    """

    def __init__(self, qnet: QuantizedNet):
        self.qnet = qnet
        self._synapses = [(_DenseSynapse if q.kind == "dense" else _ConvSynapse)(q, f"layer {i} ({q.kind})")
                          for i, q in enumerate(qnet.layers)]

    @torch.no_grad()
    def run(self, frames: torch.Tensor, record: bool = False):
        """Output spike counts [B, classes] for binary frames [B, T, P, H, W]; with ``record``
        also every layer's spikes [B, T, ...] (uint8)."""
        spikes = frames  # [B, T, ...]: samples stay first, so no layer's input is transposed
        recorded = []
        for q, synapse in zip(self.qnet.layers, self._synapses):
            b, n_t = spikes.shape[:2]
            a_all = synapse(spikes.reshape(b * n_t, *spikes.shape[2:]))  # all steps at once
            a_all = a_all.reshape(b, n_t, *a_all.shape[1:])
            v = torch.zeros_like(a_all[:, 0])
            out = []
            for t in range(n_t):
                s, v = lif_step_fixed_point(a_all[:, t], v, q.v_decay, q.vth_mant)
                out.append(s.to(torch.uint8))
            spikes = torch.stack(out, dim=1)
            if record:
                recorded.append(spikes)
        counts = spikes.sum(1, dtype=torch.int64).reshape(spikes.shape[0], -1)
        return (counts, recorded) if record else counts


def fan_out(q: QuantizedLayer) -> torch.Tensor:
    """Synapses leaving each input neuron of a layer (its input shape): n_out for dense; for
    conv, the output positions and channels each input pixel reaches (borders reach fewer)."""
    if q.kind == "dense":
        return torch.full(q.in_shape, float(q.weight.shape[0]), dtype=torch.float64)
    x = torch.ones((1, *q.in_shape), dtype=torch.float64, requires_grad=True)
    F.conv2d(x, torch.ones(q.weight.shape, dtype=torch.float64), stride=q.stride, padding=q.padding, groups=q.groups).sum().backward()
    return x.grad[0]


@dataclass
class Emulation:
    counts: torch.Tensor  # [N, classes] output spike counts
    input_spikes: List[float]  # per layer: spikes entering it, summed over samples
    synops: List[float]  # per layer: sum over its input spikes of their fan-out, summed over samples
    spikes: List[float]  # per layer: spikes it emits, summed over samples
    neurons: List[int]
    n_samples: int
    n_steps: int

    @classmethod
    def merge(cls, parts: Sequence["Emulation"]) -> "Emulation":
        """One Emulation from consecutive slices of a dataset (sharded runs)."""
        parts = [p for p in parts if p.n_samples > 0] or list(parts[:1])
        add = lambda key: [sum(vals) for vals in zip(*(getattr(p, key) for p in parts))]  # noqa: E731
        return cls(torch.cat([p.counts for p in parts]), add("input_spikes"), add("synops"), add("spikes"),
                   parts[0].neurons, sum(p.n_samples for p in parts), max(p.n_steps for p in parts))

    @property
    def synops_per_sample(self) -> float:
        return sum(self.synops) / max(self.n_samples, 1)

    def activity(self) -> Dict[str, object]:
        """SynOps per sample (total and per layer) and spikes per neuron per time step."""
        n = max(self.n_samples, 1)
        return {
            "synops_per_sample": self.synops_per_sample,
            "synops_per_sample_per_layer": [s / n for s in self.synops],
            "spikes_per_neuron_per_step": [s / (n * self.n_steps * k) for s, k in zip(self.spikes, self.neurons)],
        }


def _spikes_per_input(s: torch.Tensor) -> torch.Tensor:
    """Spikes per input neuron of s [A, B, ...] summed over A and B, float64 [...]. numpy's
    reduction over the rows of a contiguous [A * B, inputs] array is several times faster
    than torch's over the leading dims of a uint8 tensor (12 ms against 96 ms for N-MNIST's
    200 x 30 x 2312 inputs)."""
    flat = s.reshape(s.shape[0] * s.shape[1], -1).numpy()
    acc = np.float64 if flat.dtype.kind == "f" else np.int64
    return torch.from_numpy(np.add.reduce(flat, axis=0, dtype=acc).astype(np.float64)).reshape(s.shape[2:])


def emulate(qnet: QuantizedNet, frames: torch.Tensor, batch_size: int = 256, progress: bool = False) -> Emulation:
    """Run the emulator over frames [N, T, P, H, W]: output counts plus the activity that
    SynOps (synaptic operations: each spike entering a layer times its fan-out) counts."""
    from tqdm import tqdm

    emu = FixedPointNet(qnet)
    fan = [fan_out(q) for q in qnet.layers]
    L = len(qnet.layers)
    counts, inputs, synops, spikes = [], [0.0] * L, [0.0] * L, [0.0] * L
    for start in tqdm(range(0, len(frames), batch_size), desc="emulator", disable=not progress, unit="batch"):
        x = frames[start : start + batch_size]
        c, layer_spikes = emu.run(x, record=True)
        counts.append(c)
        entering = [x] + layer_spikes[:-1]  # each [B, T, ...]
        for i in range(L):
            per_input = _spikes_per_input(entering[i]).reshape(fan[i].shape)
            inputs[i] += float(per_input.sum())
            synops[i] += float((per_input * fan[i]).sum())
            spikes[i] += float(layer_spikes[i].sum(dtype=torch.int64))
    neurons = [int(np.prod(q.out_shape)) for q in qnet.layers]
    all_counts = torch.cat(counts) if counts else torch.zeros(0, qnet.n_classes, dtype=torch.int64)
    return Emulation(all_counts, inputs, synops, spikes, neurons, len(frames), int(frames.shape[1]) if len(frames) else 0)


def emulate_counts(qnet: QuantizedNet, frames: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Emulator output spike counts [N, classes] for uint8/float frames [N, T, P, H, W]
    (:func:`emulate` without the activity statistics)."""
    from tqdm import tqdm

    emu = FixedPointNet(qnet)
    counts = [emu.run(frames[start : start + batch_size])
              for start in tqdm(range(0, len(frames), batch_size), desc="emulator", disable=not progress, unit="batch")]
    return torch.cat(counts) if counts else torch.zeros(0, qnet.n_classes, dtype=torch.int64)
