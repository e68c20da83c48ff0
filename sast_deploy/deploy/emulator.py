"""The bit-exact emulator: the quantized network (:mod:`sast_deploy.deploy.quantize`) run in PyTorch
with the integer arithmetic of Lava's fixed-point models, batched over samples, plus the
activity SynOps counts. Lava's simulator (:mod:`sast_deploy.deploy.simulate`) cross-checks it.

Why it is exact: every synaptic input is an integer sum of integer weights. It is computed
in floating point only where every partial sum is an integer that the float type represents
exactly (:func:`exact_float_dtype`), so no sum is ever rounded, in any order of summation;
it is then converted to int64, shifted by netx's weight exponent (a floor, as Lava's
``np.right_shift``) or wrapped to 24 bits (conv), and the LIF update is int64
(:func:`sast_deploy.functional.lif.lif_step_fixed_point`, Lava's ``PyLifModelBitAcc``).
Dense layers hold exactly the weights Lava's Dense model holds (:mod:`sast_deploy.deploy.netx_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data.frames import Frames, as_frames
from ..functional.lif import LOIHI_STATE_BITS, exact_float, lif_step_fixed_point
from .layers import layer_kind
from .netx_weights import netx_dense_weights
from .quantize import QuantizationError, QuantizedLayer, QuantizedNet


def _wrap(x: torch.Tensor, bits: int) -> torch.Tensor:
    half = 1 << (bits - 1)
    return torch.remainder(x + half, 2 * half) - half


def exact_float_dtype(worst_sum: int, layer: str = "layer") -> torch.dtype:
    """:func:`sast_deploy.functional.lif.exact_float` as a torch dtype (float32 up to 2^24,
    float64 up to 2^53); beyond, a QuantizationError naming ``layer``."""
    name = exact_float(worst_sum)
    if name is None:
        raise QuantizationError(f"{layer}: sums up to {worst_sum} exceed float64's exact integers")
    return getattr(torch, name)


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
            inputs, offsets = _spiking_inputs(s)
            a = F.embedding_bag(inputs, self.columns, offsets, mode="sum").to(torch.int64)
        return a << self.weight_exp if self.weight_exp > 0 else a >> -self.weight_exp


def _spiking_inputs(s: torch.Tensor):
    """For binary spikes s [M, n_in]: (the indices of the spiking inputs, row after row;
    offsets [M], where each row's indices start), the bags ``embedding_bag`` sums. One scan
    of the bytes: numpy's flatnonzero over a one-byte boolean view of the (0/1) spikes, which
    is several times faster than torch's nonzero (README, "Simulation speed"); the row starts
    come from a binary search of the sorted flat indices, not from per-spike row indices."""
    m, n_in = s.shape
    if s.dtype not in (torch.uint8, torch.int8, torch.bool):
        s = s != 0
    flat = np.flatnonzero(np.ascontiguousarray(s.numpy()).view(np.bool_))  # sorted, so row-major
    offsets = np.searchsorted(flat, np.arange(m, dtype=np.int64) * n_in)
    return torch.from_numpy(flat % n_in), torch.from_numpy(offsets)


class _ConvSynapse:
    """Conv or sum-pool as ``PyConvModelFixed``: raw integer weights, no truncation, output
    wrapped to 24 bits.

    Exact by the Dense synapse's integer bound: every output sums at most
    fan_in = C_in / groups * kH * kW integer terms w * s, so every partial sum is an integer
    of magnitude at most fan_in * max|w| * max|s|, held exactly in :func:`exact_float_dtype`
    of that bound (float32 up to 2^24). The same bound makes the 24-bit wrap the identity
    when it is below 2^23, and then it is skipped (it was a third of the layer's time).

    A sum-pool (a depthwise conv whose kernel tiles the frame: kernel = stride, no padding)
    is torch's sum-pool (``avg_pool2d`` without the division) times each channel's weight,
    instead of torch's depthwise conv2d, its slowest case (README, "Simulation speed").
    Other convs take torch's float conv2d, which at DVS densities (5 %) beat an event-driven
    scatter of the spiking inputs' kernels there (measured, README)."""

    def __init__(self, q: QuantizedLayer, name: str):
        self.q = q
        fan_in = int(np.prod(q.weight.shape[1:]))
        self.worst = fan_in * int(np.abs(q.weight).max(initial=0))  # for binary spikes
        self.weight = torch.from_numpy(q.weight).to(exact_float_dtype(self.worst, name))
        c_out, c_group, kh, kw = q.weight.shape
        self.tiles = (q.groups == c_out == q.in_shape[0] and c_group == 1 and tuple(q.stride) == (kh, kw)
                      and tuple(q.padding) == (0, 0))

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        """s [M, C, H, W] integer spikes -> int64 synaptic input [M, C_out, H_out, W_out]."""
        worst, weight = self.worst, self.weight
        if s.numel() and (int(s.max()) > 1 or int(s.min()) < 0):  # graded input: the bound grows by max|s|
            worst *= int(s.abs().max())
            weight = weight.to(exact_float_dtype(worst, "graded conv input"))
        x = s.to(weight.dtype)
        if self.tiles:
            a = self._tiled_sum(x, weight)
        else:
            a = F.conv2d(x, weight, stride=self.q.stride, padding=self.q.padding, groups=self.q.groups)
        a = a.to(torch.int64)
        return a if worst < 1 << (LOIHI_STATE_BITS - 1) else _wrap(a, LOIHI_STATE_BITS)

    def _tiled_sum(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Depthwise conv with kernel = stride, no padding: each kH x kW window once."""
        c, _, kh, kw = weight.shape
        if bool((weight == weight.reshape(c, -1)[:, :1, None, None]).all()):  # one weight per channel
            sums = F.avg_pool2d(x, (kh, kw), stride=(kh, kw), divisor_override=1)  # window sums (integers)
            return sums * weight[:, 0, 0, 0].reshape(1, c, 1, 1)
        _, h_out, w_out = self.q.out_shape
        windows = x[:, :, : h_out * kh, : w_out * kw].reshape(x.shape[0], c, h_out, kh, w_out, kw)
        return torch.einsum("mchjwi,cji->mchw", windows, weight[:, 0])


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
        self._synapses = [layer_kind(q.kind, f"layer {i}").synapse(q, f"layer {i} ({q.kind})")
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
    return layer_kind(q.kind).fan_out(q)


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
    than torch's over the leading dims of a uint8 tensor (README, "Simulation speed")."""
    flat = s.reshape(s.shape[0] * s.shape[1], -1).numpy()
    acc = np.float64 if flat.dtype.kind == "f" else np.int64
    return torch.from_numpy(np.add.reduce(flat, axis=0, dtype=acc).astype(np.float64)).reshape(s.shape[2:])


Network = Union[QuantizedNet, "FixedPointNet"]


def _fixed_point_net(net: Network) -> "FixedPointNet":
    return net if isinstance(net, FixedPointNet) else FixedPointNet(net)


def _batches(frames: torch.Tensor, batch_size: int, progress: bool):
    from tqdm import tqdm

    for start in tqdm(range(0, len(frames), batch_size), desc="emulator", disable=not progress, unit="batch"):
        yield frames[start : start + batch_size]


def emulate(net: Network, frames: Frames, batch_size: int = 256, progress: bool = False) -> Emulation:
    """Run the emulator over frames [N, T, P, H, W] (:func:`sast_deploy.data.frames.as_frames`):
    output counts plus the activity that SynOps (synaptic operations: each spike entering a
    layer times its fan-out) counts. ``net``: a QuantizedNet, or a FixedPointNet built from
    one (its weights prepared once)."""
    emu = _fixed_point_net(net)
    frames = as_frames(frames, emu.qnet.input_shape)
    qnet = emu.qnet
    fan = [fan_out(q) for q in qnet.layers]
    n_layers = len(qnet.layers)
    counts, inputs, synops, spikes = [], [0.0] * n_layers, [0.0] * n_layers, [0.0] * n_layers
    for x in _batches(frames, batch_size, progress):
        c, layer_spikes = emu.run(x, record=True)
        counts.append(c)
        entering = [x] + layer_spikes[:-1]  # each [B, T, ...]
        for i in range(n_layers):
            per_input = _spikes_per_input(entering[i]).reshape(fan[i].shape)
            inputs[i] += float(per_input.sum())
            synops[i] += float((per_input * fan[i]).sum())
            spikes[i] += float(layer_spikes[i].sum(dtype=torch.int64))
    neurons = [int(np.prod(q.out_shape)) for q in qnet.layers]
    all_counts = torch.cat(counts) if counts else torch.zeros(0, qnet.n_classes, dtype=torch.int64)
    return Emulation(all_counts, inputs, synops, spikes, neurons, len(frames), int(frames.shape[1]) if len(frames) else 0)


def emulate_counts(net: Network, frames: Frames, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Emulator output spike counts [N, classes] for frames [N, T, P, H, W]
    (:func:`emulate` without the activity statistics). ``net`` as for :func:`emulate`."""
    emu = _fixed_point_net(net)
    frames = as_frames(frames, emu.qnet.input_shape)
    counts = [emu.run(x) for x in _batches(frames, batch_size, progress)]
    return torch.cat(counts) if counts else torch.zeros(0, emu.qnet.n_classes, dtype=torch.int64)


def emulate_dataset(net: Network, data, chunk: int = 2048, progress: bool = False) -> Emulation:
    """:func:`emulate` over a :class:`~sast_deploy.data.frames.FrameDataset`, unpacking
    ``chunk`` samples at a time (a full split's frames, unpacked at once, take 8x its packed
    size)."""
    emu = _fixed_point_net(net)
    parts = [emulate(emu, data.frames_at(range(lo, min(lo + chunk, len(data)))), progress=progress)
             for lo in range(0, len(data), chunk)]
    return Emulation.merge(parts) if parts else emulate(emu, data.frames_at([]))
