"""A convolution as Loihi runs it: event by event. Each input neuron's spike adds its kernel
weights to the output neurons it reaches (its fan-out), so a step costs the synaptic events
of the spikes that arrived, not a convolution of the whole frame.

:class:`ScatterTable` holds, for every input neuron, the (output neuron, weight) pairs of its
fan-out, built once from the kernel (:func:`correlation_synapses`). Both the event-driven
Lava Conv model (:mod:`sast_deploy.deploy.lava.models`) uses it; :func:`lava_conv_table`
lays the neurons out as Lava does.

Why the sums are exact: every output is a sum of integer terms w * s (integer weights,
integer payloads: 1 for a binary spike). They are summed in float64 (``np.bincount``'s
weighted sum), which represents every integer of magnitude <= 2^53 exactly, so no partial
sum is ever rounded, in any order, while fan_in * max|w| * max|s| <= 2^53
(:data:`FLOAT64_EXACT_INTEGERS`, checked per call). Written here because neither numpy,
scipy.sparse nor torch has a sparse-times-sparse product that returns a dense integer
result without a float conversion of its own or a dense pass over all inputs.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

FLOAT64_EXACT_INTEGERS = 1 << 53

# Rows per chunk are chosen so that a chunk scatters at most this many synaptic events: the
# gather arrays (an int64 target and a float64 weight per event) then stay near 100 MB.
MAX_EVENTS_PER_CHUNK = 1 << 22

Coords = Tuple[np.ndarray, np.ndarray, np.ndarray]  # (x, y, channel), each [synapses]


def correlation_synapses(in_xyc: Tuple[int, int, int], out_xyc: Tuple[int, int, int], kernel: np.ndarray,
                         stride: Tuple[int, int], padding: Tuple[int, int], dilation: Tuple[int, int],
                         groups: int) -> Tuple[Coords, Coords, np.ndarray]:
    """Every synapse of the correlation

        out[ox, oy, co] = sum_{i, j, ci} in[ox*sx + i*dx - px, oy*sy + j*dy - py, g*Cg + ci] * kernel[co, i, j, ci]

    (g = co's group, Cg = input channels per group; inputs outside the frame are the zero
    padding) with a non-zero weight: (source (x, y, c), destination (x, y, c), weight).
    ``kernel`` [C_out, kernel x, kernel y, C_in / groups]; shapes, stride, padding and
    dilation in (x, y) order."""
    w_in, h_in, c_in = (int(v) for v in in_xyc)
    w_out, h_out, c_out = (int(v) for v in out_xyc)
    k_out, k_x, k_y, c_group = kernel.shape
    if k_out != c_out or c_in != c_group * groups or c_out % groups:
        raise ValueError(f"kernel {kernel.shape} does not fit {c_in} -> {c_out} channels in {groups} groups")
    ox, oy, i, j = (a.reshape(-1) for a in np.meshgrid(np.arange(w_out), np.arange(h_out), np.arange(k_x),
                                                          np.arange(k_y), indexing="ij"))
    x = ox * stride[0] + i * dilation[0] - padding[0]
    y = oy * stride[1] + j * dilation[1] - padding[1]
    inside = (x >= 0) & (x < w_in) & (y >= 0) & (y < h_in)
    ox, oy, i, j, x, y = (a[inside][:, None, None] for a in (ox, oy, i, j, x, y))  # [positions, 1, 1]
    co = np.arange(c_out)[None, :, None]  # [1, C_out, 1]
    ci = np.arange(c_group)[None, None, :]  # [1, 1, Cg]
    weight = kernel[co, i, j, ci]  # [positions, C_out, Cg]
    shape = weight.shape
    keep = (weight != 0).reshape(-1)
    full = lambda a: np.broadcast_to(a, shape).reshape(-1)[keep]  # noqa: E731
    src = (full(x), full(y), full((co // (c_out // groups)) * c_group + ci))
    dst = (full(ox), full(oy), full(co))
    return src, dst, weight.reshape(-1)[keep].astype(np.int64)


class ScatterTable:
    """The linear map from n_in input neurons to n_out output neurons as, per input, the
    list of (output, weight) pairs it adds to when it spikes.

    ``source``, ``target`` [synapses] flat neuron indices, ``weight`` [synapses] integers.
    Calling it on spikes [M, n_in] (M independent rows: copies of a network, or samples
    times steps) returns the int64 sums [M, n_out] (see the module doc for why exact)."""

    def __init__(self, source: np.ndarray, target: np.ndarray, weight: np.ndarray, n_in: int, n_out: int):
        order = np.argsort(source, kind="stable")
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.targets = np.ascontiguousarray(target[order], dtype=np.intp)
        weight = np.asarray(weight, dtype=np.int64)[order]
        self.weights = weight.astype(np.float64)
        fan_out = np.bincount(source, minlength=self.n_in)
        self.indptr = np.concatenate([[0], np.cumsum(fan_out)]).astype(np.intp)
        # the largest sum of |w| into one output: its fan-in times max|w|, at most
        self.max_abs_sum = int(np.bincount(target, weights=np.abs(weight).astype(np.float64),
                                           minlength=self.n_out).max(initial=0))

    @property
    def synapses(self) -> int:
        return int(self.targets.size)

    def __call__(self, spikes: np.ndarray, graded: bool = False) -> np.ndarray:
        """``spikes`` [M, n_in]: binary (any non-zero is a spike) or, with ``graded``, integer
        payloads that multiply the weights. Returns int64 [M, n_out]."""
        spikes = np.ascontiguousarray(spikes).reshape(-1, self.n_in)
        m = spikes.shape[0]
        flat = np.flatnonzero(spikes)  # sorted: row after row
        payload: Optional[np.ndarray] = None
        if graded and flat.size:
            payload = spikes.reshape(-1)[flat].astype(np.float64)
            if self.max_abs_sum * float(np.abs(payload).max()) > FLOAT64_EXACT_INTEGERS:
                raise OverflowError("graded conv input: sums could exceed float64's exact integers")
        elif self.max_abs_sum > FLOAT64_EXACT_INTEGERS:
            raise OverflowError("conv sums could exceed float64's exact integers")
        row = flat // self.n_in
        col = flat - row * self.n_in
        lengths = self.indptr[col + 1] - self.indptr[col]
        out = np.zeros(m * self.n_out, dtype=np.float64)
        for lo, hi in _event_chunks(lengths):
            sums = self._scatter(row[lo:hi], col[lo:hi], lengths[lo:hi], None if payload is None else payload[lo:hi])
            if sums is not None:
                first, values = sums
                out[first * self.n_out: first * self.n_out + values.size] += values
        return out.astype(np.int64).reshape(m, self.n_out)  # exact integers (module doc)

    def _scatter(self, row, col, lengths, payload):
        """The sums of one chunk of events (row-sorted): (first row, flat sums of its rows)."""
        total = int(lengths.sum())
        if total == 0:
            return None
        ends = np.cumsum(lengths)
        # the table positions of each event's synapses: indptr[col] + 0 ... lengths - 1
        pos = np.arange(total, dtype=np.intp) + np.repeat(self.indptr[col] - (ends - lengths), lengths)
        first = int(row[0])
        targets = self.targets[pos] + np.repeat((row - first) * self.n_out, lengths)
        weights = self.weights[pos] if payload is None else self.weights[pos] * np.repeat(payload, lengths)
        return first, np.bincount(targets, weights=weights, minlength=(int(row[-1]) - first + 1) * self.n_out)


def _event_chunks(lengths: np.ndarray):
    """(lo, hi) slices of the events holding at most about :data:`MAX_EVENTS_PER_CHUNK`
    synaptic events each (one event may exceed it alone)."""
    n = lengths.size
    if n == 0:
        return
    ends = np.cumsum(lengths)
    lo = 0
    while lo < n:
        base = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, base + MAX_EVENTS_PER_CHUNK, side="right"))
        hi = max(hi, lo + 1)
        yield lo, hi
        lo = hi


def lava_conv_table(weight: np.ndarray, in_xyc: Tuple[int, int, int], out_xyc: Tuple[int, int, int],
                    stride, padding, dilation, groups: int) -> ScatterTable:
    """The scatter table of lava's ``Conv`` process as ``PyConvModelFixed`` computes it: a
    true convolution (scipy's ``convolve2d``, so the kernel flipped in x and y) of the (W, H, C)
    frame with ``weight`` [C_out, kernel x, kernel y, C_in / groups] as netx stores it, neurons
    flattened in Lava's (x, y, c) order."""
    weight = np.asarray(weight)
    w_in, h_in, c_in = (int(v) for v in in_xyc)
    w_out, h_out, c_out = (int(v) for v in out_xyc)
    src, dst, w = correlation_synapses(in_xyc, out_xyc, weight[:, ::-1, ::-1, :], _pair(stride), _pair(padding),
                                       _pair(dilation), int(groups))
    return ScatterTable((src[0] * h_in + src[1]) * c_in + src[2], (dst[0] * h_out + dst[1]) * c_out + dst[2], w,
                        w_in * h_in * c_in, w_out * h_out * c_out)


def _pair(v) -> Tuple[int, int]:
    v = np.asarray(v).reshape(-1)
    return (int(v[0]), int(v[0])) if v.size == 1 else (int(v[0]), int(v[1]))
