"""The bit-exact emulator: the quantized network (:mod:`sast_deploy.deploy.quantize`) run with
the integer arithmetic of Lava's fixed-point models, batched over samples, plus the activity
SynOps counts. Lava's simulator (:mod:`sast_deploy.deploy.simulate`) cross-checks it.

Why it is exact: every synaptic input is an integer sum of integer weights times integer
payloads. Dense layers sum in floating point only where every partial sum is an integer that
the float type represents exactly (:func:`exact_float_dtype`), so no sum is ever rounded, in
any order of summation, then convert to int64 and shift by netx's weight exponent (a floor,
as Lava's ``np.right_shift``); they hold exactly the weights Lava's Dense model holds
(:mod:`sast_deploy.deploy.netx_weights`). Conv and sum-pool layers sum in int32 or int64,
whichever their worst sum fits (:class:`_ConvSynapse`), then wrap to 24 bits as
``PyConvModelFixed``. The LIF update is int64, Lava's ``PyLifModelBitAcc``
(:func:`sast_deploy.functional.lif.lif_run_fixed_point`, the time loop of
:func:`~sast_deploy.functional.lif.lif_step_fixed_point`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Union

import numba
import numpy as np
import torch
import torch.nn.functional as F

from ..data.frames import Frames, as_frames
from ..functional.lif import LOIHI_STATE_BITS, exact_float, lif_run_fixed_point
from .layers import layer_kind
from .netx_weights import netx_dense_weights
from .quantize import QuantizationError, QuantizedLayer, QuantizedNet


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
        """s [M, ...] integer spikes (bool: binary by type) -> int64 synaptic input [M, n_out]."""
        s = s.reshape(s.shape[0], -1)
        if s.dtype != torch.bool and s.numel() and (int(s.max()) > 1 or int(s.min()) < 0):  # graded: a plain product
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
    """Conv or sum-pool as ``PyConvModelFixed`` computes it (raw integer weights, no
    truncation, output wrapped to 24 bits), event-driven as Loihi runs it: each spiking input
    adds its weights, times its payload, to the outputs it reaches, so the work is the
    synaptic events, not a convolution of the whole frame (which float32 ``conv2d`` did, plus
    two dtype conversions of the whole batch: README, "Simulation speed").

    The table (:func:`_conv_fan_out`) holds, per input neuron, the output positions it reaches
    and, for each, the index of the weight vector over the L = C_out / groups output channels
    of its group; the kernel (:func:`_scatter_conv_rows`) adds these vectors into a per-row
    accumulator laid out (group, y, x, channel in group), so that each add is one contiguous
    vector, and writes the row out in torch's (channel, y, x) order.

    Exact, in integers: every output sums at most fan_in terms w * s, so its magnitude is at
    most ``worst`` = max over outputs of sum |w| (the table's bound) times max |s|. The
    accumulator is int32 when that is below 2^31 and int64 below 2^63 (else a
    QuantizationError), so no sum overflows; the 24-bit wrap is applied only when ``worst``
    reaches 2^23 (below, it is the identity)."""

    def __init__(self, q: QuantizedLayer, name: str):
        self.q, self.name = q, name
        self.indptr, self.bases, self.vectors, weights = _conv_fan_out(q)
        self.per_group = weights.shape[1]
        self.weights = {np.dtype(t): weights.reshape(-1).astype(t) for t in (np.int32, np.int64)}
        # the worst sum for binary spikes, in Python integers (no int64 overflow however large the weights);
        # the int32 weights are used only when it is below 2^31, so they hold every weight exactly
        magnitudes = np.abs(q.weight.astype(object)).reshape(q.weight.shape[0], -1)
        self.worst = int(max(magnitudes.sum(1), default=0))

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        """s [M, C, H, W] integer spikes or payloads (bool: binary by type, as the LIF layers
        pass their spikes) -> synaptic input [M, C_out, H_out, W_out], int32, or int64 where
        the sums need it."""
        x = _integer_rows(s)
        max_payload = 1 if s.dtype == torch.bool else max(int(x.max(initial=0)), -int(x.min(initial=0)))  # no abs: int8's -128
        worst = self.worst * max_payload
        if worst >= 1 << 63:
            raise QuantizationError(f"{self.name}: sums up to {worst} exceed int64")
        acc = np.dtype(np.int32 if worst < 1 << 31 else np.int64)
        out = np.empty((x.shape[0], int(np.prod(self.q.out_shape))), acc)
        weights, n_pos, wrap = self.weights[acc], self.q.out_shape[1] * self.q.out_shape[2], worst >= 1 << (LOIHI_STATE_BITS - 1)
        _split_rows(x.shape[0], lambda lo, hi: _scatter_conv_rows(x[lo:hi], self.indptr, self.bases, self.vectors, weights,
                                                                  self.per_group, n_pos, wrap, out[lo:hi]))
        return torch.from_numpy(out).reshape(x.shape[0], *self.q.out_shape)


def _integer_rows(s: torch.Tensor) -> np.ndarray:
    """Spikes s [M, ...] as a contiguous integer numpy array [M, inputs] (bool as uint8,
    floats holding integers as uint8 or int64, whichever holds them)."""
    if s.dtype == torch.bool:
        s = s.view(torch.uint8)
    elif s.is_floating_point():
        if s.numel() and not bool((s == s.trunc()).all()):
            raise ValueError("emulator input must be integer spike counts")
        small = not s.numel() or (float(s.min()) >= 0 and float(s.max()) <= 255)
        s = s.to(torch.uint8 if small else torch.int64)
    return np.ascontiguousarray(s.reshape(s.shape[0], -1).numpy())


def _conv_fan_out(q: QuantizedLayer):
    """The event-driven form of torch's conv2d (a correlation) with q's weight [C_out, C_in /
    groups, kH, kW], stride and zero padding. The accumulator is laid out (group, y, x,
    channel within the group): [groups, positions, L], L = C_out / groups, so that one input
    spike adds a contiguous vector of L weights at each output position it reaches (for a
    depthwise sum-pool, L = 1 and the layout is torch's own). Per input neuron i (flat
    (c, y, x)), the entries indptr[i]:indptr[i + 1] hold the accumulator index of that vector
    (bases) and the row of ``weights`` [C_in * kH * kW, L] to add there (vectors); all-zero
    vectors are left out."""
    c_in, h_in, w_in = q.in_shape
    c_out, h_out, w_out = q.out_shape
    _, c_group, kh, kw = q.weight.shape
    per_group = c_out // q.groups
    ci, ky, kx, oy, ox = (a.reshape(-1) for a in np.meshgrid(np.arange(c_in), np.arange(kh), np.arange(kw),
                                                             np.arange(h_out), np.arange(w_out), indexing="ij"))
    y, x = oy * q.stride[0] + ky - q.padding[0], ox * q.stride[1] + kx - q.padding[1]
    # weights[(ci * kH + ky) * kW + kx] = weight[the channels of ci's group, ci within its group, ky, kx]
    rows = np.arange(c_in * kh * kw)
    channel, ky_row, kx_row = rows // (kh * kw), rows // kw % kh, rows % kw
    out_channels = (channel // c_group)[:, None] * per_group + np.arange(per_group)[None, :]
    weights = q.weight[out_channels, (channel % c_group)[:, None], ky_row[:, None], kx_row[:, None]]
    vectors = (ci * kh + ky) * kw + kx
    keep = (y >= 0) & (y < h_in) & (x >= 0) & (x < w_in) & np.any(weights != 0, axis=1)[vectors]
    source = ((ci * h_in + y) * w_in + x)[keep]
    bases = (((ci // c_group) * h_out + oy) * w_out + ox)[keep] * per_group
    order = np.argsort(source, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(source, minlength=c_in * h_in * w_in))])
    return indptr.astype(np.int64), bases[order].astype(np.int64), vectors[keep][order].astype(np.int64), weights


@numba.njit(cache=True, nogil=True)
def _scatter_conv_rows(spikes, indptr, bases, vectors, weights, per_group, n_pos, wrap, out):
    """out[m] = the conv of row m of spikes [M, n_in] (:func:`_conv_fan_out`) in torch's
    (channel, y, x) order, wrapped to 24 bits when ``wrap``. ``weights`` (flat [rows, L],
    L = ``per_group``) and ``out`` [M, n_out] share the accumulator dtype; ``n_pos`` = H_out * W_out."""
    n_rows, n_in = spikes.shape
    n_out = out.shape[1]
    n_groups = n_out // (per_group * n_pos)
    half = 1 << (LOIHI_STATE_BITS - 1)
    acc = np.zeros(n_out, out.dtype)
    spiking = np.empty(n_in, np.int64)
    for m in range(n_rows):
        row = spikes[m]
        n_spiking = 0
        for i in range(n_in):  # branch-free compaction of the spiking inputs
            spiking[n_spiking] = i
            n_spiking += row[i] != 0
        acc[:] = 0
        for j in range(n_spiking):
            i = spiking[j]
            payload = row[i]
            for k in range(indptr[i], indptr[i + 1]):
                # slices, not indices: they let the compiler add the L lanes as one vector
                target = acc[bases[k]: bases[k] + per_group]
                vector = weights[vectors[k] * per_group: (vectors[k] + 1) * per_group]
                for c in range(per_group):
                    target[c] += vector[c] * payload
        if wrap:
            for n in range(n_out):
                acc[n] = ((np.int64(acc[n]) + half) & (2 * half - 1)) - half  # two's complement: the remainder
        out_m = out[m]
        if per_group == 1:
            out_m[:] = acc
        else:  # [groups, positions, L] -> [groups, L, positions]
            for g in range(n_groups):
                for c in range(per_group):
                    dst = out_m[(g * per_group + c) * n_pos: (g * per_group + c + 1) * n_pos]
                    src = acc[g * n_pos * per_group + c: (g + 1) * n_pos * per_group: per_group]
                    for p in range(n_pos):
                        dst[p] = src[p]


_POOL: Dict[int, ThreadPoolExecutor] = {}  # by thread count; dropped in forked children (their threads are not)
os.register_at_fork(after_in_child=_POOL.clear)


def _split_rows(n_rows: int, work: Callable[[int, int], object]) -> None:
    """work(lo, hi) over [0, n_rows) in torch.get_num_threads() contiguous slices at once:
    the compiled kernels release the GIL, so Python threads run them in parallel (numba's own
    parallel loops would need a threading layer that is not safe in the processes Lava forks)."""
    threads = max(1, min(torch.get_num_threads(), n_rows))
    if threads == 1:
        work(0, n_rows)
        return
    pool = _POOL.setdefault(threads, ThreadPoolExecutor(threads, thread_name_prefix="emulator"))
    bounds = np.linspace(0, n_rows, threads + 1).astype(int)
    for job in [pool.submit(work, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]:
        job.result()


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
            spikes = _lif_spikes(a_all.reshape(b, n_t, *a_all.shape[1:]), q)  # bool: the next synapse skips its graded check
            if record:
                recorded.append(spikes.view(torch.uint8))
        counts = spikes.sum(1, dtype=torch.int64).reshape(spikes.shape[0], -1)
        return (counts, recorded) if record else counts


def _lif_spikes(a: torch.Tensor, q: QuantizedLayer) -> torch.Tensor:
    """Layer q's LIF over its synaptic input a [B, T, ...] -> spikes [B, T, ...] as bool (the
    0/1 bytes the kernel writes), the samples split across threads."""
    spikes = torch.empty(a.shape, dtype=torch.uint8)
    _split_rows(a.shape[0], lambda lo, hi: lif_run_fixed_point(a[lo:hi], q.v_decay, q.vth_mant, out=spikes[lo:hi]))
    return spikes.view(torch.bool)


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
        # spikes per neuron of the input and of each layer: layer i's input is layer i - 1's output
        per_neuron = [_spikes_per_input(s) for s in [x] + layer_spikes]  # each [B, T, ...] summed over B and T
        for i in range(n_layers):
            per_input = per_neuron[i].reshape(fan[i].shape)
            inputs[i] += float(per_input.sum())
            synops[i] += float((per_input * fan[i]).sum())
            spikes[i] += float(per_neuron[i + 1].sum())  # integers below 2^53: exact
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
